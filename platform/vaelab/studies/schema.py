"""YAML schema of search spaces and studies, and every check that needs no expansion.

A search space and a study are versioned data (STYLE principle 7): plain YAML, parsed
with `yaml.safe_load`, no expressions. Structure (unknown keys, types) is checked by
pydantic models with `extra="forbid"`; what pydantic cannot know (which trial params
exist, their ranges, which axis kinds a search mode can expand, what a report table
may refer to) is checked here against `vaelab.config.TrialConfig`, so that every
mistake surfaces before a single trial starts, as a `SpecError` naming file, key path
and value.

Checks that need the expanded trials (impossible combinations, empty grid, report
filters that match nothing) live in `expand.py`, which calls `check_report` below.

Precedence of values in a trial, lowest first:
TrialConfig defaults < search-space `fixed` < axes (scalar axes and bundled variants)
< study `overrides` (an override of a scalar axis pins it: the axis disappears)
< study `checkpoint_every` < budget < `seeds`.
A budget shrinks schedules but never switches one on or off: its `warmup_epochs` /
`warmup_fraction` apply only to trials whose warm-up is on (warmup_epochs > 0 before
the budget), its `kl_anneal_*` only to trials whose KL annealing is on.
"""

from __future__ import annotations

import csv
import difflib
import functools
import importlib.resources
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Iterable, Literal, Mapping, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from vaelab.config import MAX_DEPTH, TrialConfig
from vaelab.errors import MISSING, SpecError
from vaelab.report.spec import ReportSpec, TableSpec

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
WARMUP_KEYS = frozenset({"warmup_epochs"})
ANNEAL_KEYS = frozenset({"kl_anneal_hold_steps", "kl_anneal_steps"})

# Metric names of ARCHITECTURE.md (per-epoch, evaluation epochs, last epoch only).
EPOCH_METRICS = frozenset({"epoch", "beta", "lr", "train_loss", "steps_per_s", "wall_time_s"})
EVAL_METRICS = frozenset({"train_elbo", "test_elbo", "kl_total", "active_units", "peak_mem_mb"})
FINAL_METRICS = frozenset({"test_ll_iw"})
LAYER_FAMILIES = ("kl_layer", "active_units_layer", "kl_std_normal_layer")
TABLE_PSEUDO_DIMS = frozenset({"variant", "layer"})


# ---------------------------------------------------------------------------------
# Where an error points: file, key-path prefix and YAML line numbers


@dataclass(frozen=True)
class Source:
    """A YAML file (or the inline part of one) that values come from.

    `prefix` is prepended to key paths, e.g. "search_space." for a search space
    written inline in a study, so messages point at the right spot of the right file.
    """

    file: str
    prefix: str = ""
    lines: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)

    def path(self, key_path: str) -> str:
        if not key_path:
            return self.prefix.rstrip(".") or ""
        return f"{self.prefix}{key_path}"

    def error(self, key_path: str, value: Any, message: str) -> SpecError:
        full = self.path(key_path)
        return SpecError(self.file, full, value, message, self.line(full))

    def line(self, full_path: str) -> Optional[int]:
        """Line of the key, or of its nearest enclosing key that has one."""
        path = full_path
        while path:
            if path in self.lines:
                return self.lines[path]
            path = re.sub(r"(\[\d+\]|\.[^.\[\]]+|^[^.\[\]]+)$", "", path)
        return None


def key_join(path: str, key: Union[str, int]) -> str:
    """'axes.depth' + 'grid' -> 'axes.depth.grid'; + 2 -> 'axes.depth.grid[2]'."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def display_path(path: Path) -> str:
    """A path as the user would type it: relative to the working directory if inside."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


# ---------------------------------------------------------------------------------
# Reading YAML


def read_yaml(path: Path, shown: Optional[str] = None) -> tuple[Any, Source]:
    """Parse one YAML file with safe loading; syntax errors carry their line."""
    shown = shown or display_path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(shown, "(file)", str(path), "file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError(shown, "(file)", str(path), f"cannot read: {err}") from None
    return parse_yaml(text, shown)


def parse_yaml(text: str, shown: str) -> tuple[Any, Source]:
    """`yaml.safe_load`, plus a composed node tree for line numbers and duplicate keys."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as err:
        raise _yaml_syntax_error(err, text, shown) from None
    except yaml.YAMLError as err:
        raise SpecError(shown, "(file)", None, f"YAML error: {err}") from None
    lines: dict[str, int] = {}
    duplicates: list[SpecError] = []
    if node is not None:
        _walk_nodes(node, "", lines, duplicates, shown, depth=0)
    if duplicates:
        raise duplicates[0]
    return data, Source(shown, "", lines)


def _yaml_syntax_error(err: yaml.MarkedYAMLError, text: str, shown: str) -> SpecError:
    mark = err.problem_mark or err.context_mark
    if mark is None:
        return SpecError(shown, "(file)", None, f"YAML syntax error: {err}")
    line = mark.line + 1
    source_lines = text.splitlines()
    snippet = source_lines[mark.line].strip() if mark.line < len(source_lines) else ""
    problem = err.problem or err.context or "invalid YAML"
    message = f"YAML syntax error at line {line}, column {mark.column + 1}: {problem}"
    return SpecError(shown, f"line {line}", snippet, message, line)


def _walk_nodes(
    node: yaml.Node, path: str, lines: dict[str, int], dups: list[SpecError], shown: str, depth: int
) -> None:
    """Record the line of every key path; report a key written twice in one mapping
    (safe_load would silently keep the last one)."""
    if depth > 50:  # aliases can build cycles; specs are never this deep
        return
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue
            key_path = key_join(path, key_node.value)
            line = key_node.start_mark.line + 1
            if key_node.value in seen:
                dups.append(SpecError(shown, key_path, key_node.value, "key appears twice in one mapping", line))
            seen.add(key_node.value)
            lines.setdefault(key_path, line)
            _walk_nodes(value_node, key_path, lines, dups, shown, depth + 1)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            item_path = key_join(path, index)
            lines.setdefault(item_path, item.start_mark.line + 1)
            _walk_nodes(item, item_path, lines, dups, shown, depth + 1)


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


# ---------------------------------------------------------------------------------
# Pydantic errors -> SpecErrors


def structure_errors(err: ValidationError, src: Source, model: type[BaseModel]) -> list[SpecError]:
    """Translate pydantic's errors into SpecErrors with dotted key paths."""
    found: list[SpecError] = []
    for item in err.errors():
        loc = tuple(seg for seg in item["loc"] if seg != "[key]")
        path = ""
        for seg in loc:
            path = key_join(path, seg)
        found.append(src.error(path, *_describe(item, loc, model)))
    return found


def _describe(item: Mapping[str, Any], loc: tuple[Any, ...], model: type[BaseModel]) -> tuple[Any, str]:
    kind = item["type"]
    if kind == "extra_forbidden":
        key = str(loc[-1]) if loc else "?"
        allowed = _allowed_keys(model, loc[:-1])
        noun = "axis kind" if allowed == list(AXIS_KINDS) else "key"
        return item.get("input"), f"unknown {noun} {key!r}{_suggest(key, allowed)}; allowed: {', '.join(allowed)}"
    if kind == "missing":
        return MISSING, "required key is missing"
    if kind == "string_pattern_mismatch" and loc == ("name",):
        return item.get("input"), "a study name is an MLflow experiment and a folder name: letters, digits, _ . -"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        if isinstance(item.get("input"), list) and len(loc) >= 2 and loc[-2] == "axes":
            values = ", ".join(format_scalar(v) for v in item["input"])
            return item.get("input"), (f"an axis names its kind: write {{grid: [{values}]}} "
                                       f"(kinds: {', '.join(AXIS_KINDS)})")
        return item.get("input"), "expected a mapping (key: value lines)"
    bound = _BOUND_WORDS.get(kind)
    if bound and loc:
        limit = next(iter(item.get("ctx", {}).values()), "?")
        limit = f"{limit:g}" if isinstance(limit, float) else limit
        return item.get("input"), f"{loc[-1]} must be {bound} {limit}"
    message = str(item["msg"]).removeprefix("Value error, ")
    return item.get("input"), message


_BOUND_WORDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the model found at `loc` below `model` (for 'allowed: ...')."""
    tp: Any = model
    for seg in loc:
        tp = _child_type(tp, seg)
        if tp is None:
            return []
    tp = _strip_optional(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return list(tp.model_fields)
    return []


def _child_type(tp: Any, seg: Any) -> Any:
    tp = _strip_optional(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        info = tp.model_fields.get(str(seg))
        return info.annotation if info else None
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (list, tuple) and args:
        return args[0]
    if origin is dict and len(args) == 2:
        return args[1]
    return None


def _strip_optional(tp: Any) -> Any:
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            rest = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(rest) != 1:
                return tp
            tp = rest[0]
        else:
            return tp


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


# ---------------------------------------------------------------------------------
# One trial param alone


def _no_model_validators() -> type[TrialConfig]:
    """TrialConfig with its cross-field checks switched off, to check one field alone.

    Overriding a decorated validator with a plain method removes it in pydantic v2;
    combinations are checked later, on each whole expanded trial.
    """
    names = TrialConfig.__pydantic_decorators__.model_validators
    namespace = {name: (lambda self, *a, **k: self) for name in names}
    return types.new_class("_TrialFields", (TrialConfig,), {}, lambda ns: ns.update(namespace))


_TrialFields = _no_model_validators()


def check_param(name: str, value: Any) -> tuple[Any, Optional[str]]:
    """Validate one trial param by itself: (normalised value, error message or None).

    Normalised means what TrialConfig stores: '64-32' -> (64, 32), '1e-3' -> 0.001.
    """
    if name == "seed":
        return value, "seeds are set by the study's `seeds:` list (or a budget's), not as a param"
    if name not in PARAM_FIELDS:
        return value, f"unknown trial parameter {name!r}{_suggest(name, SPEC_PARAMS)}"
    if isinstance(value, bool) and _is_numeric(name):
        return value, f"{name} takes a number, not a boolean"
    if isinstance(value, dict):
        return value, f"{name} takes a single value, not a mapping"
    try:
        checked = _TrialFields.model_validate({name: value})
    except ValidationError as err:
        mine = [e for e in err.errors() if e["loc"][:1] == (name,)] or err.errors()
        message = field_message(name, mine[0])
        if isinstance(value, list) and not _is_sequence_field(name):
            message += " (to sweep values, write an axis: {grid: [...]})"
        return value, message
    return getattr(checked, name), None


def field_message(name: str, error: Mapping[str, Any]) -> str:
    """A pydantic field error as the user thinks of it: 'depth must be in 1..5'."""
    kind = error["type"]
    if kind in ("less_than_equal", "greater_than_equal", "less_than", "greater_than"):
        return range_text(name)
    if kind == "literal_error":
        expected = error.get("ctx", {}).get("expected", "")
        return f"{name} must be one of {expected}"
    return f"{name}: {str(error['msg']).removeprefix('Value error, ')}"


def range_text(name: str) -> str:
    """'depth must be in 1..5', 'rho must be in [0, 1]', 'lr must be > 0'."""
    bounds: dict[str, Any] = {}
    for meta in PARAM_FIELDS[name].metadata:
        for attr in ("ge", "gt", "le", "lt"):
            if getattr(meta, attr, None) is not None:
                bounds[attr] = getattr(meta, attr)
    if "ge" in bounds and "le" in bounds:
        lo, hi = bounds["ge"], bounds["le"]
        if _base_type(name) is int:
            return f"{name} must be in {lo}..{hi}"
        return f"{name} must be in [{lo:g}, {hi:g}]"
    symbols = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    parts = [f"{symbols[k]} {v:g}" if isinstance(v, float) else f"{symbols[k]} {v}" for k, v in bounds.items()]
    return f"{name} must be " + " and ".join(parts)


def _base_type(name: str) -> Any:
    return _strip_optional(PARAM_FIELDS[name].annotation)


def _is_numeric(name: str) -> bool:
    return _base_type(name) in (int, float)


def _is_sequence_field(name: str) -> bool:
    return typing.get_origin(_base_type(name)) in (tuple, list)


def param_default(name: str) -> Any:
    """TrialConfig's default, normalised as check_param would."""
    return PARAM_FIELDS[name].get_default(call_default_factory=True)


# ---------------------------------------------------------------------------------
# Search-space checks


def check_search_space(space: SearchSpaceSpec, src: Source) -> tuple[SearchSpaceSpec, list[SpecError]]:
    """Check params, values and axes against TrialConfig; return the space with every
    value normalised (so expansion and hashing see one spelling of each value)."""
    errors: list[SpecError] = []
    fixed = _check_params(space.fixed, "fixed", src, errors)
    axes = {name: _check_axis(name, axis, src, errors) for name, axis in space.axes.items()}
    checked = space.model_copy(update={"fixed": fixed, "axes": axes})
    _check_owners(checked, src, errors)
    exclude = [_check_exclude(i, entry, checked, src, errors) for i, entry in enumerate(space.exclude)]
    return checked.model_copy(update={"exclude": exclude}), errors


def _check_params(
    values: Mapping[str, Any], path: str, src: Source, errors: list[SpecError]
) -> dict[str, Any]:
    normalised: dict[str, Any] = {}
    for name, value in values.items():
        clean, message = check_param(str(name), value)
        if message:
            errors.append(src.error(key_join(path, str(name)), value, message))
        normalised[str(name)] = clean
    return normalised


def _check_axis(name: str, axis: AxisSpec, src: Source, errors: list[SpecError]) -> AxisSpec:
    path = key_join(key_join("axes", name), axis.kind)
    if axis.is_bundle:
        if name in PARAM_FIELDS:
            errors.append(src.error(key_join("axes", name), name, "a bundled axis (mapping items) needs a name that is not a trial param, e.g. variant"))
        return axis.model_copy(update={"grid": _check_bundle(path, axis.values, src, errors)})
    if name not in PARAM_FIELDS or name == "seed":
        _, message = check_param(name, None)
        hint = "; a scalar axis is named after the param it sweeps (a bundled axis has mapping items)"
        errors.append(src.error(key_join("axes", name), name, f"{message}{hint}"))
        return axis
    if axis.kind in ("grid", "choice"):
        return axis.model_copy(update={axis.kind: _check_listed(name, path, axis.values, src, errors)})
    _check_bounds(name, axis, path, src, errors)
    return axis


def _check_listed(name: str, path: str, values: list[Any], src: Source, errors: list[SpecError]) -> list[Any]:
    if not values:
        errors.append(src.error(path, values, "an axis needs at least one value"))
    normalised: list[Any] = []
    for index, value in enumerate(values):
        if isinstance(value, dict):
            errors.append(src.error(key_join(path, index), value, "mapping items (bundled variants) belong in a grid axis of mappings only"))
            continue
        clean, message = check_param(name, value)
        if message:
            errors.append(src.error(key_join(path, index), value, message))
        elif clean in normalised:
            errors.append(src.error(key_join(path, index), value, f"{name}={format_scalar(clean)} is listed twice"))
        normalised.append(clean)
    return normalised


def _check_bundle(path: str, items: list[Any], src: Source, errors: list[SpecError]) -> list[Any]:
    """Items of a bundled axis: mappings of params (+ label), labels unique."""
    normalised: list[Any] = []
    labels: dict[str, int] = {}
    for index, item in enumerate(items):
        item_path = key_join(path, index)
        if not isinstance(item, dict):
            errors.append(src.error(item_path, item, "a bundled axis takes mappings only (param: value, optional label)"))
            continue
        label = item.get(LABEL_KEY)
        if LABEL_KEY in item and (not isinstance(label, str) or not label.strip()):
            errors.append(src.error(key_join(item_path, LABEL_KEY), label, "a label is a non-empty string (quote it)"))
        params = {k: v for k, v in item.items() if k != LABEL_KEY}
        clean = _check_params(params, item_path, src, errors)
        entry = {LABEL_KEY: label, **clean} if LABEL_KEY in item else clean
        name = bundle_label(entry)
        if name in labels:
            errors.append(src.error(item_path, name, f"label {name!r} is used by item {labels[name]} too"))
        labels.setdefault(name, index)
        normalised.append(entry)
    return normalised


def _check_bounds(name: str, axis: AxisSpec, path: str, src: Source, errors: list[SpecError]) -> None:
    """uniform/loguniform/randint: [lo, hi], lo < hi, both valid for the param."""
    bounds = axis.values
    if len(bounds) != 2:
        errors.append(src.error(path, bounds, f"{axis.kind} takes [lo, hi]"))
        return
    lo, hi = bounds
    base = _base_type(name)
    if base not in (int, float):
        errors.append(src.error(path, bounds, f"{name} is not numeric: sweep it with grid or choice"))
        return
    if base is int and axis.kind != "randint":
        errors.append(src.error(path, bounds, f"{name} takes integers: use randint (hi excluded) or a grid"))
        return
    if lo >= hi:
        errors.append(src.error(path, bounds, f"{axis.kind} needs lo < hi"))
        return
    checks = [(0, lo), (1, hi - 1 if axis.kind == "randint" else hi)]  # randint excludes hi
    if axis.kind == "loguniform" and lo <= 0:
        errors.append(src.error(key_join(path, 0), lo, "loguniform needs lo > 0"))
        checks = checks[1:]
    for index, value in checks:
        _, message = check_param(name, value)
        if message:
            errors.append(src.error(key_join(path, index), bounds[index], message))


def _check_owners(space: SearchSpaceSpec, src: Source, errors: list[SpecError]) -> None:
    """Each param is swept by at most one axis; a scalar axis and `fixed` never both
    set one param (fixed would be dead). Bundles may override `fixed` (it is their base)."""
    owner: dict[str, str] = {}
    for name, axis in space.axes.items():
        params = _bundle_params(axis) if axis.is_bundle else ({name} if name in PARAM_FIELDS else set())
        for param in sorted(params):
            if param in owner and owner[param] != name:
                errors.append(src.error(key_join("axes", name), param, f"{param} is also set by axis {owner[param]!r}"))
            owner.setdefault(param, name)
            if not axis.is_bundle and param in space.fixed:
                errors.append(src.error(key_join("fixed", param), space.fixed[param], f"{param} is also swept by axis {name!r}"))


def _bundle_params(axis: AxisSpec) -> set[str]:
    return {k for item in axis.values if isinstance(item, dict) for k in item if k != LABEL_KEY}


def _check_exclude(
    index: int, entry: dict[str, Any], space: SearchSpaceSpec, src: Source, errors: list[SpecError]
) -> dict[str, Any]:
    """An exclude entry matches params (normalised), `label` (any bundled axis) or a
    bundled axis name (its labels)."""
    path = key_join("exclude", index)
    if not entry:
        errors.append(src.error(path, entry, "an exclude entry needs at least one key"))
    bundles = space.bundle_axes()
    all_labels = {label for axis in bundles for label in space.labels(axis)}
    normalised: dict[str, Any] = {}
    for key, value in entry.items():
        key_path = key_join(path, key)
        if key == LABEL_KEY or key in bundles:
            known = all_labels if key == LABEL_KEY else set(space.labels(key))
            if value not in known:
                errors.append(src.error(key_path, value, f"no variant labelled {value!r}{_suggest(str(value), known)}"))
            normalised[key] = value
            continue
        clean, message = check_param(str(key), value)
        if message:
            extra = f"; an exclude key is a trial param, `label` or a bundled axis ({', '.join(bundles)})" if key not in PARAM_FIELDS and bundles else ""
            errors.append(src.error(key_path, value if key in PARAM_FIELDS else key, message + extra))
        normalised[key] = clean
    return normalised


# ---------------------------------------------------------------------------------
# Study checks


def check_study(study: Study) -> tuple[Study, list[SpecError]]:
    """Everything about a study that needs no expansion; returns it normalised."""
    src = study.source
    errors: list[SpecError] = []
    overrides = _check_overrides(study, src, errors)
    budgets = {name: _check_budget(name, values, study, src, errors) for name, values in study.budgets.items()}
    study = study.model_copy(update={"overrides": overrides, "budgets": budgets})
    _check_default_budget(study, errors)
    _check_seeds(study.seeds, "seeds", src, errors)
    if study.checkpoint_every is not None and "checkpoint_every" in overrides:
        errors.append(src.error("checkpoint_every", study.checkpoint_every, "also set in overrides; keep one"))
    errors += check_search_mode(study)
    return study, errors


def _check_overrides(study: Study, src: Source, errors: list[SpecError]) -> dict[str, Any]:
    """Params on top of the search space; a bundled axis's name with one of its labels
    pins that axis to the one variant (e.g. `--set variant=VAE+BN+WU`)."""
    bundles = study.search_space.bundle_axes()
    params = {k: v for k, v in study.overrides.items() if k not in bundles}
    normalised = _check_params(params, "overrides", src, errors)
    for axis in bundles:
        if axis in study.overrides:
            label, labels = study.overrides[axis], study.search_space.labels(axis)
            if label not in labels:
                errors.append(src.error(key_join("overrides", axis), label, f"no variant labelled {label!r}{_suggest(str(label), labels)}; labels: {', '.join(labels)}"))
            normalised[axis] = label
    return normalised


def _check_budget(
    name: str, values: Mapping[str, Any], study: Study, src: Source, errors: list[SpecError]
) -> dict[str, Any]:
    path = key_join("budgets", name)
    params = {k: v for k, v in values.items() if k not in BUDGET_SPECIAL}
    normalised = _check_params(params, path, src, errors)
    if "num_samples" in values:
        count = values["num_samples"]
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            errors.append(src.error(key_join(path, "num_samples"), count, "num_samples is an integer >= 1"))
        elif study.search.mode == "grid":
            errors.append(src.error(key_join(path, "num_samples"), count, "num_samples applies to search.mode random/optuna; a grid is crossed with seeds"))
        normalised["num_samples"] = count
    if "warmup_fraction" in values:
        fraction = values["warmup_fraction"]
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
            errors.append(src.error(key_join(path, "warmup_fraction"), fraction, "warmup_fraction must be in (0, 1]: warm-up epochs = fraction x epochs"))
        elif "warmup_epochs" in values:
            errors.append(src.error(key_join(path, "warmup_fraction"), fraction, "set warmup_fraction or warmup_epochs in a budget, not both"))
        normalised["warmup_fraction"] = float(fraction) if isinstance(fraction, (int, float)) else fraction
    if "seeds" in values:
        normalised["seeds"] = values["seeds"]
        _check_seeds(values["seeds"], key_join(path, "seeds"), src, errors)
    return normalised


def _check_seeds(seeds: Any, path: str, src: Source, errors: list[SpecError]) -> None:
    if not isinstance(seeds, list) or not seeds:
        errors.append(src.error(path, seeds, "seeds is a non-empty list of integers >= 0"))
        return
    seen: set[int] = set()
    for index, seed in enumerate(seeds):
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            errors.append(src.error(key_join(path, index), seed, "a seed is an integer >= 0"))
        elif seed in seen:
            errors.append(src.error(key_join(path, index), seed, "seed listed twice"))
        else:
            seen.add(seed)


def _check_default_budget(study: Study, errors: list[SpecError]) -> None:
    if study.default_budget not in study.budgets:
        known = ", ".join(study.budgets)
        errors.append(study.source.error("default_budget", study.default_budget, f"unknown budget{_suggest(str(study.default_budget), study.budgets)}; budgets: {known}"))


def check_search_mode(study: Study) -> list[SpecError]:
    """Which axis kinds a mode can expand, and what optuna/ASHA/cohorts need."""
    src, space_src, search = study.source, study.space_source, study.search
    errors: list[SpecError] = []
    axes = study.active_axes()
    sampled = [n for n, a in axes.items() if a.is_sampled]
    if search.mode == "grid":
        for name in sampled:
            errors.append(space_src.error(key_join("axes", name), axes[name].to_dict(), f"search.mode grid cannot expand a {axes[name].kind} axis: make it a grid or use mode random/optuna"))
    else:
        if not sampled:
            errors.append(src.error("search.mode", search.mode, f"mode {search.mode} needs at least one choice/uniform/loguniform/randint axis; this space has grid axes only"))
        for budget in study.budgets:
            if not study.num_samples_for(budget):
                errors.append(src.error(key_join("budgets", budget), MISSING, f"mode {search.mode} needs num_samples (in search: or in this budget)"))
    if search.mode == "optuna":
        errors += _check_optuna(study, axes)
    errors += _check_metric(study)
    if study.cohort_size > 1 and (search.mode == "optuna" or search.scheduler):
        why = "optuna proposes one point per Tune trial" if search.mode == "optuna" else "ASHA would stop a whole cohort at once"
        errors.append(src.error("cohort.size", study.cohort_size, f"cohorts need mode grid/random without a scheduler: {why}"))
    return errors


def _check_optuna(study: Study, axes: Mapping[str, AxisSpec]) -> list[SpecError]:
    errors: list[SpecError] = []
    for name, axis in axes.items():
        if not axis.is_sampled:
            errors.append(study.space_source.error(key_join("axes", name), axis.to_dict(), "mode optuna samples every axis: write a grid as choice (bundled variants cannot be sampled)"))
    if not study.search.metric:
        errors.append(study.source.error("search.metric", MISSING, "mode optuna needs a metric to optimise"))
    if len(study.seeds) > 1 or any(len(study.seeds_for(b)) > 1 for b in study.budgets):
        errors.append(study.source.error("seeds", study.seeds, "mode optuna runs one seed per proposed point: give one seed"))
    return errors


def _check_metric(study: Study) -> list[SpecError]:
    src, search = study.source, study.search
    errors: list[SpecError] = []
    needs_metric = search.mode == "optuna" or search.scheduler is not None
    if search.metric is None:
        if search.scheduler is not None:
            errors.append(src.error("search.metric", MISSING, "an ASHA scheduler needs a metric"))
        if search.direction is not None:
            errors.append(src.error("search.direction", search.direction, "direction without a metric"))
        return errors
    message = metric_error(search.metric)
    if message:
        errors.append(src.error("search.metric", search.metric, message))
    elif search.scheduler is not None and search.metric not in EPOCH_METRICS | EVAL_METRICS and not _layer_metric(search.metric):
        errors.append(src.error("search.metric", search.metric, "ASHA compares trials during training; this metric is only computed on the last epoch"))
    if needs_metric and search.direction is None:
        errors.append(src.error("search.direction", MISSING, f"say whether {search.metric} is better high (max) or low (min)"))
    return errors


def metric_error(name: str, max_depth: int = MAX_DEPTH) -> Optional[str]:
    """None if `name` is a metric a trial reports (ARCHITECTURE.md), else why not."""
    if name in EPOCH_METRICS | EVAL_METRICS | FINAL_METRICS:
        return None
    layer = _layer_metric(name)
    if layer is not None:
        return None if 1 <= layer[1] <= max_depth else f"layer {layer[1]} does not exist: trials here have at most {max_depth} layers"
    known = sorted(EPOCH_METRICS | EVAL_METRICS | FINAL_METRICS) + [f"{f}_<i>" for f in LAYER_FAMILIES]
    return f"unknown metric {name!r}{_suggest(name, known)}; metrics: {', '.join(known)}"


def _layer_metric(name: str) -> Optional[tuple[str, int]]:
    match = re.fullmatch(r"(" + "|".join(LAYER_FAMILIES) + r")_(\d+)", name)
    return (match.group(1), int(match.group(2))) if match else None


# ---------------------------------------------------------------------------------
# Report checks (given the expanded trials' params)


@dataclass(frozen=True)
class TrialParams:
    """What a report sees of a trial: its variant label and TrialConfig.to_params()."""

    variant: str
    params: Mapping[str, Any]

    def value(self, name: str) -> Any:
        return self.variant if name == "variant" else self.params.get(name)


def check_report(
    report: ReportSpec, trials: list[TrialParams], src: Source, pinned: frozenset[str] = frozenset()
) -> list[SpecError]:
    """Tables may only name params, `variant`, `layer` (rows) and reported metrics; their
    filters and orders must match trials of this budget; paper refs must exist.

    `pinned` dims (set by overrides, e.g. a CLI --set) are not held to "some trial has
    this value": pinning a study to one variant must not make its report invalid."""
    errors: list[SpecError] = []
    for index, table in enumerate(report.tables):
        errors += _check_table(table, key_join("report.tables", index), trials, src, pinned)
    return errors


def pinned_dims(study: Study) -> frozenset[str]:
    """Params and `variant` whose values overrides restrict (see check_report)."""
    pinned = {k for k in study.overrides if k in PARAM_FIELDS}
    for axis in study.search_space.bundle_axes():
        if axis in study.overrides:
            pinned |= {"variant"} | _bundle_params(study.search_space.axes[axis])
    if "depth" in pinned:
        pinned |= {"latent_dims", "hidden_dims"}  # shown truncated to depth
    return frozenset(pinned)


def _check_table(table: TableSpec, path: str, trials: list[TrialParams], src: Source, pinned: frozenset[str]) -> list[SpecError]:
    errors: list[SpecError] = []
    for key in ("rows", "columns"):
        name = getattr(table, key)
        if name == "layer" and key == "columns":
            errors.append(src.error(key_join(path, key), name, "`layer` can only be rows"))
        elif name not in TABLE_PSEUDO_DIMS and name not in PARAM_FIELDS:
            errors.append(src.error(key_join(path, key), name, f"unknown table dimension{_suggest(name, list(PARAM_FIELDS) + ['variant', 'layer'])}: use a trial param, variant or layer"))
    if table.rows == table.columns:
        errors.append(src.error(key_join(path, "columns"), table.columns, "rows and columns are the same"))
    if "variant" in (table.rows, table.columns) and not any(t.variant for t in trials):
        errors.append(src.error(path, "variant", "this study has no bundled variant axis, so no variant labels"))
    depth = max((int(t.params.get("depth", 0)) for t in trials), default=MAX_DEPTH)
    errors += _check_table_value(table, path, depth, src)
    selected = _check_where(table, path, trials, src, errors, pinned)
    for key, dim in (("row_order", table.rows), ("column_order", table.columns)):
        if dim not in pinned:
            _check_order(getattr(table, key), dim, key_join(path, key), selected, src, errors)
    if table.paper is not None:
        errors += _check_paper(table, key_join(path, "paper"), selected, src, pinned)
    return errors


def _check_table_value(table: TableSpec, path: str, depth: int, src: Source) -> list[SpecError]:
    where = key_join(path, "value")
    if table.rows == "layer":
        if table.value not in LAYER_FAMILIES:
            return [src.error(where, table.value, f"rows: layer takes a per-layer metric prefix: {', '.join(LAYER_FAMILIES)}")]
        return []
    message = metric_error(table.value, max(depth, 1))
    return [src.error(where, table.value, message)] if message else []


def _check_where(
    table: TableSpec, path: str, trials: list[TrialParams], src: Source, errors: list[SpecError], pinned: frozenset[str]
) -> list[TrialParams]:
    for key, value in table.where.items():
        if key != "variant" and key not in PARAM_FIELDS:
            errors.append(src.error(key_join(key_join(path, "where"), key), value, f"unknown param{_suggest(key, PARAM_FIELDS)}"))
            return trials
    selected = [t for t in trials if all(_same(t.value(k), v) for k, v in table.where.items())]
    if table.where and not selected and not pinned & set(table.where):
        errors.append(src.error(key_join(path, "where"), table.where, "matches no trial of this budget"))
    return selected


def _check_order(order: list[Any], dim: str, path: str, trials: list[TrialParams], src: Source, errors: list[SpecError]) -> None:
    """Order entries name values some trial has (as shown: '64-32', 'VAE+BN', 0.8)."""
    if not order or dim == "layer" or not trials:
        return
    present = {format_scalar(t.value(dim)) for t in trials}
    for index, item in enumerate(order):
        shown = format_scalar(item)
        if shown not in present:
            errors.append(src.error(key_join(path, index), item, f"no trial has {dim}={shown}{_suggest(shown, present)}; values: {', '.join(sorted(present))}"))


def _same(actual: Any, wanted: Any) -> bool:
    """Compare a to_params value with a YAML filter value (numbers as numbers)."""
    if isinstance(actual, bool) or isinstance(wanted, bool):
        return actual is wanted or str(actual).lower() == str(wanted).lower()
    if isinstance(actual, (int, float)) and isinstance(wanted, (int, float)):
        return float(actual) == float(wanted)
    return format_scalar(actual) == format_scalar(wanted)


def _check_paper(table: TableSpec, path: str, trials: list[TrialParams], src: Source, pinned: frozenset[str]) -> list[SpecError]:
    """The reference names existing rows of paper_results.csv, for a dataset these
    trials train on; variant_map maps study labels to the csv's variant names."""
    ref = table.paper
    assert ref is not None
    rows = [
        r for r in paper_results()
        if r["source"] == ref.source and r["table"] == ref.table and r["dataset"] == ref.dataset and r["finetune"] == ref.finetune
        and (r["metric"] == ref.metric or r["metric"].startswith(ref.metric + "_"))
    ]
    if not rows:
        wanted = {"source": ref.source, "table": ref.table, "dataset": ref.dataset, "metric": ref.metric, "finetune": ref.finetune}
        return [src.error(path, wanted, "no row of paper_results.csv matches")]
    errors: list[SpecError] = []
    datasets = {str(t.params.get("dataset")) for t in trials}
    if trials and ref.dataset not in datasets and "dataset" not in pinned:
        errors.append(src.error(key_join(path, "dataset"), ref.dataset, f"the table's trials train on {', '.join(sorted(datasets))}"))
    labels = {t.variant for t in trials}
    paper_variants = {r["variant"] for r in rows}
    for ours, theirs in getattr(ref, "variant_map", {}).items():
        map_path = key_join(key_join(path, "variant_map"), ours)
        if trials and ours not in labels and "variant" not in pinned:
            errors.append(src.error(map_path, ours, f"no trial has variant {ours!r}{_suggest(ours, labels)}"))
        if theirs not in paper_variants:
            errors.append(src.error(map_path, theirs, f"not a variant of this paper table: {', '.join(sorted(paper_variants))}"))
    return errors


@functools.lru_cache(maxsize=1)
def paper_results() -> tuple[dict[str, str], ...]:
    """The published numbers shipped with the package (resources/paper_results.csv)."""
    resource = importlib.resources.files("vaelab") / "resources" / "paper_results.csv"
    with resource.open("r", encoding="utf-8") as handle:
        return tuple(csv.DictReader(handle))
