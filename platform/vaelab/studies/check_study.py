"""Checks of a study that need no expansion: overrides, budgets, seeds, search mode, metric.

`check_study` returns the study with overrides and budgets normalised. Imports
vaelab.errors, schema, check_params, metric_names, wording and yaml_source.
"""

from __future__ import annotations

from typing import Any, Mapping

from vaelab.errors import MISSING, SpecError
from vaelab.studies.check_params import check_params
from vaelab.studies.metric_names import EPOCH_METRICS, EVAL_METRICS, layer_metric, metric_error
from vaelab.studies.schema import BUDGET_SPECIAL, AxisSpec, Study
from vaelab.studies.wording import suggest
from vaelab.studies.yaml_source import Source, key_join


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
    normalised = check_params(params, "overrides", src, errors)
    for axis in bundles:
        if axis in study.overrides:
            label, labels = study.overrides[axis], study.search_space.labels(axis)
            if label not in labels:
                errors.append(src.error(key_join("overrides", axis), label, f"no variant labelled {label!r}{suggest(str(label), labels)}; labels: {', '.join(labels)}"))
            normalised[axis] = label
    return normalised


def _check_budget(
    name: str, values: Mapping[str, Any], study: Study, src: Source, errors: list[SpecError]
) -> dict[str, Any]:
    path = key_join("budgets", name)
    params = {k: v for k, v in values.items() if k not in BUDGET_SPECIAL}
    normalised = check_params(params, path, src, errors)
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
        errors.append(study.source.error("default_budget", study.default_budget, f"unknown budget{suggest(str(study.default_budget), study.budgets)}; budgets: {known}"))


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
    elif search.scheduler is not None and search.metric not in EPOCH_METRICS | EVAL_METRICS and not layer_metric(search.metric):
        errors.append(src.error("search.metric", search.metric, "ASHA compares trials during training; this metric is only computed on the last epoch"))
    if needs_metric and search.direction is None:
        errors.append(src.error("search.direction", MISSING, f"say whether {search.metric} is better high (max) or low (min)"))
    return errors
