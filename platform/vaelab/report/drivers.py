"""What drives the metric: parameter importance (sampled studies) or marginal effects (grids).

- Sampled studies (search mode random / optuna): the finished trials are handed to an
  in-memory Optuna study and ranked by `optuna.importance.FanovaImportanceEvaluator`
  (fANOVA over a random forest fitted to the trials, fixed seed), beside a
  parallel-coordinates figure of every finished trial coloured by the metric.
- Grids: the marginal effect of each axis: the metric's mean at each level of the axis,
  averaged over the other axes and the seeds, minus the grand mean; the axis' spread is
  the range of those means. An unbalanced grid (a model missing at some level, e.g. a
  1-layer ladder) mixes effects, and the notes say where a level's n differs.

Axes are the variant label (when the study has one) and the TrialConfig params that vary
among finished trials, less seeds, bookkeeping, params the variant label implies
(inference, batch_norm, ...) and depth / hidden_dims when latent_dims tells them apart.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from vaelab.report import order
from vaelab.report.figures import varying_params
from vaelab.report.tables import plain

SAMPLED_MODES = frozenset({"random", "optuna"})
FANOVA = "fANOVA (optuna.importance.FanovaImportanceEvaluator, seed 0) over the finished trials"
MARGINAL = "marginal mean per level over the other axes and seeds, minus the grand mean"


@dataclass
class Drivers:
    metric: str
    kind: Literal["importance", "marginal"]
    method: str
    n_trials: int
    # importance: axis, importance (sums to 1); marginal: axis, level, n, mean, effect, spread
    table: pd.DataFrame
    notes: list[str] = field(default_factory=list)

    @property
    def title(self) -> str:
        return f"What drives {self.metric}: " + ("parameter importance" if self.kind == "importance" else "marginal effect of each axis")


def choose_metric(study_yaml: dict[str, Any], fallback: str) -> str:
    """The study's search.metric when it optimises one, else `fallback` (the first table's value)."""
    search = study_yaml.get("search") or {}
    metric = search.get("metric") if isinstance(search, dict) else None
    return str(metric) if metric else fallback


def is_sampled(study_yaml: dict[str, Any]) -> bool:
    search = study_yaml.get("search") or {}
    return isinstance(search, dict) and search.get("mode") in SAMPLED_MODES


def axes(finished: pd.DataFrame) -> list[str]:
    """The columns that tell trials apart ('label' for the variant), in TrialConfig order."""
    params = varying_params(finished)
    has_labels = "label" in finished and finished["label"].nunique() > 1
    if has_labels:
        by_label = finished.groupby("label", dropna=False)
        params = [p for p in params if by_label[p].nunique(dropna=False).max() > 1]
    if "latent_dims" in params:
        by_dims = finished.groupby("latent_dims", dropna=False)
        params = [p for p in params if p not in ("depth", "hidden_dims") or by_dims[p].nunique(dropna=False).max() > 1]
    return (["label"] if has_labels else []) + params


def what_drives(trials: pd.DataFrame, metric: str, sampled: bool) -> Optional[Drivers]:
    """None when no finished trial has the metric or nothing varies."""
    if metric not in trials:
        return None
    values = pd.to_numeric(trials[metric], errors="coerce").astype(float)
    finished = trials[(trials["status"] == "finished") & np.isfinite(values)]
    names = axes(finished)
    if finished.empty or not names:
        return None
    left = len(trials) - len(finished)
    notes = [f"{left} trial(s) not finished or without a finite {metric} are left out"] if left else []
    if sampled and len(finished) >= 3:
        return _importance(finished, metric, names, notes)
    return _marginal(finished, metric, names, notes)


def _marginal(finished: pd.DataFrame, metric: str, names: list[str], notes: list[str]) -> Drivers:
    grand = float(finished[metric].astype(float).mean())
    rows = []
    for name in names:
        column = finished[name].map(plain)
        means = finished.groupby(column, dropna=False)[metric].agg(["mean", "size"])
        spread = float(means["mean"].max() - means["mean"].min())
        for level in order.ordered("variant" if name == "label" else name, list(means.index)):
            mean, n = float(means.loc[level, "mean"]), int(means.loc[level, "size"])
            rows.append({"axis": _axis_name(name), "level": order.display(level), "n": n,
                         "mean": mean, "effect": mean - grand, "spread": spread})
        if means["size"].nunique() > 1:
            notes.append(f"{_axis_name(name)}: levels hold different numbers of trials ({_sizes(means)}); "
                         "their means average over different sets of the other axes")
    table = pd.DataFrame(rows, columns=["axis", "level", "n", "mean", "effect", "spread"])
    table = table.sort_values("spread", ascending=False, kind="stable").reset_index(drop=True)
    return Drivers(metric, "marginal", MARGINAL, len(finished), table, notes)


def _sizes(means: pd.DataFrame) -> str:
    return ", ".join(f"{order.display(level)}: {int(n)}" for level, n in means["size"].items())


def _axis_name(column: str) -> str:
    return "variant" if column == "label" else column


def _importance(finished: pd.DataFrame, metric: str, names: list[str], notes: list[str]) -> Drivers:
    import optuna  # loaded only for sampled studies

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    distributions = {_axis_name(n): _distribution(optuna, finished[n]) for n in names}
    study = optuna.create_study(direction="maximize")
    for _, row in finished.iterrows():
        params = {_axis_name(n): _param_value(row[n], distributions[_axis_name(n)]) for n in names}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=float(row[metric])))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna flags its evaluators as experimental
        ranked = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0), normalize=True
        )
    table = pd.DataFrame({"axis": list(ranked), "importance": [float(v) for v in ranked.values()]})
    return Drivers(metric, "importance", FANOVA, len(finished), table, notes)


def _distribution(optuna: Any, column: pd.Series) -> Any:
    values = [plain(v) for v in column]
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if numeric:
        low, high = min(values), max(values)
        if all(isinstance(v, int) for v in values):
            return optuna.distributions.IntDistribution(int(low), int(high))
        log = low > 0 and high / low >= 10.0  # learning rates and the like are sampled in log space
        return optuna.distributions.FloatDistribution(float(low), float(high), log=log)
    return optuna.distributions.CategoricalDistribution(sorted({order.display(v) for v in values}))


def _param_value(value: Any, distribution: Any) -> Any:
    value = plain(value)
    if type(distribution).__name__ == "CategoricalDistribution":
        return order.display(value)
    return value


# --------------------------------------------------------------------------- figure


def parallel_coordinates(trials: pd.DataFrame, drivers: Drivers) -> Figure:
    """One line per finished trial across the axes (most important first), coloured by the metric."""
    metric = drivers.metric
    values = pd.to_numeric(trials[metric], errors="coerce").astype(float)
    finished = trials[(trials["status"] == "finished") & np.isfinite(values)]
    columns = [("label" if a == "variant" else a) for a in drivers.table["axis"]] + [metric]
    scaled, ticks = zip(*(_scale(finished[c], c) for c in columns))
    figure = Figure(figsize=(max(6.0, 1.6 * len(columns)), 4.5))
    ax = figure.add_subplot()
    colour = finished[metric].astype(float).to_numpy()
    norm = (colour - colour.min()) / (np.ptp(colour) or 1.0)
    cmap = colormaps["viridis"]
    xs = np.arange(len(columns))
    matrix = np.stack(scaled, axis=1)  # (trials, axes) in [0, 1]
    for k in np.argsort(norm):  # best drawn last, on top
        ax.plot(xs, matrix[k], color=cmap(norm[k]), alpha=0.7, linewidth=1.2)
    for x, (positions, labels) in zip(xs, ticks):
        ax.axvline(x, color="#888", linewidth=0.8)
        for pos, text in zip(positions, labels):
            ax.text(x + 0.03, pos, text, fontsize=7, va="center")
    ax.set_xticks(xs, [_axis_name(c) for c in columns], rotation=20)
    ax.set_yticks([])
    ax.set_xlim(-0.2, len(columns) - 0.6)
    ax.set_title(f"{len(finished)} finished trials, colour = {metric}")
    figure.tight_layout()
    return figure


def _scale(column: pd.Series, name: str) -> tuple[np.ndarray, tuple[list[float], list[str]]]:
    """Values mapped to [0, 1] and the tick positions / labels of that axis."""
    values = [plain(v) for v in column]
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        array = np.asarray(values, dtype=float)
        log = array.min() > 0 and array.max() / array.min() >= 10.0
        shown = np.log10(array) if log else array
        low, span = shown.min(), (np.ptp(shown) or 1.0)
        ticks = [array.min(), array.max()]
        return (shown - low) / span, ([0.0, 1.0] if np.ptp(shown) else [0.0], [f"{t:.3g}" for t in ticks[: 2 if np.ptp(shown) else 1]])
    levels = order.ordered("variant" if name == "label" else name, values)
    position = {level: (k / (len(levels) - 1) if len(levels) > 1 else 0.5) for k, level in enumerate(levels)}
    return np.array([position[v] for v in values]), (list(position.values()), [order.display(v) for v in levels])


def summary_lines(drivers: Drivers) -> list[str]:
    """Two or three lines for a terminal: the method and the ranked axes."""
    if drivers.kind == "importance":
        ranked = ", ".join(f"{r.axis} {r.importance:.2f}" for r in drivers.table.itertuples())
    else:
        spreads = drivers.table.drop_duplicates("axis")
        ranked = ", ".join(f"{r.axis} spread {r.spread:.2f}" for r in spreads.itertuples())
    return [f"{drivers.title} ({drivers.method}; {drivers.n_trials} finished trials)", f"    {ranked}"]
