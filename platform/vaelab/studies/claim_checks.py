"""Checks of a study's `report.claims` against the trials its budget expands to.

A claim may only name a reported metric (a final or evaluation metric, or a per-layer
one the deepest model has), params or `variant` as `axis` / `per` / `where`, and levels
some trial of this budget has: a claim about a variant, depth or ρ the grid lacks can
never be tested, so validation refuses it. Dimensions pinned by overrides (e.g. a CLI
--set) are exempt from "some trial has this value", as for tables (schema.check_report).
"""

from __future__ import annotations

from typing import Any

from vaelab.config import MAX_DEPTH
from vaelab.errors import SpecError
from vaelab.report.spec import ClaimSpec, ReportSpec
from vaelab.studies.schema import (
    PARAM_FIELDS,
    Source,
    TrialParams,
    _same,
    _suggest,
    format_scalar,
    key_join,
    metric_error,
)


def check_claims(
    report: ReportSpec, trials: list[TrialParams], src: Source, pinned: frozenset[str] = frozenset()
) -> list[SpecError]:
    errors: list[SpecError] = []
    names: set[str] = set()
    for index, claim in enumerate(report.claims):
        path = key_join("report.claims", index)
        if claim.name in names:
            errors.append(src.error(key_join(path, "name"), claim.name, "two claims have this name"))
        names.add(claim.name)
        errors += _check_claim(claim, path, trials, src, pinned)
    return errors


def _check_claim(claim: ClaimSpec, path: str, trials: list[TrialParams], src: Source, pinned: frozenset[str]) -> list[SpecError]:
    errors: list[SpecError] = []
    depth = max((int(t.params.get("depth", 0)) for t in trials), default=MAX_DEPTH)
    message = metric_error(claim.metric, max(depth, 1))
    if message:
        errors.append(src.error(key_join(path, "metric"), claim.metric, message))
    dims = [("per", claim.per)] + ([("axis", claim.axis)] if claim.a is not None else [])
    dims += [(key_join("where", key), key) for key in claim.where]
    for key, name in dims:
        if name is not None and name != "variant" and name not in PARAM_FIELDS:
            errors.append(src.error(key_join(path, key), name, f"not a trial param{_suggest(name, list(PARAM_FIELDS) + ['variant'])}: use a param or variant"))
    if claim.per is not None and claim.per == claim.axis and claim.a is not None:
        errors.append(src.error(key_join(path, "per"), claim.per, "per and axis are the same dimension"))
    if errors:
        return errors
    selected = [t for t in trials if all(_same(t.value(k), v) for k, v in claim.where.items())]
    if claim.where and not selected and not pinned & set(claim.where):
        errors.append(src.error(key_join(path, "where"), claim.where, "matches no trial of this budget"))
        return errors
    if claim.a is not None:
        levels = [("a", claim.a)] + [(key_join("b", k), b) for k, b in enumerate(claim.b)]
        errors += _check_levels(claim.axis, levels, path, selected, src, pinned)
    if claim.per is not None:
        errors += _check_levels(claim.per, [(key_join("levels", k), v) for k, v in enumerate(claim.levels)], path, selected, src, pinned)
    return errors


def _check_levels(dim: str, levels: list[tuple[str, Any]], path: str, trials: list[TrialParams], src: Source, pinned: frozenset[str]) -> list[SpecError]:
    if dim in pinned or not trials:
        return []
    present = sorted({format_scalar(t.value(dim)) for t in trials})
    errors = []
    for key, level in levels:
        if not any(_same(t.value(dim), level) for t in trials):
            shown = format_scalar(level)
            errors.append(src.error(key_join(path, key), level, f"no trial of this budget has {dim}={shown}{_suggest(shown, present)}; values: {', '.join(present)}"))
    return errors
