"""Checks of a search space that need no expansion: params, axes, bundles, excludes.

`check_search_space` returns the space with every value normalised (one spelling of
each value for expansion and hashing). Imports vaelab.errors, schema, check_params,
wording and yaml_source.
"""

from __future__ import annotations

from typing import Any

from vaelab.errors import SpecError
from vaelab.studies.check_params import check_param, check_params
from vaelab.studies.schema import (
    LABEL_KEY,
    PARAM_FIELDS,
    AxisSpec,
    SearchSpaceSpec,
    bundle_label,
    bundle_params,
    format_scalar,
)
from vaelab.studies.wording import base_type, suggest
from vaelab.studies.yaml_source import Source, key_join


def check_search_space(space: SearchSpaceSpec, src: Source) -> tuple[SearchSpaceSpec, list[SpecError]]:
    """Check params, values and axes against TrialConfig; return the space with every
    value normalised (so expansion and hashing see one spelling of each value)."""
    errors: list[SpecError] = []
    fixed = check_params(space.fixed, "fixed", src, errors)
    axes = {name: _check_axis(name, axis, src, errors) for name, axis in space.axes.items()}
    checked = space.model_copy(update={"fixed": fixed, "axes": axes})
    _check_owners(checked, src, errors)
    exclude = [_check_exclude(i, entry, checked, src, errors) for i, entry in enumerate(space.exclude)]
    return checked.model_copy(update={"exclude": exclude}), errors


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
        clean = check_params(params, item_path, src, errors)
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
    base = base_type(name)
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
        params = bundle_params(axis) if axis.is_bundle else ({name} if name in PARAM_FIELDS else set())
        for param in sorted(params):
            if param in owner and owner[param] != name:
                errors.append(src.error(key_join("axes", name), param, f"{param} is also set by axis {owner[param]!r}"))
            owner.setdefault(param, name)
            if not axis.is_bundle and param in space.fixed:
                errors.append(src.error(key_join("fixed", param), space.fixed[param], f"{param} is also swept by axis {name!r}"))


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
                errors.append(src.error(key_path, value, f"no variant labelled {value!r}{suggest(str(value), known)}"))
            normalised[key] = value
            continue
        clean, message = check_param(str(key), value)
        if message:
            extra = f"; an exclude key is a trial param, `label` or a bundled axis ({', '.join(bundles)})" if key not in PARAM_FIELDS and bundles else ""
            errors.append(src.error(key_path, value if key in PARAM_FIELDS else key, message + extra))
        normalised[key] = clean
    return normalised
