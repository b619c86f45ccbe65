"""A study -> the list of trials it runs; loading and whole-study validation.

Expansion is deterministic: axes in file order (the last axis varies fastest), then
random samples, then seeds innermost. Every expanded trial is validated through
`vaelab.config.trial_config`, so an impossible combination is reported (with the
key paths that produced it) before anything starts. No ray import here: the runner
converts `tune_search_space` into Tune's objects.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence, Union

import numpy as np
import yaml
from pydantic import ValidationError

from vaelab.config import COHORT_VARYING, TrialConfig, trial_config
from vaelab.errors import SpecError, SpecErrors, format_value
from vaelab.studies.check_params import check_param, param_default
from vaelab.studies.check_report import TrialParams, check_claims, check_report, pinned_dims
from vaelab.studies.check_space import check_search_space
from vaelab.studies.check_study import check_study
from vaelab.studies.schema import (
    LABEL_KEY,
    PARAM_FIELDS,
    VARIANT_AXIS,
    AxisSpec,
    SearchSpaceSpec,
    Study,
    StudySpec,
    bundle_label,
    bundle_params,
    format_scalar,
    plain_values,
)
from vaelab.studies.wording import field_message, structure_errors
from vaelab.studies.yaml_source import Source, display_path, key_join, read_yaml

PathLike = Union[str, Path]
# Keys whose presence marks a file as a study rather than a search space.
_STUDY_ONLY_KEYS = frozenset({"search_space", "budgets", "seeds", "search", "report", "resources", "default_budget"})
# Budget keys that only shorten a schedule that is on (see _apply_budget).
WARMUP_KEYS = frozenset({"warmup_epochs"})
ANNEAL_KEYS = frozenset({"kl_anneal_hold_steps", "kl_anneal_steps"})


@dataclass(frozen=True)
class TrialSpec:
    """One trial to run: a full, validated TrialConfig as a plain dict.

    `trial_key` reads like `variant=VAE+BN,depth=3,seed=1` (the axes that vary, then
    the seed); `trial_id` is a short hash of study name, key and config, stable across
    runs, used as the MLflow tag `vaelab.trial_id`.
    """

    trial_key: str
    trial_id: str
    variant: str
    config: dict[str, Any]
    seed: int
    budget: str = ""
    axes: dict[str, str] = field(default_factory=dict)  # axis name -> value as in the key


# ---------------------------------------------------------------------------------
# Loading


def load_study(
    path: PathLike, budget: Optional[str] = None, overrides: Optional[Mapping[str, Any]] = None
) -> Study:
    """Load, check and expand-check a study for one budget (default_budget if None).

    `overrides` are the command line's `--set` values: they win over every layer of
    the study (`fixed`, `overrides`, the budget), a bundled axis's name with a label or
    a scalar axis's name pins that axis, and a value that would make two trials
    identical (a parameter the items of a bundled axis differ in) is refused. They are
    folded into the resolved study, so it alone rebuilds the same trials.
    Raises SpecErrors listing every problem found (a --set value's as `--set KEY`).
    """
    path = Path(path)
    try:
        study, errors = _load(path, overrides)
        if study is None or errors:
            raise SpecErrors(errors)
        name = _budget_name(study, budget)
        study = study.with_budget(name)
        trials, errors = _expand_checked(study, name)
        if errors:
            raise SpecErrors(errors)
        if overrides and study.search.mode != "optuna":
            _refuse_identical(path, name, overrides, trials)
    except SpecErrors as err:
        if not overrides:
            raise
        raise SpecErrors(_blame_command_line(err.errors, str(display_path(path)), overrides)) from None
    return study


def load_search_space(path: PathLike) -> SearchSpaceSpec:
    """Load and check a search-space file on its own (its grid expanded with defaults)."""
    study, errors = _space_as_study(Path(path))
    if study is None or errors:
        raise SpecErrors(errors)
    _, errors = _expand_checked(study, study.default_budget)
    if errors:
        raise SpecErrors(errors)
    return study.search_space


def validate_file(path: PathLike) -> list[str]:
    """Every problem in a study (all budgets) or a search-space file, one line each;
    [] when valid. Never raises for a bad spec (for `vaelab validate`)."""
    path = Path(path)
    try:
        data, src = read_yaml(path)
    except SpecError as err:
        return [str(err)]
    if not isinstance(data, dict):
        return [str(src.error("", type(data).__name__, "a study or search-space file is a YAML mapping of keys"))]
    is_study = isinstance(data, dict) and bool(_STUDY_ONLY_KEYS & set(data))
    study, errors = _load(path) if is_study else _space_as_study(path)
    if study is not None and not errors:
        for name in study.budgets:
            errors += _expand_checked(study.with_budget(name), name)[1]
    return SpecErrors(errors).lines() if errors else []


def _load(path: Path, overrides: Optional[Mapping[str, Any]] = None) -> tuple[Optional[Study], list[SpecError]]:
    """Parse a study and its search space; all structural and static errors."""
    try:
        data, src = read_yaml(path)
    except SpecError as err:
        return None, [err]
    if not isinstance(data, dict):
        return None, [src.error("", type(data).__name__, "a study file is a YAML mapping of keys")]
    if overrides:
        data = _with_command_line(data, overrides)
    try:
        spec = StudySpec.model_validate(data)
    except ValidationError as err:
        errors = structure_errors(err, src, StudySpec)
        space = _resolve_space(data.get("search_space"), path, src)
        return None, errors + (space[2] if space else [])
    resolved = _resolve_space(spec.search_space, path, src)
    if resolved is None:
        return None, [src.error("search_space", spec.search_space, "a path to a search-space file, or an inline mapping")]
    space, space_src, errors = resolved
    if space is None:
        return None, errors
    study = _build_study(spec, space, src, space_src)
    if study is None:
        return None, errors + [src.error("default_budget", None, f"several budgets: say which is the default ({', '.join(spec.budgets)})")]
    study, more = check_study(study)
    return study, errors + more


# ---------------------------------------------------------------------------------
# The command line's --set: the top layer of every trial

COMMAND_LINE = "command line"  # the "file" a --set value's error names


def _with_command_line(data: dict[str, Any], sets: Mapping[str, Any]) -> dict[str, Any]:
    """The study's data with the --set values on top of every layer.

    They join `overrides` (which pins an axis they name) and leave the layers above
    `overrides` that would hide them: the budgets' same keys (a --set warmup_epochs also
    a budget's warmup_fraction) and a top-level checkpoint_every. Written this way the
    resolved study (study.yaml in MLflow) rebuilds the same trials with no --set."""
    shadowed = set(sets) | ({"warmup_fraction"} if "warmup_epochs" in sets else set())
    budgets = data.get("budgets")
    if isinstance(budgets, dict):
        budgets = {name: ({k: v for k, v in values.items() if k not in shadowed} if isinstance(values, dict) else values)
                   for name, values in budgets.items()}
    out = {**data, "overrides": {**(data.get("overrides") or {}), **sets}}
    if budgets is not None:
        out["budgets"] = budgets
    if "checkpoint_every" in sets:
        out.pop("checkpoint_every", None)
    return out


def _blame_command_line(errors: Sequence[SpecError], study_file: str, sets: Mapping[str, Any]) -> list[SpecError]:
    """Errors about a --set value name `--set KEY`, not the study's `overrides.KEY` it was
    folded into (see _with_command_line)."""
    out = []
    for error in errors:
        parts = error.key_path.split(" + ")
        renamed = [_set_part(part, error.file, study_file, sets) for part in parts]
        if renamed == parts:
            out.append(error)
            continue
        first_is_set = renamed[0] != parts[0]
        file = COMMAND_LINE if all(r != p for r, p in zip(renamed, parts)) else error.file
        out.append(SpecError(file, " + ".join(renamed), error.value, error.message, None if first_is_set else error.line))
    return out


def _set_part(part: str, file: str, study_file: str, sets: Mapping[str, Any]) -> str:
    match = re.fullmatch(r"overrides\.([A-Za-z0-9_]+)(?: \((.+)\))?", part)
    if match and match.group(1) in sets and (match.group(2) or file) == study_file:
        return f"--set {match.group(1)}"
    return part


def _refuse_identical(path: Path, budget: str, sets: Mapping[str, Any], trials: Sequence[TrialSpec]) -> None:
    """A --set of a parameter the items of a bundled axis differ in (e.g. batch_norm for
    VAE vs VAE+BN) would train the same model twice under two names: refused."""
    base, errors = _load(path)
    if base is None or errors:
        return
    before = _identical_groups(_expand(base.with_budget(budget), budget)[0])
    new = [group for group in _identical_groups(trials) if group not in before]
    if not new:
        return
    bundled = {p for name, axis in base.active_axes().items() if axis.is_bundle for p in bundle_params(axis)}
    blamed = [k for k in sets if k in bundled] or [k for k in sets if k not in base.search_space.axes]
    group = new[0]
    more = f" (and {len(new) - 1} more such group{'s' if len(new) > 2 else ''})" if len(new) > 1 else ""
    axes = sorted(n for n, a in base.active_axes().items() if a.is_bundle and set(blamed) & bundle_params(a)) or ["AXIS"]
    value = sets[blamed[0]] if len(blamed) == 1 else {k: sets[k] for k in blamed}
    raise SpecErrors([SpecError(
        COMMAND_LINE, " + ".join(f"--set {k}" for k in blamed), value,
        f"would make trials identical: {' and '.join(group)}{more} would train the same model, because "
        f"the items of axis {', '.join(axes)} differ in {', '.join(blamed)}; pin one item instead "
        f"(--set {axes[0]}=LABEL) or change the study",
    )])


def _identical_groups(trials: Sequence[TrialSpec]) -> list[tuple[str, ...]]:
    """Trial keys of trials whose configs are equal, one tuple per group of two or more."""
    groups: dict[str, list[str]] = defaultdict(list)
    for trial in trials:
        groups[json.dumps(trial.config, sort_keys=True, default=str)].append(trial.trial_key)
    return [tuple(keys) for keys in groups.values() if len(keys) > 1]


def command_line_notes(path: PathLike, budget: Optional[str], sets: Mapping[str, Any]) -> list[str]:
    """One line per --set value: which layer of the study it overrides, or the axis it
    pins, e.g. "--set epochs=12 overrides budget smoke's epochs=4"."""
    study, errors = _load(Path(path))
    if study is None or errors or not sets:
        return []
    budget = budget or study.budget
    return [_note(study, budget, key, value) for key, value in sets.items()]


def _note(study: Study, budget: str, key: str, value: Any) -> str:
    shown = f"--set {key}={format_value(value)}"
    axis = study.search_space.axes.get(key)
    if axis is not None and (axis.is_bundle or key in study.active_axes()):
        values = study.search_space.labels(key) if axis.is_bundle else [format_scalar(v) for v in axis.values]
        return f"{shown} pins axis {key} (of {', '.join(map(str, values))})"
    layers = _layers_setting(study, budget, key)
    if not layers:
        return f"{shown} sets {key} (default {format_value(param_default(key)) if key in PARAM_FIELDS else '-'})"
    return f"{shown} overrides {' and '.join(layers)}"


def _layers_setting(study: Study, budget: str, key: str) -> list[str]:
    """What sets `key` in the study, highest layer first, as a user would say it."""
    found = []
    values = study.budgets.get(budget, {})
    if key in values:
        found.append(f"budget {budget}'s {key}={format_value(values[key])}")
    if key == "warmup_epochs" and "warmup_fraction" in values:
        found.append(f"budget {budget}'s warmup_fraction={format_value(values['warmup_fraction'])}")
    if key == "checkpoint_every" and study.checkpoint_every is not None:
        found.append(f"the study's checkpoint_every={study.checkpoint_every}")
    if key in study.overrides:
        found.append(f"the study's overrides.{key}={format_value(study.overrides[key])}")
    found += [f"the items of axis {name}" for name, axis in study.active_axes().items()
              if axis.is_bundle and key in bundle_params(axis)]
    if key in study.search_space.fixed:
        found.append(f"search_space.fixed.{key}={format_value(study.search_space.fixed[key])}")
    return found


def _build_study(spec: StudySpec, space: SearchSpaceSpec, src: Source, space_src: Source) -> Optional[Study]:
    default = spec.default_budget or (next(iter(spec.budgets)) if len(spec.budgets) == 1 else None)
    if default is None:
        return None
    values = {**dict(spec), "search_space": space, "default_budget": default}
    study = Study.model_construct(**values)
    study._source, study._space_source, study._budget = src, space_src, default
    return study


def _resolve_space(
    ref: Any, study_path: Path, src: Source
) -> Optional[tuple[Optional[SearchSpaceSpec], Source, list[SpecError]]]:
    """Read the search space a study names (path relative to the study) or inlines."""
    if isinstance(ref, dict):
        space_src = Source(src.file, "search_space.", src.lines)
        return (*_parse_space(ref, space_src),)  # type: ignore[return-value]
    if not isinstance(ref, str):
        return None
    target = (study_path.parent / ref).resolve()
    if not target.is_file():
        return None, src, [src.error("search_space", ref, f"search-space file not found: {display_path(target)}")]
    try:
        data, space_src = read_yaml(target)
    except SpecError as err:
        return None, src, [err]
    return (*_parse_space(data, space_src),)  # type: ignore[return-value]


def _parse_space(data: Any, src: Source) -> tuple[Optional[SearchSpaceSpec], Source, list[SpecError]]:
    if not isinstance(data, dict):
        return None, src, [src.error("", type(data).__name__, "a search space is a YAML mapping of keys")]
    try:
        space = SearchSpaceSpec.model_validate(data)
    except ValidationError as err:
        return None, src, structure_errors(err, src, SearchSpaceSpec)
    space, errors = check_search_space(space, src)
    return space, src, errors


def _space_as_study(path: Path) -> tuple[Optional[Study], list[SpecError]]:
    """A search-space file alone, wrapped as a study with no budget, so that its grid
    (with a few random samples for sampled axes) is expanded and every combo checked."""
    try:
        data, src = read_yaml(path)
    except SpecError as err:
        return None, [err]
    space, src, errors = _parse_space(data, src)
    if space is None or errors:
        return None, errors
    sampled = any(axis.is_sampled for axis in space.axes.values())
    search = {"mode": "random", "num_samples": 8} if sampled else {"mode": "grid"}
    name = re.sub(r"[^A-Za-z0-9_.\-]", "_", path.stem).lstrip("_.-") or "search_space"
    spec = StudySpec.model_validate({"name": name, "search_space": {}, "budgets": {"default": {}}, "search": search})
    study = _build_study(spec, space, src, src)
    assert study is not None
    return study, []


# ---------------------------------------------------------------------------------
# Expansion


@dataclass(frozen=True)
class _Pick:
    """One axis's value in a trial: the params it sets and where each came from."""

    axis: str
    text: str  # as shown in the trial key
    values: Mapping[str, Any]
    paths: Mapping[str, str]  # param -> key path in the search space
    label: Optional[str] = None  # bundled axes only


@dataclass
class _Layers:
    """A trial's values as they are layered, with the key path that set each."""

    values: dict[str, Any] = field(default_factory=dict)
    origin: dict[str, tuple[Source, str]] = field(default_factory=dict)

    def set(self, name: str, value: Any, src: Source, path: str) -> None:
        self.values[name] = value
        self.origin[name] = (src, path)

    def get(self, name: str) -> Any:
        return self.values[name] if name in self.values else param_default(name)


def expand_trials(study: Study, budget: Optional[str] = None) -> list[TrialSpec]:
    """All trials of a grid or random study for a budget, in a deterministic order.

    grid: cartesian product of grid axes (bundled variants included), minus excludes,
    crossed with seeds. random: `num_samples` points drawn from the sampled axes with
    a numpy RNG seeded by `search.seed`, crossed with the grid axes and the seeds.
    Raises SpecErrors if any trial is invalid or nothing is left.
    """
    if study.search.mode == "optuna":
        raise SpecErrors([study.source.error("search.mode", "optuna", "optuna proposes trials while running: use tune_search_space() and trial_from_point()")])
    trials, errors = _expand(study, _budget_name(study, budget))
    if errors:
        raise SpecErrors(errors)
    return trials


def _budget_name(study: Study, budget: Optional[str]) -> str:
    name = budget or study.budget
    if name not in study.budgets:
        raise SpecErrors([study.source.error("budgets", name, f"unknown budget; budgets: {', '.join(study.budgets)}")])
    return name


def _expand_checked(study: Study, budget: str) -> tuple[list[TrialSpec], list[SpecError]]:
    """Expand (optuna: a few sampled points), then the checks that need trials."""
    if study.search.mode == "optuna":
        trials, errors = _expand(study.model_copy(update={"search": study.search.model_copy(update={"mode": "random"})}), budget)
    else:
        trials, errors = _expand(study, budget)
    if errors:
        return trials, errors
    errors += _check_scheduler(study, trials)
    params = [trial_params(t) for t in trials]
    errors += check_report(study.report, params, study.source, pinned_dims(study))
    errors += check_claims(study.report, params, study.source, pinned_dims(study))
    return trials, errors


def _expand(study: Study, budget: str) -> tuple[list[TrialSpec], list[SpecError]]:
    trials: list[TrialSpec] = []
    failures: dict[tuple[str, ...], list[Any]] = {}
    seeds = study.seeds_for(budget)
    candidates = 0
    for picks, sample in _candidates(study, budget):
        layers = _layered(study, picks)
        if _excluded(study.search_space, layers, picks):
            continue
        candidates += 1
        _apply_budget(study, budget, layers)
        for seed in seeds:
            trial = _make_trial(study, budget, picks, sample, seed, layers, failures)
            if trial is not None:
                trials.append(trial)
    errors = _failure_errors(failures)
    if candidates == 0:
        exclude = study.search_space.exclude
        errors.append(study.space_source.error("exclude", exclude, "every combination is excluded: no trial left"))
    return trials, errors


def _candidates(study: Study, budget: str) -> Iterator[tuple[list[_Pick], Optional[int]]]:
    """Grid combinations in file order (last axis fastest), each with each sample."""
    axes = study.active_axes()
    grid = [_pinned(study, name, _grid_picks(name, axis, study.space_source)) for name, axis in axes.items() if not axis.is_sampled]
    samples: list[list[_Pick]] = [[]]
    if study.search.mode == "random":
        samples = _sample_picks(axes, study.num_samples_for(budget) or 0, study.search.seed, study.space_source)
    for combo in itertools.product(*grid):
        for index, sample in enumerate(samples):
            yield list(combo) + sample, (index if study.search.mode == "random" else None)


def _pinned(study: Study, axis: str, picks: list[_Pick]) -> list[_Pick]:
    """A bundled axis pinned by an override (axis: label) keeps that item only."""
    label = study.overrides.get(axis) if axis not in PARAM_FIELDS else None
    return [p for p in picks if p.label == label] if label is not None else picks


def _grid_picks(name: str, axis: AxisSpec, src: Source) -> list[_Pick]:
    path = key_join(key_join("axes", name), axis.kind)
    picks = []
    for index, item in enumerate(axis.values):
        item_path = key_join(path, index)
        if axis.is_bundle:
            params = {k: v for k, v in item.items() if k != LABEL_KEY}
            label = bundle_label(item)
            paths = {k: key_join(item_path, k) for k in params}
            picks.append(_Pick(name, label, params, paths, label))
        else:
            picks.append(_Pick(name, format_scalar(item), {name: item}, {name: item_path}))
    return picks


def _sample_picks(axes: Mapping[str, AxisSpec], count: int, seed: int, src: Source) -> list[list[_Pick]]:
    """`count` points from the sampled axes; axes drawn in file order per point, so
    the same seed gives the same points."""
    rng = np.random.default_rng(seed)
    sampled = [(name, axis) for name, axis in axes.items() if axis.is_sampled]
    points = []
    for _ in range(count):
        point = []
        for name, axis in sampled:
            value = _draw(axis, rng)
            point.append(_Pick(name, format_scalar(value), {name: value}, {name: key_join(key_join("axes", name), axis.kind)}))
        points.append(point)
    return points


def _draw(axis: AxisSpec, rng: np.random.Generator) -> Any:
    values = axis.values
    if axis.kind == "choice":
        return values[int(rng.integers(len(values)))]
    lo, hi = values
    if axis.kind == "randint":
        return int(rng.integers(lo, hi))  # hi excluded, as ray.tune.randint
    if axis.kind == "loguniform":
        value = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    else:
        value = float(rng.uniform(lo, hi))
    return min(max(value, lo), hi)  # exp(log(x)) can step one ulp outside


def _layered(study: Study, picks: Sequence[_Pick]) -> _Layers:
    """fixed < axes < overrides < checkpoint_every (budget and seed come later)."""
    layers = _Layers()
    space_src, src = study.space_source, study.source
    for name, value in study.search_space.fixed.items():
        layers.set(name, value, space_src, key_join("fixed", name))
    for pick in picks:
        for name, value in pick.values.items():
            layers.set(name, value, space_src, pick.paths[name])
    for name, value in study.overrides.items():
        if name in PARAM_FIELDS:  # other keys pin bundled axes (see _pinned)
            layers.set(name, value, src, key_join("overrides", name))
    if study.checkpoint_every is not None:
        layers.set("checkpoint_every", study.checkpoint_every, src, "checkpoint_every")
    return layers


def _excluded(space: SearchSpaceSpec, layers: _Layers, picks: Sequence[_Pick]) -> bool:
    labels = {p.axis: p.label for p in picks if p.label is not None}
    return any(_matches(entry, layers, labels) for entry in space.exclude)


def _matches(entry: Mapping[str, Any], layers: _Layers, labels: Mapping[str, str]) -> bool:
    for key, wanted in entry.items():
        if key == LABEL_KEY:
            if wanted not in labels.values():
                return False
        elif key in labels:
            if labels[key] != wanted:
                return False
        elif key not in PARAM_FIELDS or layers.get(key) != wanted:
            return False
    return True


def _apply_budget(study: Study, budget: str, layers: _Layers) -> None:
    """Budget values on top; schedules only where they are on (see schema docstring)."""
    src, path = study.source, key_join("budgets", budget)
    warmup_on = float(layers.get("warmup_epochs")) > 0
    anneal_on = bool(layers.get("kl_anneal_hold_steps") or layers.get("kl_anneal_steps"))
    for name, value in study.budget_params(budget).items():
        if (name in WARMUP_KEYS and not warmup_on) or (name in ANNEAL_KEYS and not anneal_on):
            continue
        layers.set(name, value, src, key_join(path, name))
    fraction = study.warmup_fraction_for(budget)
    if fraction is not None and warmup_on:
        epochs = int(layers.get("epochs"))
        layers.set("warmup_epochs", round(fraction * epochs, 6), src, key_join(path, "warmup_fraction"))


def _make_trial(
    study: Study,
    budget: str,
    picks: Sequence[_Pick],
    sample: Optional[int],
    seed: int,
    layers: _Layers,
    failures: dict[tuple[str, ...], list[Any]],
) -> Optional[TrialSpec]:
    axes = {p.axis: p.text for p in picks if sample is None or not _is_sampled_pick(study, p)}
    key_parts = [f"{k}={v}" for k, v in axes.items()]
    if sample is not None:
        key_parts.append(f"sample={sample}")
    key = ",".join(key_parts + [f"seed={seed}"])
    try:
        config = trial_config({**layers.values, "seed": seed})
    except ValidationError as err:
        for error in err.errors():
            failures.setdefault(_failure_key(error, layers), []).append(key)
        return None
    values = config.model_dump(mode="json")
    return TrialSpec(key, trial_id(study.name, key, values), _variant(picks), values, seed, budget, axes)


def _is_sampled_pick(study: Study, pick: _Pick) -> bool:
    axis = study.search_space.axes.get(pick.axis)
    return axis is not None and axis.is_sampled


def _variant(picks: Sequence[_Pick]) -> str:
    """The label of the axis named `variant`, else of every bundled axis ('/'-joined)."""
    labelled = [p for p in picks if p.label is not None]
    named = [p.label for p in labelled if p.axis == VARIANT_AXIS]
    return named[0] if named else "/".join(p.label for p in labelled if p.label)


def trial_id(study_name: str, trial_key: str, config: Mapping[str, Any]) -> str:
    """12 hex digits of sha256 over study, key and config: same spec, same id."""
    blob = json.dumps({"study": study_name, "key": trial_key, "config": config}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------------
# Invalid trials -> SpecErrors that point at the values responsible


def _failure_key(error: Mapping[str, Any], layers: _Layers) -> tuple[str, ...]:
    """(file, key path, value, message) of one pydantic error of one trial; trials
    failing the same way share a key, so one message covers them all."""
    loc = error["loc"]
    if loc:
        name = str(loc[0])
        message = field_message(name, error)
        names = [name]
    else:
        message = str(error["msg"]).removeprefix("Value error, ")
        names = _named_params(message, layers)
    explicit = [n for n in names if n in layers.origin]
    if not explicit:
        return ("", "(defaults)", format_value({n: layers.get(n) for n in names}), message, "")
    src, _ = layers.origin[explicit[0]]
    parts = []
    for name in explicit:
        other, path = layers.origin[name]
        full = other.path(path)
        parts.append(full if other.file == src.file else f"{full} ({other.file})")
    value = layers.get(names[0]) if len(names) == 1 else {n: layers.get(n) for n in names}
    first_path = src.path(layers.origin[explicit[0]][1])
    return (src.file, " + ".join(parts), format_value(value), message, str(src.line(first_path) or ""))


def _named_params(message: str, layers: _Layers) -> list[str]:
    """Params a cross-field message talks about ('inference=... needs depth >= 2');
    `kl_anneal_*` stands for every kl_anneal_ param."""
    found = []
    for name in PARAM_FIELDS:
        match = re.search(rf"\b{re.escape(name)}\b", message)
        if match:
            found.append((match.start(), name))
    for match in re.finditer(r"(\w+_)\*", message):
        found += [(match.start(), n) for n in PARAM_FIELDS if n.startswith(match.group(1)) and n in layers.values]
    return [name for _, name in sorted(set(found))]


def _failure_errors(failures: Mapping[tuple[str, ...], list[Any]]) -> list[SpecError]:
    errors = []
    for (file, path, value, message, line), keys in failures.items():
        more = f" and {len(keys) - 1} more" if len(keys) > 1 else ""
        hint = "; add an `exclude:` entry or change the values" if path != "(defaults)" else ""
        errors.append(SpecError(file or "(defaults)", path, value, f"{message} (trial {keys[0]}{more}){hint}", int(line) if line else None))
    return errors


# ---------------------------------------------------------------------------------
# Checks that need the trials


def trial_params(trial: TrialSpec) -> TrialParams:
    return TrialParams(trial.variant, TrialConfig.model_validate(trial.config).to_params())


def _check_scheduler(study: Study, trials: Sequence[TrialSpec]) -> list[SpecError]:
    scheduler = study.search.scheduler
    if scheduler is None or not trials:
        return []
    shortest = min(int(t.config["epochs"]) for t in trials)
    if scheduler.grace_period > shortest:
        return [study.source.error("search.scheduler.grace_period", scheduler.grace_period, f"longer than the shortest trial ({shortest} epochs in budget {trials[0].budget})")]
    return []


# ---------------------------------------------------------------------------------
# Optuna / Tune hand-off, cohorts, hashing


def tune_search_space(study: Study) -> dict[str, tuple[Any, ...]]:
    """The sampled axes as plain data for the runner to turn into Tune objects:
    ('uniform', lo, hi), ('loguniform', lo, hi), ('randint', lo, hi) (hi excluded),
    ('choice', [values]), and for grid axes ('grid', [values or variant labels])."""
    space: dict[str, tuple[Any, ...]] = {}
    for name, axis in study.active_axes().items():
        if axis.kind in ("uniform", "loguniform", "randint"):
            space[name] = (axis.kind, axis.values[0], axis.values[1])
        elif axis.is_bundle:
            space[name] = ("grid", [bundle_label(item) for item in axis.values])
        else:
            space[name] = (axis.kind, list(axis.values))
    return space


def trial_from_point(study: Study, point: Mapping[str, Any], seed: Optional[int] = None, budget: Optional[str] = None) -> TrialSpec:
    """The full trial for one point proposed by a searcher (optuna): axis -> value
    (a bundled axis takes a label). Raises SpecErrors if the point is excluded or the
    resulting config is invalid — the runner should end that trial as failed."""
    budget = _budget_name(study, budget)
    seed = study.seeds_for(budget)[0] if seed is None else seed
    picks = [_point_pick(name, axis, point, study.space_source) for name, axis in study.active_axes().items()]
    layers = _layered(study, picks)
    if _excluded(study.search_space, layers, picks):
        raise SpecErrors([study.space_source.error("exclude", dict(point), "the proposed point is excluded")])
    _apply_budget(study, budget, layers)
    failures: dict[tuple[str, ...], list[Any]] = {}
    trial = _make_trial(study, budget, picks, None, seed, layers, failures)
    if trial is None:
        raise SpecErrors(_failure_errors(failures))
    return trial


def _point_pick(name: str, axis: AxisSpec, point: Mapping[str, Any], src: Source) -> _Pick:
    if name not in point:
        raise KeyError(f"point has no value for axis {name!r}")
    value = point[name]
    if axis.is_bundle:
        picks = {p.label: p for p in _grid_picks(name, axis, src)}
        if value not in picks:
            raise KeyError(f"axis {name!r} has no variant labelled {value!r}")
        return picks[value]
    clean, message = check_param(name, value)
    if message:
        raise SpecErrors([src.error(key_join("axes", name), value, message)])
    return _Pick(name, format_scalar(clean), {name: clean}, {name: key_join(key_join("axes", name), axis.kind)})


def missing_init_from(trials: Sequence[TrialSpec], base: Optional[Path] = None) -> list[str]:
    """init_from checkpoints that do not exist (relative paths against `base`, default
    the working directory). Validation accepts them (a study may ship placeholders);
    a runner calls this to refuse to start rather than fail trial by trial."""
    base = base or Path.cwd()
    missing: dict[str, list[str]] = {}
    for trial in trials:
        path = trial.config.get("init_from")
        if path and "://" not in path and not (base / Path(path).expanduser()).is_file():
            missing.setdefault(path, []).append(trial.trial_key)
    return [f"init_from {path}: no such file (trial {keys[0]}{f' and {len(keys) - 1} more' if len(keys) > 1 else ''})" for path, keys in missing.items()]


def group_cohorts(trials: Sequence[TrialSpec], size: int) -> list[list[TrialSpec]]:
    """Trials that differ only in config.COHORT_VARYING keys (seed, rho, warm-up, ...)
    share an architecture and can train in one set of kernels; group them in file
    order, at most `size` per cohort."""
    if size < 1:
        raise ValueError(f"cohort size must be >= 1, got {size}")
    groups: dict[str, list[TrialSpec]] = defaultdict(list)
    for trial in trials:
        shared = {k: v for k, v in trial.config.items() if k not in COHORT_VARYING}
        groups[json.dumps(shared, sort_keys=True, default=str)].append(trial)
    return [members[i : i + size] for members in groups.values() for i in range(0, len(members), size)]


def resolved_dict(study: Study) -> dict[str, Any]:
    """The study as plain data with its search space inlined and only its budget kept:
    enough to rebuild its trials and report from MLflow alone."""
    budget = study.budget
    return {
        "name": study.name,
        "description": study.description,
        "search_space": study.search_space.to_dict(),
        "overrides": plain_values(study.overrides),
        "budgets": {budget: plain_values(study.budgets[budget])},
        "default_budget": budget,
        "seeds": list(study.seeds),
        "search": study.search.model_dump(mode="json"),
        "resources": study.resources.model_dump(mode="json"),
        "cohort": study.cohort.model_dump(mode="json") if study.cohort else None,
        "failure": study.failure.model_dump(mode="json"),
        "checkpoint_every": study.checkpoint_every,
        "report": study.report.model_dump(mode="json"),
    }


def resolved_yaml(study: Study) -> str:
    """resolved_dict as YAML (artifact study.yaml of the parent MLflow run);
    load_study on it gives the same trials and the same spec_hash."""
    header = f"# resolved study {study.name!r}, budget {study.budget!r}, spec_hash {spec_hash(study)}\n"
    return header + yaml.dump(resolved_dict(study), Dumper=_SpecDumper, sort_keys=False, allow_unicode=True, width=100)


class _SpecDumper(yaml.SafeDumper):
    """SafeDumper that writes short lists of scalars inline ([64, 32, 16]) as people do."""


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    flow = all(not isinstance(v, (dict, list)) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_SpecDumper.add_representer(list, _represent_list)


def spec_hash(study: Study) -> str:
    """sha256 of the canonical resolved study (key order and file layout do not count)."""
    blob = json.dumps(resolved_dict(study), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()

