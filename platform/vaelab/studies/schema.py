"""YAML schema of search spaces and studies: the pydantic models and their constants.

A search space and a study are versioned data, not code: plain YAML, parsed
with `yaml.safe_load`, no expressions. Structure (unknown keys, types) is checked by
the pydantic models here with `extra="forbid"`; `vaelab schema` (studies/reference.py)
generates docs/study-schema.md and docs/study.schema.json from them. What pydantic
cannot know (which trial params exist, their ranges, which axis kinds a search mode can
expand, what a report table may refer to) is checked against `vaelab.config.TrialConfig`
by check_space.py, check_study.py and check_report.py, so that every mistake surfaces
before a single trial starts, as a `SpecError` naming file, key path and value.
Imports pydantic, vaelab.config, report.spec and yaml_source.

Precedence of values in a trial, lowest first:
TrialConfig defaults < search-space `fixed` < axes (scalar axes and bundled variants)
< study `overrides` (an override of a scalar axis pins it: the axis disappears)
< study `checkpoint_every` < budget < `seeds`.
A budget shrinks schedules but never switches one on or off: its `warmup_epochs` /
`warmup_fraction` apply only to trials whose warm-up is on (warmup_epochs > 0 before
the budget), its `kl_anneal_*` only to trials whose KL annealing is on.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Mapping, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from vaelab.config import TrialConfig
from vaelab.report.spec import ReportSpec
from vaelab.studies.yaml_source import Source

# ---------------------------------------------------------------------------------
# Names

PARAM_FIELDS = TrialConfig.model_fields
# `seed` is not a param a spec may set: trials are crossed with the study's `seeds:`.
SPEC_PARAMS = frozenset(PARAM_FIELDS) - {"seed"}
AXIS_KINDS = ("grid", "choice", "uniform", "loguniform", "randint")
SAMPLED_KINDS = ("choice", "uniform", "loguniform", "randint")
LABEL_KEY = "label"
VARIANT_AXIS = "variant"  # the bundled axis whose labels are the trials' variant
BUDGET_SPECIAL = ("num_samples", "warmup_fraction", "seeds")


# ---------------------------------------------------------------------------------
# Pydantic models (structure only)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AxisSpec(_Strict):
    """One axis of a search space: exactly one of the five kinds.

    A grid whose items are mappings is a bundled variant axis: each item sets several
    trial params at once and may carry a `label` (e.g. VAE+BN+WU).
    `randint: [lo, hi]` excludes hi, as `ray.tune.randint` does.
    """

    grid: Optional[list[Any]] = None
    choice: Optional[list[Any]] = None
    uniform: Optional[list[Union[int, float]]] = None
    loguniform: Optional[list[Union[int, float]]] = None
    randint: Optional[list[int]] = None

    @model_validator(mode="after")
    def _exactly_one_kind(self) -> "AxisSpec":
        kinds = [k for k in AXIS_KINDS if getattr(self, k) is not None]
        if len(kinds) != 1:
            got = ", ".join(kinds) if kinds else "none"
            raise ValueError(f"an axis needs exactly one of {', '.join(AXIS_KINDS)} (got {got})")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in AXIS_KINDS if getattr(self, k) is not None)

    @property
    def values(self) -> list[Any]:
        return list(getattr(self, self.kind))

    @property
    def is_bundle(self) -> bool:
        return self.kind == "grid" and any(isinstance(v, dict) for v in self.values)

    @property
    def is_sampled(self) -> bool:
        return self.kind in SAMPLED_KINDS

    def to_dict(self) -> dict[str, list[Any]]:
        return {self.kind: plain_values(self.values)}


class SearchSpaceSpec(_Strict):
    """`fixed` values, `axes`, and `exclude` partial matches (param -> value; `label`
    or a bundled axis name matches variant labels)."""

    name: str = ""
    description: str = ""
    fixed: dict[str, Any] = Field(default_factory=dict)
    axes: dict[str, AxisSpec] = Field(default_factory=dict)
    exclude: list[dict[str, Any]] = Field(default_factory=list)

    def bundle_axes(self) -> list[str]:
        return [name for name, axis in self.axes.items() if axis.is_bundle]

    def labels(self, axis: str) -> list[str]:
        """Labels of a bundled axis's items, auto-made where an item has none."""
        return [bundle_label(item) for item in self.axes[axis].values]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "fixed": plain_values(self.fixed),
            "axes": {name: axis.to_dict() for name, axis in self.axes.items()},
            "exclude": plain_values(self.exclude),
        }


class SchedulerSpec(_Strict):
    """ASHA early stopping (ray.tune.schedulers.ASHAScheduler; time_attr = epoch,
    max_t = the trial's epochs)."""

    type: Literal["asha"] = "asha"
    grace_period: int = Field(1, ge=1)  # epochs before a trial can be stopped
    reduction_factor: float = Field(4.0, gt=1.0)


class SearchSpec(_Strict):
    """How the space is searched. `direction` is what Ray calls `mode` (max|min)."""

    mode: Literal["grid", "random", "optuna"] = "grid"
    metric: Optional[str] = None
    direction: Optional[Literal["max", "min"]] = None
    num_samples: Optional[int] = Field(None, ge=1)  # random/optuna points (a budget may override)
    max_concurrent: Optional[int] = Field(None, ge=1)
    seed: int = Field(0, ge=0)  # seeds the random sampler / optuna's TPE, not the trials
    scheduler: Optional[SchedulerSpec] = None


class ResourcesSpec(_Strict):
    """Per Tune trial. Fractional GPUs are logical in Ray: gpu 0.25 packs four trials on
    a GPU but does not cap their memory."""

    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _whole_gpus_above_one(self) -> "ResourcesSpec":
        if self.gpu > 1 and self.gpu != int(self.gpu):
            raise ValueError(f"gpu={self.gpu}: Ray takes a fraction below 1 or a whole number of GPUs")
        return self


class CohortSpec(_Strict):
    """Trials sharing an architecture trained together in one set of kernels; members
    may differ only in config.COHORT_VARYING keys."""

    size: int = Field(1, ge=1)


class FailureSpec(_Strict):
    max_failures: int = Field(2, ge=-1)  # Ray: -1 retries forever


Seed = Annotated[int, Field(ge=0)]
STUDY_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"


class StudySpec(_Strict):
    """A study file as written: `search_space` is a path (relative to the study file)
    or an inline search-space mapping."""

    name: str = Field(pattern=STUDY_NAME_PATTERN)  # = MLflow experiment name, report folder
    description: str = ""
    search_space: Any
    overrides: dict[str, Any] = Field(default_factory=dict)
    # budget name -> trial-param overrides (+ num_samples, warmup_fraction, seeds); a tiny
    # study may leave it out: one budget `default` that changes nothing
    budgets: dict[str, dict[str, Any]] = Field(default_factory=lambda: {"default": {}}, min_length=1)
    default_budget: Optional[str] = None
    seeds: list[Seed] = Field(default_factory=lambda: [0], min_length=1)
    search: SearchSpec = Field(default_factory=SearchSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    cohort: Optional[CohortSpec] = None
    failure: FailureSpec = Field(default_factory=FailureSpec)
    checkpoint_every: Optional[int] = Field(None, ge=1)
    report: ReportSpec = Field(default_factory=ReportSpec)


class Study(StudySpec):
    """A loaded, checked study: search space resolved, values normalised, one budget
    selected (`study.budget`). Built by `vaelab.studies.load_study`."""

    search_space: SearchSpaceSpec  # type: ignore[assignment]
    default_budget: str  # type: ignore[assignment]
    _budget: str = PrivateAttr("")
    _source: Source = PrivateAttr(default_factory=lambda: Source("<study>"))
    _space_source: Source = PrivateAttr(default_factory=lambda: Source("<study>", "search_space."))

    @property
    def budget(self) -> str:
        """The budget this study was loaded for (default_budget unless asked)."""
        return self._budget or self.default_budget

    @property
    def source(self) -> Source:
        return self._source

    @property
    def space_source(self) -> Source:
        return self._space_source

    @property
    def cohort_size(self) -> int:
        return self.cohort.size if self.cohort else 1

    def budget_params(self, budget: Optional[str] = None) -> dict[str, Any]:
        """The budget's trial-param overrides (without num_samples/warmup_fraction/seeds)."""
        values = self.budgets[budget or self.budget]
        return {k: v for k, v in values.items() if k not in BUDGET_SPECIAL}

    def seeds_for(self, budget: Optional[str] = None) -> list[int]:
        return list(self.budgets[budget or self.budget].get("seeds", self.seeds))

    def num_samples_for(self, budget: Optional[str] = None) -> Optional[int]:
        return self.budgets[budget or self.budget].get("num_samples", self.search.num_samples)

    def warmup_fraction_for(self, budget: Optional[str] = None) -> Optional[float]:
        return self.budgets[budget or self.budget].get("warmup_fraction")

    def active_axes(self) -> dict[str, AxisSpec]:
        """Axes left after study overrides pinned some params (a bundled axis pinned to
        one label stays, with that item only: see expand._candidates)."""
        return {n: a for n, a in self.search_space.axes.items() if n not in self.overrides or a.is_bundle}

    def with_budget(self, budget: str) -> "Study":
        """The same study with another budget selected."""
        other = self.model_copy()
        other._budget = budget
        other._source = self._source
        other._space_source = self._space_source
        return other


def bundle_label(item: Mapping[str, Any]) -> str:
    """An item's label, or one made from what it sets: '{inference=vae,batch_norm=true}'."""
    label = item.get(LABEL_KEY)
    if isinstance(label, str) and label:
        return label
    inner = ",".join(f"{k}={format_scalar(v)}" for k, v in item.items() if k != LABEL_KEY)
    return "{" + inner + "}"


def format_scalar(value: Any) -> str:
    """A value as it appears in trial keys and labels: 0.001, true, 64-32-16."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "-".join(format_scalar(v) for v in value)
    if value is None:
        return "none"
    return str(value)


def plain_values(value: Any) -> Any:
    """Tuples to lists (recursively), so dumps are plain YAML/JSON."""
    if isinstance(value, dict):
        return {k: plain_values(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_values(v) for v in value]
    return value


def bundle_params(axis: AxisSpec) -> set[str]:
    """The params the items of a bundled axis set (`label` aside)."""
    return {k for item in axis.values if isinstance(item, dict) for k in item if k != LABEL_KEY}
