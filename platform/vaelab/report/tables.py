"""Ablation tables: rows x columns of a final metric, mean ± std over seeds, paper beside.

For a `TableSpec`, trials matching `where` are pivoted on its `rows` and `columns` axes
(a param, `variant` — the variant label, derived from the params when a trial has none —
or, for rows, `layer`, which reads `<value>_{i}` per layer plus a total row).

- Only finished trials with a finite value are aggregated: mean, sample std (ddof=1,
  shown for n >= 2) and n. Diverged, failed, early-stopped (ASHA) and still-running
  trials are never dropped silently: each cell says how many it holds, and the table
  lists them by id.
- The best mean per row (by `better`) is marked bold when a row has two or more cells.
- With `paper:` set, each cell carries the matching number of paper_results.csv (matched
  on the cell's variant label and latent_dims, and the metric; per-layer tables use
  `<paper.metric>_{layer}` and, for the total row, the metric without `_layer`).
- Rows and columns are in natural order (see `report.order`) unless `row_order` /
  `column_order` name them; an axis's values share one format (1e-08 beside 1e-04, not
  beside 0.0001).
- A table of counts (active units) shows whole means as integers and other means and
  stds with one decimal, as the papers print counts; other tables two decimals.
- A test_ll_iw table's title follows `eval_iw`: the run's own bound (an `L_K`, or else
  the first `L_<n>` outside parentheses) reads `L_<eval_iw>`. A paper's K, written in
  parentheses ('(paper: L_5000, ...)'), and the ELBO `L_1` are never rewritten.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import pandas as pd

from vaelab.config import TrialConfig
from vaelab.report import order
from vaelab.report.paper import format_paper, paper_value, total_metric
from vaelab.report.spec import TableSpec

TOTAL = "total"
IW_METRIC = "test_ll_iw"  # L_K with K = eval_iw
COUNT_METRICS = ("active_units",)  # and their per-layer family active_units_layer
BOUND = re.compile(r"\bL_(K|\d+)\b")  # a bound written L_K, L_1, L_5000
NOT_FINISHED = ("diverged", "failed", "stopped", "running")  # shown in this order
# params that never make two trials different experiments
BOOKKEEPING_PARAMS = frozenset(
    {"seed", "data_dir", "device", "compile", "checkpoint_every", "eval_batch_size", "init_from"}
)
_STATUS_ORDER = {status: k for k, status in enumerate(NOT_FINISHED)}


@dataclass(frozen=True)
class Cell:
    """One table cell: finished trials' values and the trials it could not use."""

    values: tuple[float, ...]
    not_finished: tuple[tuple[str, int], ...] = ()  # (status, count)
    missing: int = 0  # finished trials without a finite value
    paper: float | None = None
    whole: bool = False  # a count (COUNT_METRICS): whole means print as integers

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.values)) if self.values else None

    @property
    def std(self) -> float | None:
        return float(np.std(self.values, ddof=1)) if len(self.values) >= 2 else None

    def mean_text(self) -> str:
        return "—" if self.mean is None else number_text(self.mean, self.whole)

    def std_text(self) -> str:
        return "" if self.std is None else number_text(self.std, self.whole, spread=True)

    def ours(self) -> str:
        """'-85.10 ± 0.30' (or '-85.10', or '—' without values); counts read '32', not '32.00'."""
        if self.mean is None or self.std is None or (self.std == 0 and self.whole):
            return self.mean_text()
        return f"{self.mean_text()} ± {self.std_text()}"

    def counts(self) -> str:
        """'(n=2)', '(n=1; 1 diverged)', '(n=0; 1 failed, 1 no value)'."""
        extra = [f"{count} {status}" for status, count in self.not_finished]
        if self.missing:
            extra.append(f"{self.missing} no value")
        return f"(n={self.n}{'; ' + ', '.join(extra) if extra else ''})"

    def paper_text(self) -> str:
        return f"paper {format_paper(self.paper)}" if self.paper is not None else ""


@dataclass
class TableResult:
    spec: TableSpec
    rows: list[Any]
    columns: list[Any]
    cells: dict[tuple[Any, Any], Cell]
    best: set[tuple[Any, Any]] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)
    eval_iw: tuple[int, ...] = ()  # the K of test_ll_iw = L_K in the table's trials

    @property
    def title(self) -> str:
        """The spec's title, the run's own L_K in a test_ll_iw table reading L_<eval_iw>."""
        title = self.spec.title or self.spec.name
        if self.spec.value != IW_METRIC or len(self.eval_iw) != 1:
            return title
        return own_bound(title, self.eval_iw[0])

    def caption(self) -> str:
        """What the table shows, in one line."""
        spec = self.spec
        rows = "layer (1 = bottom) + total" if spec.rows == "layer" else spec.rows
        value = f"{spec.value}_{{i}}" if spec.rows == "layer" else spec.value
        parts = [f"{value}: rows = {rows}, columns = {spec.columns}"]
        if spec.where:
            parts.append("where " + ", ".join(f"{k}={order.display(v)}" for k, v in spec.where.items()))
        parts.append(f"mean ± std over seeds of finished trials; bold = best per row ({spec.better} is better)")
        if spec.paper is not None:
            ref = spec.paper
            parts.append(f"paper = {ref.source} {ref.table} ({ref.dataset}, {ref.metric}, finetune {ref.finetune})")
        return "; ".join(parts)

    def cell(self, row: Any, column: Any) -> Cell | None:
        return self.cells.get((row, column))

    def text(self, row: Any, column: Any) -> str:
        """The plain-text cell, e.g. '-85.10 ± 0.30 (n=2) · paper -82.14'."""
        cell = self.cells.get((row, column))
        if cell is None:
            return ""
        parts = [f"{cell.ours()} {cell.counts()}", cell.paper_text()]
        return " · ".join(p for p in parts if p)


def own_bound(title: str, k: int) -> str:
    """`title` with the run's own importance-weighted bound written L_k.

    An `L_K` placeholder is the run's own wherever it is; without one, the first `L_<n>`
    (n ≥ 2) outside parentheses is. A paper's K sits in parentheses and L_1 is the ELBO:
    neither is the run's K."""
    if any(m.group(1) == "K" for m in BOUND.finditer(title)):
        return BOUND.sub(lambda m: f"L_{k}" if m.group(1) == "K" else m.group(0), title)
    for match in BOUND.finditer(title):
        before = title[: match.start()]
        if int(match.group(1)) >= 2 and before.count("(") == before.count(")"):
            return f"{before}L_{k}{title[match.end():]}"
    return title


def number_text(value: float, whole: bool, spread: bool = False) -> str:
    """A mean or std as the tables print it: counts as integers (a mean between two with
    one decimal), other values with two decimals (one from 1000 up)."""
    if whole:
        return str(int(value)) if float(value).is_integer() and not spread else f"{value:.1f}"
    return f"{value:.1f}" if abs(value) >= 1000 else f"{value:.2f}"


def axis_texts(values: Iterable[Any]) -> list[str]:
    """How an axis's values are shown, in one format: when one number needs an exponent,
    every number of the axis is written with one ('1e-08', '1e-04', not '0.0001')."""
    values = list(values)
    shown = [order.display(v) for v in values]
    numbers = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if len(numbers) != len(values) or not any("e" in text for text in shown):
        return shown
    digits = next((d for d in range(7) if all(float(f"{x:.{d}e}") == x for x in numbers)), 6)
    return [f"{x:.{digits}e}" for x in numbers]


# --------------------------------------------------------------------------- building


def build_tables(specs: Iterable[TableSpec], trials: pd.DataFrame) -> list[TableResult]:
    return [build_table(spec, trials) for spec in specs]


def build_table(spec: TableSpec, trials: pd.DataFrame) -> TableResult:
    """Aggregate `trials` (a trials frame with a `label` column) into one table."""
    problems = _spec_problems(spec, trials)
    if problems:
        return TableResult(spec, [], [], {}, notes=problems)
    subset = trials[_where_mask(spec, trials)]
    if spec.rows == "layer":
        long = _per_layer_long(spec, subset)
    else:
        long = _plain_long(spec, subset)
    result = _pivot(spec, long, spec.value.startswith(COUNT_METRICS))
    if "eval_iw" in subset.columns:
        result.eval_iw = tuple(sorted({int(k) for k in subset["eval_iw"].dropna()}))
    result.notes = _notes(spec, subset, long) + _paper_notes(spec, result) + _budget_notes(spec, result, subset)
    return result


def axis_column(axis: str) -> str:
    return "label" if axis == "variant" else axis


def _spec_problems(spec: TableSpec, trials: pd.DataFrame) -> list[str]:
    problems = []
    axes = [("columns", spec.columns)] + ([] if spec.rows == "layer" else [("rows", spec.rows)])
    for key, axis in axes:
        if axis_column(axis) not in trials.columns:
            problems.append(f"{key}: {axis!r} is neither a param nor `variant`; the table is empty")
    for key in spec.where:
        if axis_column(key) not in trials.columns:
            problems.append(f"where: {key!r} is not a param; the table is empty")
    if spec.rows == "layer" and not _layer_columns(spec.value, trials):
        problems.append(f"no trial logged a per-layer metric {spec.value}_{{i}}")
    elif spec.rows != "layer" and spec.value not in trials.columns:
        problems.append(f"no trial logged the metric {spec.value!r}")
    return problems


def _where_mask(spec: TableSpec, trials: pd.DataFrame) -> pd.Series:
    mask = pd.Series(True, index=trials.index)
    for key, wanted in spec.where.items():
        column = trials[axis_column(key)]
        mask &= column.map(lambda value, w=wanted: matches(value, w)).astype(bool)
    return mask


def matches(value: Any, wanted: Any) -> bool:
    """Whether a trial's param value equals a `where` value (1 == 1.0, '64-32' == '64-32')."""
    value = plain(value)
    if isinstance(value, bool) or isinstance(wanted, bool):
        return isinstance(value, bool) and isinstance(wanted, bool) and value == wanted
    if isinstance(value, (int, float)) and isinstance(wanted, (int, float)):
        return math.isclose(value, wanted, rel_tol=1e-9, abs_tol=1e-12)
    return order.display(value) == order.display(wanted)


def plain(value: Any) -> Any:
    """numpy / pandas scalars -> Python scalars; missing -> None."""
    if value is None or value is pd.NA:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _layer_columns(prefix: str, trials: pd.DataFrame) -> dict[int, str]:
    pattern = re.compile(rf"^{re.escape(prefix)}_(\d+)$")
    found = {int(m.group(1)): c for c in trials.columns if (m := pattern.match(str(c)))}
    return dict(sorted(found.items()))


# A "long" frame: one row per (trial, row key, column key) with the value (NaN if none).
_LONG_COLUMNS = ["trial_id", "status", "row", "column", "value", "metric", "label", "latent_dims", "seed"]


def _context(spec: TableSpec, subset: pd.DataFrame) -> pd.DataFrame:
    """The per-trial columns every long row carries."""
    return pd.DataFrame(
        {
            "trial_id": subset["trial_id"],
            "status": subset["status"],
            "column": subset[axis_column(spec.columns)].map(plain),
            "label": subset["label"],
            "latent_dims": subset["latent_dims"] if "latent_dims" in subset else None,
            "seed": subset["seed"] if "seed" in subset else None,
        },
        index=subset.index,
    )


def _plain_long(spec: TableSpec, subset: pd.DataFrame) -> pd.DataFrame:
    long = _context(spec, subset)
    long["row"] = subset[axis_column(spec.rows)].map(plain)
    long["value"] = subset[spec.value].astype(float)
    long["metric"] = spec.value
    return long.reindex(columns=_LONG_COLUMNS)


def _per_layer_long(spec: TableSpec, subset: pd.DataFrame) -> pd.DataFrame:
    """Rows 1..L from `<value>_{i}` (layers a model lacks are skipped) plus a total row."""
    layers = _layer_columns(spec.value, subset)
    if "depth" in subset:
        depth = subset["depth"].fillna(max(layers))
    else:
        depth = pd.Series(max(layers), index=subset.index)
    frames = []
    for layer, column in layers.items():
        present = depth >= layer  # a shallower model has no such layer: not a missing value
        frame = _context(spec, subset[present])
        frame["row"], frame["metric"] = layer, column
        frame["value"] = subset.loc[present, column].astype(float)
        frames.append(frame)
    frames.append(_total_rows(spec, subset, layers, depth))
    return pd.concat(frames, ignore_index=True).reindex(columns=_LONG_COLUMNS)


def _total_rows(
    spec: TableSpec, subset: pd.DataFrame, layers: dict[int, str], depth: pd.Series
) -> pd.DataFrame:
    """Per trial, the sum over its layers; NaN when one of its layers has no value."""
    per_layer = subset[list(layers.values())].astype(float).to_numpy()  # (trials, L)
    within = np.stack([(depth >= layer).to_numpy() for layer in layers], axis=1)
    incomplete = (np.isnan(per_layer) & within).any(axis=1)
    totals = np.where(within, np.nan_to_num(per_layer), 0.0).sum(axis=1)
    frame = _context(spec, subset)
    frame["row"], frame["metric"] = TOTAL, total_metric(spec.value)
    frame["value"] = np.where(incomplete, np.nan, totals)
    return frame


def _pivot(spec: TableSpec, long: pd.DataFrame, whole: bool) -> TableResult:
    row_axis = "layer" if spec.rows == "layer" else spec.rows
    rows = _row_keys(spec, long, row_axis)
    columns = order.ordered(spec.columns, [plain(v) for v in long["column"]], spec.column_order)
    cells = {}
    for (row, column), group in long.groupby(["row", "column"], sort=False, dropna=False):
        cells[(plain(row), plain(column))] = _cell(spec, group, whole)
    result = TableResult(spec, rows, columns, cells)
    result.best = _best(spec, result)
    return result


def _row_keys(spec: TableSpec, long: pd.DataFrame, axis: str) -> list[Any]:
    values = [plain(v) for v in long["row"]]
    if axis != "layer":
        return order.ordered(axis, values, spec.row_order)
    layers = sorted({v for v in values if v != TOTAL})
    return order.ordered("layer", layers, spec.row_order) + ([TOTAL] if layers else [])


def _cell(spec: TableSpec, group: pd.DataFrame, whole: bool) -> Cell:
    finished = group[group["status"] == "finished"]
    values = tuple(float(v) for v in finished["value"] if v is not None and np.isfinite(v))
    counts = Counter(s for s in group["status"] if s != "finished")
    not_finished = tuple(sorted(counts.items(), key=lambda kv: _STATUS_ORDER.get(kv[0], 9)))
    return Cell(
        values=values,
        not_finished=not_finished,
        missing=len(finished) - len(values),
        paper=_paper(spec, group),
        whole=whole,
    )


def _paper(spec: TableSpec, group: pd.DataFrame) -> float | None:
    if spec.paper is None:
        return None
    labels = set(group["label"].dropna())
    dims = {str(d) for d in group["latent_dims"].dropna()}
    metrics = set(group["metric"])
    if len(labels) != 1 or len(dims) != 1 or len(metrics) != 1:
        return None  # the cell pools models the paper reports separately
    if spec.rows == "layer":
        row = group["row"].iloc[0]
        metric = total_metric(spec.paper.metric) if row == TOTAL else f"{spec.paper.metric}_{row}"
    else:
        metric = spec.paper.metric
    return paper_value(spec.paper, labels.pop(), dims.pop(), metric)


def _best(spec: TableSpec, result: TableResult) -> set[tuple[Any, Any]]:
    best: set[tuple[Any, Any]] = set()
    for row in result.rows:
        means = {
            (row, col): cell.mean
            for col in result.columns
            if (cell := result.cells.get((row, col))) is not None and cell.mean is not None
        }
        if len(means) < 2:
            continue
        target = max(means.values()) if spec.better == "higher" else min(means.values())
        best |= {key for key, mean in means.items() if math.isclose(mean, target, rel_tol=1e-12)}
    return best


# --------------------------------------------------------------------------- notes


def _notes(spec: TableSpec, subset: pd.DataFrame, long: pd.DataFrame) -> list[str]:
    notes = []
    if subset.empty:
        where = ", ".join(f"{k}={order.display(v)}" for k, v in spec.where.items())
        notes.append(f"no trial matches{' where ' + where if where else ''}")
    notes += _status_notes(spec, subset)
    notes += _missing_notes(spec, long)
    mixed = _mixed_params(spec, subset)
    if mixed:
        notes.append(
            "cells pool trials that differ in more than the seed: "
            + ", ".join(mixed)
            + " (add them to `where` to separate)"
        )
    return notes


def _status_notes(spec: TableSpec, subset: pd.DataFrame) -> list[str]:
    """'2 trials diverged (not in n): t3 (...); t9 (...)', one line per status."""
    present = set(subset["status"]) - {"finished"}
    notes = []
    for status in sorted(present, key=lambda s: (_STATUS_ORDER.get(s, len(_STATUS_ORDER)), s)):
        chosen = subset[subset["status"] == status]
        several = len(chosen) > 1
        if status == "running":
            verb = "are still running" if several else "is still running"
        elif status == "stopped":
            verb = "stopped early"
        else:
            verb = status
        who = "; ".join(describe_trial(row, spec) for _, row in chosen.iterrows())
        notes.append(f"{len(chosen)} {'trials' if several else 'trial'} {verb} (not in n): {who}")
    return notes


def _missing_notes(spec: TableSpec, long: pd.DataFrame) -> list[str]:
    finished = long[(long["status"] == "finished") & ~np.isfinite(long["value"].astype(float))]
    if finished.empty:
        return []
    ids = sorted(set(finished["trial_id"]), key=order.natural_key)
    return [f"{len(ids)} finished trial(s) without a finite {spec.value}: {', '.join(ids)}"]


def _paper_notes(spec: TableSpec, result: TableResult) -> list[str]:
    if spec.paper is None or not result.cells or any(c.paper is not None for c in result.cells.values()):
        return []
    ref = spec.paper
    return [
        f"paper_results.csv has no {ref.source} {ref.table} {ref.dataset} {ref.metric} number for any "
        "cell: check the variant labels (paper.variant_map maps ours to the paper's) and latent_dims"
    ]


def _budget_notes(spec: TableSpec, result: TableResult, subset: pd.DataFrame) -> list[str]:
    """Say what a paper number beside ours means when the trials trained less than the
    papers did (their settings are TrialConfig's defaults), and which K test_ll_iw used."""
    notes = []
    if spec.value == "test_ll_iw" and result.eval_iw:
        notes.append(f"test_ll_iw = L_K with K = {', '.join(map(str, result.eval_iw))} (eval_iw)")
    if spec.paper is None or not any(c.paper is not None for c in result.cells.values()) or "epochs" not in subset:
        return notes
    epochs = sorted({int(e) for e in subset["epochs"].dropna()})
    paper_epochs = int(TrialConfig.model_fields["epochs"].default)
    if epochs and max(epochs) < paper_epochs:
        notes.append(
            f"paper numbers are after the papers' {paper_epochs} epochs (K = 5000); these trials trained "
            f"{'/'.join(map(str, epochs))} epochs, so they are context, not a target: compare with the "
            "`paper` budget's report")
    return notes


def describe_trial(row: pd.Series, spec: TableSpec) -> str:
    """'t7 (VAE+BN, latent_dims=64-32, seed=2)'."""
    keys = [k for k in (spec.columns, spec.rows, "latent_dims", "seed") if k not in ("layer", "variant")]
    parts = [str(row["label"])] + [
        f"{k}={order.display(plain(row[k]))}" for k in dict.fromkeys(keys) if k in row.index
    ]
    return f"{row['trial_id']} ({', '.join(parts)})"


def _mixed_params(spec: TableSpec, subset: pd.DataFrame) -> list[str]:
    from vaelab.config import TrialConfig  # pydantic only

    axes = {spec.rows, spec.columns, *spec.where, "variant"}
    finished = subset[subset["status"] == "finished"]
    if finished.empty:
        return []
    keys = [axis_column(spec.columns)] + ([] if spec.rows == "layer" else [axis_column(spec.rows)])
    mixed = []
    for name in TrialConfig.model_fields:
        if name in BOOKKEEPING_PARAMS or name in axes or name not in finished.columns:
            continue
        per_cell = finished.groupby(keys, dropna=False)[name].nunique(dropna=False)
        if (per_cell > 1).any():
            mixed.append(name)
    return mixed
