"""The launch plan: a loaded study as the trials the runner starts, independent of the YAML schema.

`plan_from_study` turns a Study into a LaunchPlan (cohorts of Members, or an OptunaPlan);
`optuna_member` rebuilds the trial an optuna point stands for (inside the trial process);
the dataset checks run before any trial starts. Imports no ray (only vaelab.studies and,
lazily, vaelab.data).
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

# RunnerError stays importable from here: Tune pickles a trial's exception (error.pkl) by
# this module path, and runs started before it moved to errors.py are resumed and read back.
from vaelab.errors import RunnerError  # noqa: F401

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Member:
    """One trial member: a TrialSpec as plain data (travels inside the Tune config)."""

    trial_key: str
    trial_id: str
    variant: str
    config: dict[str, Any]
    seed: int = 0


@dataclass(frozen=True)
class OptunaPlan:
    metric: str
    mode: str  # "max" | "min"
    num_samples: int
    max_concurrent: int
    space: dict[str, tuple]  # expand.tune_search_space: ("uniform", lo, hi), ("choice", [...]), ...
    epochs: int  # every trial's epochs (ASHA's max_t, the ETA)
    asha: Optional[dict[str, Any]] = None  # grace_period, reduction_factor
    seed: Optional[int] = None


@dataclass(frozen=True)
class LaunchPlan:
    """Everything the runner needs from a study, independent of the YAML schema."""

    study: str
    budget: str
    spec_hash: str
    study_yaml: str  # the resolved study (expand.resolved_yaml): rebuilds optuna trials in workers
    cohorts: list[list[Member]]  # grid / random; empty for optuna
    optuna: Optional[OptunaPlan]
    resources: dict[str, float]  # {"cpu": c, "gpu": g}
    max_failures: int = 2
    max_concurrent: Optional[int] = None  # grid / random: Tune trials at once (None: as resources allow)
    checkpoint_every: Optional[int] = None  # None: each trial's own `checkpoint_every`
    metric: str = "test_ll_iw"  # "best so far" in the progress line
    mode: str = "max"
    source_dir: Optional[Path] = None  # where the study file lives (git SHA)

    @property
    def n_trials(self) -> int:
        """Ray Tune trials: one per cohort (or optuna sample)."""
        return self.optuna.num_samples if self.optuna else len(self.cohorts)

    @property
    def n_members(self) -> int:
        """The study's trials, each with its own MLflow run: a cohort trains several."""
        return self.optuna.num_samples if self.optuna else sum(len(c) for c in self.cohorts)


def plan_from_study(study: Any, budget: Optional[str] = None) -> LaunchPlan:
    """A loaded `vaelab.studies.Study` (load_study) as a LaunchPlan for one budget."""
    from vaelab.studies import expand

    budget = budget or study.budget
    if budget != study.budget:
        study = study.with_budget(budget)
    search = study.search
    metric = search.metric or "test_elbo"  # evaluated every eval_every epochs: a live "best so far"
    mode = search.direction or ("min" if metric.endswith("loss") else "max")
    budget_params = study.budget_params(budget)
    cohorts: list[list[Member]] = []
    optuna = None
    if search.mode == "optuna":
        fixed = {**study.search_space.fixed, **study.overrides, **budget_params}
        optuna = OptunaPlan(
            metric=metric,
            mode=mode,
            num_samples=int(study.num_samples_for(budget) or 8),
            max_concurrent=int(search.max_concurrent or 0),
            space=dict(expand.tune_search_space(study)),
            epochs=int(fixed.get("epochs", 2000)),
            asha=search.scheduler.model_dump() if search.scheduler else None,
            seed=search.seed,
        )
    else:
        trials = expand.expand_trials(study, budget)
        groups = expand.group_cohorts(trials, study.cohort_size) if study.cohort_size > 1 else [[t] for t in trials]
        cohorts = [[_member(t) for t in group] for group in groups]
    return LaunchPlan(
        study=study.name,
        budget=budget,
        spec_hash=expand.spec_hash(study),
        study_yaml=expand.resolved_yaml(study),
        cohorts=cohorts,
        optuna=optuna,
        resources={"cpu": float(study.resources.cpu), "gpu": float(study.resources.gpu)},
        max_failures=int(study.failure.max_failures),
        max_concurrent=search.max_concurrent,
        checkpoint_every=budget_params.get("checkpoint_every") or study.checkpoint_every,
        metric=metric,
        mode=mode,
        source_dir=_source_dir(study.source.file),
    )


def _member(spec: Any) -> Member:
    return Member(
        trial_key=str(spec.trial_key),
        trial_id=str(spec.trial_id),
        variant=str(spec.variant or ""),
        config=dict(spec.config),
        seed=int(spec.seed),
    )


def _source_dir(file: str) -> Optional[Path]:
    path = Path(file)
    return path.resolve().parent if path.exists() else None


def optuna_member(ctx: Mapping[str, Any], point: Mapping[str, Any], cohort_id: str) -> Optional[Member]:
    """The trial optuna proposed, built by the studies module from the resolved study.

    None when the point is excluded or invalid: there is nothing to train."""
    from vaelab.errors import SpecError
    from vaelab.studies import expand

    with tempfile.TemporaryDirectory(prefix="vaelab-study-") as tmp:
        path = Path(tmp) / "study.yaml"
        path.write_text(ctx["study_yaml"])
        study = expand.load_study(path, ctx["budget"] or None)
        try:
            spec = expand.trial_from_point(study, dict(point), budget=ctx["budget"] or None)
        except SpecError as err:
            log.warning("optuna proposed an invalid point %s: %s", dict(point), err)
            return None
    # Two optuna trials may propose the same point: the Tune trial id keeps their runs apart.
    return dataclasses.replace(_member(spec), trial_id=f"{spec.trial_id}-{cohort_id}",
                               config=absolute_paths(spec.config, Path(ctx.get("cwd") or Path.cwd())))


def absolute_paths(config: Mapping[str, Any], base: Path) -> dict[str, Any]:
    """data_dir and init_from made absolute: a trial runs in its own working directory."""
    out = dict(config)
    for key in ("data_dir", "init_from"):
        value = out.get(key)
        if isinstance(value, str) and value and "://" not in value:
            out[key] = str((base / Path(value).expanduser()).resolve())
    return out


def with_absolute_paths(plan: LaunchPlan, base: Path) -> LaunchPlan:
    cohorts = [[dataclasses.replace(m, config=absolute_paths(m.config, base)) for m in c] for c in plan.cohorts]
    return dataclasses.replace(plan, cohorts=cohorts)


def default_run_name(plan: LaunchPlan) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    budget = f"-{plan.budget}" if plan.budget else ""
    return f"{plan.study}{budget}-{stamp}"


def plan_datasets(plan: LaunchPlan) -> list[tuple[str, Optional[str]]]:
    """(dataset, data_dir) pairs the plan's trials read (data_dir None: found by name)."""
    wanted = {(m.config.get("dataset", "mnist"), m.config.get("data_dir")) for c in plan.cohorts for m in c}
    return sorted(wanted, key=str)


def check_datasets(plan: LaunchPlan) -> None:
    """Every dataset the trials read is present (and passes its checksum) before any trial
    starts: a missing file would otherwise fail every trial max_failures + 1 times."""
    check_dataset_pairs(plan_datasets(plan))


def check_dataset_pairs(pairs: Iterable[Sequence[Optional[str]]]) -> None:
    from vaelab import data

    for name, data_dir in pairs:
        if "missing" in data.verify(name, data_dir).values():
            data.load_arrays(name, data_dir)  # raises MissingDataError: which files, and how to fetch them
