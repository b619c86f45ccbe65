"""Checks of a study's `report:` (tables and claims) against the trials its budget expands to.

Called by expand.py with the expanded trials' params; what a table or claim names must
exist among them, and paper references must name rows of paper_results.csv. Imports
vaelab.config, vaelab.errors, report.paper (the published numbers), report.spec, schema, metric_names, wording and yaml_source.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

from vaelab.config import MAX_DEPTH
from vaelab.errors import SpecError
from vaelab.report.paper import paper_results
from vaelab.report.spec import ClaimSpec, ReportSpec, TableSpec, exact_p_floor, switch_level
from vaelab.studies.metric_names import LAYER_FAMILIES, metric_error
from vaelab.studies.schema import PARAM_FIELDS, Study, bundle_params, format_scalar
from vaelab.studies.wording import suggest
from vaelab.studies.yaml_source import Source, key_join

TABLE_PSEUDO_DIMS = frozenset({"variant", "layer"})


# ---------------------------------------------------------------------------------
# Table checks (given the expanded trials' params)


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
            pinned |= {"variant"} | bundle_params(study.search_space.axes[axis])
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
            errors.append(src.error(key_join(path, key), name, f"unknown table dimension{suggest(name, list(PARAM_FIELDS) + ['variant', 'layer'])}: use a trial param, variant or layer"))
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
            errors.append(src.error(key_join(key_join(path, "where"), key), value, f"unknown param{suggest(key, PARAM_FIELDS)}"))
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
            errors.append(src.error(key_join(path, index), item, f"no trial has {dim}={shown}{suggest(shown, present)}; values: {', '.join(sorted(present))}"))


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
        if r.source == ref.source and r.table == ref.table and r.dataset == ref.dataset and r.finetune == ref.finetune
        and (r.metric == ref.metric or r.metric.startswith(ref.metric + "_"))
    ]
    if not rows:
        wanted = {"source": ref.source, "table": ref.table, "dataset": ref.dataset, "metric": ref.metric, "finetune": ref.finetune}
        return [src.error(path, wanted, "no row of paper_results.csv matches")]
    errors: list[SpecError] = []
    datasets = {str(t.params.get("dataset")) for t in trials}
    if trials and ref.dataset not in datasets and "dataset" not in pinned:
        errors.append(src.error(key_join(path, "dataset"), ref.dataset, f"the table's trials train on {', '.join(sorted(datasets))}"))
    labels = {t.variant for t in trials}
    paper_variants = {r.variant for r in rows}
    for ours, theirs in getattr(ref, "variant_map", {}).items():
        map_path = key_join(key_join(path, "variant_map"), ours)
        if trials and ours not in labels and "variant" not in pinned:
            errors.append(src.error(map_path, ours, f"no trial has variant {ours!r}{suggest(ours, labels)}"))
        if theirs not in paper_variants:
            errors.append(src.error(map_path, theirs, f"not a variant of this paper table: {', '.join(sorted(paper_variants))}"))
    return errors


# ---------------------------------------------------------------------------------
# Claim checks (given the expanded trials' params)


def check_claims(
    report: ReportSpec, trials: list[TrialParams], src: Source, pinned: frozenset[str] = frozenset()
) -> list[SpecError]:
    """A claim may only name a reported metric (a final or evaluation metric, or a
    per-layer one the deepest model has), params or `variant` as `axis` / `per` /
    `where`, and levels some trial of this budget has: a claim about a variant, depth or
    ρ the grid lacks can never be tested, so validation refuses it. Dimensions pinned by
    overrides (e.g. a CLI --set) are exempt from "some trial has this value", as for
    tables (check_report)."""
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
            errors.append(src.error(key_join(path, key), name, f"not a trial param{suggest(name, list(PARAM_FIELDS) + ['variant'])}: use a param or variant"))
    if claim.per is not None and claim.per == claim.axis and claim.a is not None:
        errors.append(src.error(key_join(path, "per"), claim.per, "per and axis are the same dimension"))
    if errors:
        return errors
    selected = [t for t in trials if all(_level_same(t.value(k), v) for k, v in claim.where.items())]
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
    errors = _check_switch(dim, levels, path, trials, src)
    if errors:
        return errors
    present = sorted({format_scalar(t.value(dim)) for t in trials})
    for key, level in levels:
        if not any(_level_same(t.value(dim), level) for t in trials):
            shown = format_scalar(level)
            errors.append(src.error(key_join(path, key), level, f"no trial of this budget has {dim}={shown}{suggest(shown, present)}; values: {', '.join(present)}{_switch_hint(dim, level, trials)}"))
    return errors


def _level_same(actual: Any, wanted: Any) -> bool:
    """`_same` for a claim's levels: `on` / `off` (report.spec.switch_level) match a
    parameter's non-zero / zero values (true / false for a boolean one)."""
    switch = switch_level(wanted)
    if switch is not None and isinstance(actual, (int, float)):  # bool is an int: True is non-zero
        return (actual != 0) == switch
    return _same(actual, wanted)


def _check_switch(dim: str, levels: list[tuple[str, Any]], path: str, trials: list[TrialParams], src: Source) -> list[SpecError]:
    """`on` / `off` only where the trials' values are numbers or booleans."""
    other = sorted({format_scalar(t.value(dim)) for t in trials if not isinstance(t.value(dim), (int, float))})
    if not other:
        return []
    return [src.error(key_join(path, key), level,
                      f"`on` / `off` name the non-zero / zero values of a numeric (or boolean) parameter; "
                      f"{dim} has {', '.join(other)}")
            for key, level in levels if switch_level(level) is not None]


def _switch_hint(dim: str, level: Any, trials: list[TrialParams]) -> str:
    """For a non-zero number of a numeric parameter: `on` names it in every budget."""
    numeric = all(isinstance(t.value(dim), (int, float)) and not isinstance(t.value(dim), bool) for t in trials)
    if not numeric or isinstance(level, bool) or not isinstance(level, (int, float)) or level == 0:
        return ""
    return (f"; a budget rescales lengths such as {dim} but never turns them on or off: `on` names every "
            f"trial with a non-zero {dim}, `off` those with 0, in every budget")


# ---------------------------------------------------------------------------------
# Claims no outcome can decide (warnings of `vaelab validate`, given a budget's trials)


def permutation_warnings(report: ReportSpec, trials: list[TrialParams]) -> list[str]:
    """Claims with `test: permutation` that can never hold with this budget's seeds.

    Each comparison is paired, or not, as report/claims.py pairs it when every trial
    finishes; its exact test's smallest p is `exact_p_floor` of its seeds. A claim that
    needs every comparison (combine: all) fails on its worst one, combine: any on its best."""
    warnings = []
    for index, claim in enumerate(report.claims):
        if claim.test != "permutation":
            continue
        floors = [_comparison_floor(a, b, report.alpha) for a, b in _claim_sides(claim, trials)]
        if not floors:
            continue
        floor, how, needed = (max if claim.combine == "all" else min)(floors)
        if floor >= report.alpha:
            warnings.append(
                f"report.claims[{index}] ({claim.name}): test: permutation can never reach α = {report.alpha:g} "
                f"with this budget's seeds: the exact test's smallest p is {how} = {floor:.3g}; "
                f"it needs {needed} (or test: t)")
    return warnings


def _claim_sides(claim: ClaimSpec, trials: list[TrialParams]) -> list[tuple[list[TrialParams], Optional[list[TrialParams]]]]:
    """(side a, side b) of each comparison; (cell, None) in the threshold form."""
    selected = [t for t in trials if all(_level_same(t.value(k), v) for k, v in claim.where.items())]
    cells = [selected]
    if claim.per is not None:
        values = _distinct(selected, claim.per)
        if claim.levels:
            values = [v for v in values if any(_level_same(v, w) for w in claim.levels)]
        cells = [[t for t in selected if _same(t.value(claim.per), v)] for v in values]
    if claim.threshold is not None:
        return [(cell, None) for cell in cells if cell]
    others = claim.b or [v for v in _distinct(selected, claim.axis) if not _level_same(v, claim.a)]
    sides = []
    for cell in cells:
        side_a = [t for t in cell if _level_same(t.value(claim.axis), claim.a)]
        for level in others:
            side_b = [t for t in cell if _level_same(t.value(claim.axis), level)]
            if side_a and side_b:
                sides.append((side_a, side_b))
    return sides


def _distinct(trials: list[TrialParams], dim: str) -> list[Any]:
    return list({format_scalar(t.value(dim)): t.value(dim) for t in trials}.values())


def _comparison_floor(a: list[TrialParams], b: Optional[list[TrialParams]], alpha: float) -> tuple[float, str, str]:
    """(smallest exact p, how it is computed, what would bring it below α)."""
    if b is None:
        return exact_p_floor(len(a)), f"2/2^{len(a)} over {len(a)} trials", f"{_fewest(alpha, True)} trials per cell"
    seeds_a, seeds_b = [t.params.get("seed") for t in a], [t.params.get("seed") for t in b]
    shared = set(seeds_a) & set(seeds_b)
    unique = len(set(seeds_a)) == len(seeds_a) and len(set(seeds_b)) == len(seeds_b)
    if unique and ((shared and set(seeds_a) == set(seeds_b)) or len(shared) >= 2):  # as claims.py pairs
        n = len(shared)
        return exact_p_floor(n), f"2/2^{n} over {n} paired seeds", f"{_fewest(alpha, True)} seeds"
    return (exact_p_floor(len(a), len(b)), f"2/C({len(a) + len(b)}, {len(a)}) unpaired",
            f"{_fewest(alpha, False)} trials per side")


def _fewest(alpha: float, sign_flips: bool) -> int:
    """The fewest seeds (per side when unpaired) whose exact floor is below α."""
    return next(n for n in range(1, 64) if exact_p_floor(n, None if sign_flips else n) < alpha)
