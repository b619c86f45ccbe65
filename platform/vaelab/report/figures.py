"""The report's figures (PNG), drawn with matplotlib's object API on the Agg canvas.

No pyplot, so no GUI backend and no global figure state. Each figure reads the report's
frames (finished trials only) and the downloaded artifacts, and raises `SkipFigure`
with a reason when the study lacks what it needs (the HTML shows the reason).

| name              | shows                                                              |
| ----------------- | ------------------------------------------------------------------ |
| ll_vs_depth       | test_ll_iw vs number of latent layers, per variant, mean ± std (ICML Fig 3) |
| unit_kl_heatmaps  | per-unit KL over epochs, log colour, a panel per layer, deepest model per variant (Fig 5) |
| active_units      | active units per layer, grouped bars per variant (Table 2)         |
| kl_std_normal     | KL(q(z_i|.) || N(0, I)) per layer per variant (Fig 6a)             |
| latent_pca        | PCA of posterior means per layer, coloured by label (Fig 7)        |
| prior_samples     | generated images with the prior injected at each layer (Fig 6b)   |
| kl_vs_rho         | top-layer KL vs rho, one line per model config (Hermite VAE Fig 1) |
| curves            | test_elbo and kl_total vs epoch per variant                        |

"Deepest model of a variant": its finished trials at the largest depth (one configuration
when they differ in more than the seed, see `deepest`); figures of one trial (heatmaps,
PCA, samples) use the lowest seed among them that has the artifact. Line plots against
depth or rho draw one line per variant and configuration, never pooling e.g. a rho sweep
into one mean.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from vaelab.config import TrialConfig
from vaelab.report import order
from vaelab.report.tables import BOOKKEEPING_PARAMS, matches, plain

if TYPE_CHECKING:  # pragma: no cover - typing only
    from vaelab.tracking.artifact_files import ArtifactFiles

FIGURE_NAMES = (
    "ll_vs_depth",
    "unit_kl_heatmaps",
    "active_units",
    "kl_std_normal",
    "latent_pca",
    "prior_samples",
    "kl_vs_rho",
    "curves",
)
_DPI = 100
_KL_FLOOR = 1e-4  # log colour scale: KL below this (an inactive unit) shows white


class SkipFigure(Exception):
    """The study lacks the data for this figure (the message says what is missing)."""


@dataclass
class FigureData:
    trials: pd.DataFrame  # trials frame with a `label` column
    curves: pd.DataFrame
    units: pd.DataFrame
    artifacts: ArtifactFiles  # run_id + name -> local file, fetched on first ask

    @property
    def finished(self) -> pd.DataFrame:
        return self.trials[self.trials["status"] == "finished"]


def render_figures(
    names: list[str], data: FigureData, out_dir: Path
) -> tuple[dict[str, Path], dict[str, str]]:
    """Draw each named figure into out_dir/<name>.png: (written, skipped name -> reason)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    skipped: dict[str, str] = {}
    for name in names:
        path = out_dir / f"{name}.png"
        try:
            figure = _DRAW[name](data)
        except SkipFigure as reason:
            skipped[name] = str(reason)
            path.unlink(missing_ok=True)  # no stale figure from an earlier build
            continue
        figure.savefig(path, dpi=_DPI, metadata={"Software": None})
        written[name] = path
    return written, skipped


# --------------------------------------------------------------------------- selection


def _labels(frame: pd.DataFrame) -> list[str]:
    return order.ordered("variant", frame["label"].tolist())


def _layer_columns(frame: pd.DataFrame, prefix: str) -> dict[int, str]:
    pattern = re.compile(rf"^{re.escape(prefix)}_(\d+)$")
    found = {int(m.group(1)): c for c in frame.columns if (m := pattern.match(str(c)))}
    return {k: found[k] for k in sorted(found) if frame[found[k]].notna().any()}


def deepest(data: FigureData) -> dict[str, pd.DataFrame]:
    """label -> that variant's finished trials at its largest depth, one configuration.

    When trials there differ in more than the seed (a rho sweep, say), the configuration
    with the most trials is kept, ties going to the one closest to TrialConfig's defaults.
    """
    finished = data.finished
    out = {}
    for label in _labels(finished):
        trials = finished[finished["label"] == label]
        trials = trials[trials["depth"] == trials["depth"].max()]
        out[label] = _main_configuration(trials)
    return out


def varying_params(trials: pd.DataFrame, exclude: Iterable[str] = ()) -> list[str]:
    """TrialConfig params (not seeds or bookkeeping) that differ among `trials`."""
    skip = BOOKKEEPING_PARAMS | set(exclude)
    return [
        name
        for name in TrialConfig.model_fields
        if name not in skip and name in trials and trials[name].nunique(dropna=False) > 1
    ]


def _config_key(row: pd.Series, params: list[str]) -> str:
    return ", ".join(f"{p}={order.display(plain(row[p]))}" for p in params)


def _drop_implied(trials: pd.DataFrame, params: list[str]) -> list[str]:
    """Leave out depth / hidden_dims where latent_dims already tells them apart."""
    if "latent_dims" not in params:
        return params
    by_dims = trials.groupby("latent_dims", dropna=False)
    return [p for p in params if p not in ("depth", "hidden_dims") or by_dims[p].nunique(dropna=False).max() > 1]


def _main_configuration(trials: pd.DataFrame) -> pd.DataFrame:
    params = varying_params(trials)
    if not params:
        return trials
    keys = trials.apply(_config_key, axis=1, params=params)
    defaults = TrialConfig().model_dump()
    closeness = trials.apply(lambda r: sum(matches(r[p], defaults.get(p)) for p in params), axis=1)
    ranking = pd.DataFrame({"key": keys, "closeness": closeness})
    scores = ranking.groupby("key").agg(count=("key", "size"), closeness=("closeness", "max"))
    best = scores.sort_values(["count", "closeness"], ascending=False, kind="stable").index[0]
    return trials[keys == best]


def config_lines(trials: pd.DataFrame, exclude: Iterable[str]) -> list[tuple[str, pd.DataFrame]]:
    """(legend label, trials) per variant and configuration, `exclude` being the x axis."""
    lines = []
    for label in _labels(trials):
        mine = trials[trials["label"] == label]
        params = _drop_implied(mine, varying_params(mine, exclude))
        if not params:
            lines.append((label, mine))
            continue
        keys = mine.apply(_config_key, axis=1, params=params)
        for key in sorted(set(keys), key=order.natural_key):
            lines.append((f"{label} ({key})", mine[keys == key]))
    return lines


def representative(trials: pd.DataFrame, data: FigureData, artifact: str) -> pd.Series | None:
    """The lowest-seed trial (then trial id) that has `artifact`, or None.

    Candidates are asked in that order, so only the artifact of the trial drawn is fetched."""
    keyed = trials.assign(_key=trials["trial_id"].map(order.natural_key)).sort_values(["seed", "_key"])
    for _, row in keyed.iterrows():
        if data.artifacts.path(row["mlflow_run_id"], artifact) is not None:
            return row
    return None


def _legend_label(label: str, trials: pd.DataFrame) -> str:
    dims = sorted({str(d) for d in trials["latent_dims"]})
    return f"{label} ({', '.join(dims)}; n={len(trials)})"


def _mean_std(values: pd.Series) -> tuple[float, float]:
    values = values.dropna().astype(float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


# --------------------------------------------------------------------------- figures


def ll_vs_depth(data: FigureData) -> Figure:
    finished = data.finished
    if "test_ll_iw" not in finished or finished["test_ll_iw"].notna().sum() == 0:
        raise SkipFigure("no finished trial logged test_ll_iw")
    finished = finished[finished["test_ll_iw"].notna()]
    depths = sorted(finished["depth"].unique())
    if len(depths) < 2:
        raise SkipFigure(f"the study has one depth only ({depths[0]})")
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    for label, trials in config_lines(finished, exclude=("depth", "latent_dims", "hidden_dims")):
        stats = trials.groupby("depth")["test_ll_iw"].agg(["mean", "std"]).fillna(0.0)
        ax.errorbar(stats.index, stats["mean"], yerr=stats["std"], marker="o", capsize=3, label=label)
    iw = sorted(finished["eval_iw"].dropna().unique()) if "eval_iw" in finished else []
    k = f"K={int(iw[0])}" if len(iw) == 1 else "K varies"
    ax.set(
        title=f"Test log-likelihood vs number of latent layers (IW bound, {k})",
        xlabel="number of latent layers",
        ylabel="test log-likelihood L_K (nats)",
        xticks=depths,
    )
    ax.grid(alpha=0.3)
    _legend(ax, title="variant (mean ± std over seeds)")
    return fig


def unit_kl_heatmaps(data: FigureData) -> Figure:
    picks = _picks(data, "unit_kl.json")
    picks = {label: row for label, row in picks.items() if (data.units["trial_id"] == row["trial_id"]).any()}
    if not picks:
        raise SkipFigure("no finished trial has a unit_kl.json artifact")
    layers = max(int(row["depth"]) for row in picks.values())
    fig = Figure(figsize=(3.2 * layers + 1.5, 2.6 * len(picks) + 0.8), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(picks), layers, squeeze=False))
    norm = LogNorm(vmin=_KL_FLOOR, vmax=max(_KL_FLOOR * 10, float(data.units["kl"].max())))
    image = None
    for r, (label, row) in enumerate(picks.items()):
        units = data.units[data.units["trial_id"] == row["trial_id"]]
        for c in range(layers):
            ax = axes[r, c]
            layer_units = units[units["layer"] == c + 1]
            if layer_units.empty:
                ax.set_axis_off()
                continue
            image = _heatmap(ax, layer_units, norm)
            ax.set_title(f"{label} ({row['trial_id']}) — layer {c + 1}", fontsize=9)
            ax.set_xlabel("evaluation epoch")
            ax.set_ylabel("unit (sorted by final KL)")
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if image is not None:
        fig.colorbar(image, ax=axes, label="KL(q‖p) per unit (nats, log scale)", shrink=0.8)
    fig.suptitle(f"Per-unit KL over training (deepest model per variant; white = KL below {_KL_FLOOR:g} nats)")
    return fig


def _heatmap(ax, layer_units: pd.DataFrame, norm: LogNorm):
    grid = layer_units.pivot_table(index="unit", columns="epoch", values="kl", aggfunc="last")
    grid = grid.sort_values(grid.columns[-1], ascending=False)  # the paper sorts units
    epochs = [int(e) for e in grid.columns]
    # one column per evaluation epoch (they need not be evenly spaced), ticked with its epoch
    values = np.nan_to_num(grid.to_numpy(dtype=float), nan=0.0)
    cmap = colormaps["magma_r"].with_extremes(under="white", bad="white")  # below the floor (or 0): white
    image = ax.imshow(values, aspect="auto", cmap=cmap, norm=norm, interpolation="nearest")
    ticks = np.unique(np.linspace(0, len(epochs) - 1, num=min(len(epochs), 8)).round().astype(int))
    ax.set_xticks(ticks, [str(epochs[i]) for i in ticks])
    return image


def active_units(data: FigureData) -> Figure:
    return _per_layer_bars(
        data,
        prefix="active_units_layer",
        title="Active units per layer (KL > 0.01; deepest model per variant, mean ± std)",
        ylabel="active units",
    )


def kl_std_normal(data: FigureData) -> Figure:
    groups = deepest(data)
    columns = _layer_columns(data.finished, "kl_std_normal_layer")
    if not columns:
        raise SkipFigure("no finished trial logged kl_std_normal_layer_{i}")
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    for label, trials in groups.items():
        layers = [i for i, col in columns.items() if trials[col].notna().any()]
        stats = [_mean_std(trials[columns[i]]) for i in layers]
        if not layers:
            continue
        ax.errorbar(layers, [m for m, _ in stats], yerr=[s for _, s in stats], marker="o", capsize=3,
                    label=_legend_label(label, trials))
    ax.set(
        title="KL(q(z_i|·) ‖ N(0, I)) per layer (deepest model per variant)",
        xlabel="latent layer (1 = bottom)",
        ylabel="KL to N(0, I) (nats)",
        xticks=list(columns),
    )
    ax.grid(alpha=0.3)
    _legend(ax, title="variant (latent dims; seeds)")
    return fig


def _per_layer_bars(data: FigureData, prefix: str, title: str, ylabel: str) -> Figure:
    groups = deepest(data)
    columns = _layer_columns(data.finished, prefix)
    if not columns:
        raise SkipFigure(f"no finished trial logged {prefix}_{{i}}")
    fig = Figure(figsize=(max(7, 1.5 * len(columns) + 3), 4.5), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(1, len(groups))
    layers = np.array(list(columns))
    for k, (label, trials) in enumerate(groups.items()):
        stats = [_mean_std(trials[columns[i]]) if trials[columns[i]].notna().any() else (np.nan, 0.0)
                 for i in layers]
        ax.bar(layers + (k - (len(groups) - 1) / 2) * width, [m for m, _ in stats], width,
               yerr=[s for _, s in stats], capsize=2, label=_legend_label(label, trials))
    ax.set(title=title, xlabel="latent layer (1 = bottom)", ylabel=ylabel, xticks=layers)
    ax.grid(axis="y", alpha=0.3)
    _legend(ax, title="variant (latent dims; seeds)")
    return fig


def latent_pca(data: FigureData) -> Figure:
    from sklearn.decomposition import PCA  # imported here: only this figure needs it

    picks, loaded, layers, fig, axes = _artifact_grid(data, "latents.npz", (3, 1), (3, 0.6))
    scatter = None
    for r, (label, arrays) in enumerate(loaded.items()):
        colours = _label_colours(arrays.get("labels"))
        for c in range(layers):
            ax = axes[r, c]
            key = f"layer_{c + 1}"
            if key not in arrays:
                ax.set_axis_off()
                continue
            points = _pca_2d(PCA, np.asarray(arrays[key], dtype=float))
            scatter = ax.scatter(points[:, 0], points[:, 1], s=6, **colours)
            ax.set_title(f"{label} ({picks[label]['trial_id']}) — z_{c + 1}", fontsize=9)
            ax.set_xlabel("PC 1")
            ax.set_ylabel("PC 2")
    if scatter is not None and scatter.get_array() is not None:
        fig.colorbar(scatter, ax=axes, label="class label", shrink=0.8)
    fig.suptitle("PCA of posterior means per layer, coloured by class (deepest model per variant)")
    return fig


def _artifact_grid(data: FigureData, artifact: str, width: tuple[float, float],
                   height: tuple[float, float]):
    """One row per picked trial (deepest per variant), one column per latent layer.
    width/height: (inches per cell, margin). Returns picks, loaded npz arrays by label,
    the number of layers, the figure and its (rows, layers) axes."""
    picks = _picks(data, artifact)
    if not picks:
        raise SkipFigure(f"no finished trial has a {artifact} artifact")
    loaded = {label: _npz(data, row, artifact) for label, row in picks.items()}
    layers = max(_npz_layers(arrays) for arrays in loaded.values())
    fig = Figure(figsize=(width[0] * layers + width[1], height[0] * len(picks) + height[1]),
                 layout="constrained")
    return picks, loaded, layers, fig, fig.subplots(len(picks), layers, squeeze=False)


def _label_colours(labels: np.ndarray | None) -> dict[str, object]:
    """scatter() colour arguments: tab10 for up to 10 classes, viridis beyond, grey without."""
    if labels is None:
        return {"color": "tab:gray"}
    labels = np.asarray(labels).ravel()
    low, high = float(labels.min()), float(labels.max())
    cmap = "tab10" if high - low < 10 else "viridis"
    return {"c": labels, "cmap": cmap, "vmin": low - 0.5, "vmax": (low + 9.5) if cmap == "tab10" else high}


def _pca_2d(pca_class, points: np.ndarray) -> np.ndarray:
    points = points.reshape(len(points), -1)
    components = min(2, points.shape[1], len(points))
    projected = pca_class(n_components=components).fit_transform(points) if components else points
    if projected.shape[1] < 2:  # a 1-unit layer: plot along one axis
        projected = np.column_stack([projected, np.zeros(len(projected))])
    return projected


def prior_samples(data: FigureData) -> Figure:
    picks, loaded, layers, fig, axes = _artifact_grid(data, "prior_samples.npz", (2.4, 0.5), (2.6, 0.6))
    for r, (label, arrays) in enumerate(loaded.items()):
        shape = tuple(int(v) for v in np.asarray(arrays["image_shape"]).ravel()[:2])
        for c in range(layers):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            key = f"layer_{c + 1}"
            if key not in arrays:
                ax.set_axis_off()
                continue
            ax.imshow(_tile(np.asarray(arrays[key], dtype=float), shape), cmap="gray", vmin=0, vmax=1)
            ax.set_title(f"{label}: z* ~ N(0,I) at layer {c + 1}", fontsize=8)
    fig.suptitle("Samples with the prior injected at each layer (deepest model per variant)")
    return fig


def _tile(images: np.ndarray, shape: tuple[int, int], per_side: int = 4, gap: int = 1) -> np.ndarray:
    """(m, H*W) images -> one grid of per_side x per_side tiles with white gaps."""
    h, w = shape
    grid = np.ones((per_side * (h + gap) - gap, per_side * (w + gap) - gap))
    for k, image in enumerate(images[: per_side * per_side]):
        row, col = divmod(k, per_side)
        top, left = row * (h + gap), col * (w + gap)
        grid[top : top + h, left : left + w] = image.reshape(h, w)
    return np.clip(grid, 0.0, 1.0)


def kl_vs_rho(data: FigureData) -> Figure:
    finished = data.finished
    if "rho" not in finished or finished["rho"].nunique() < 2:
        raise SkipFigure("the study has one value of rho only")
    top = finished.apply(_top_layer_kl, axis=1)
    frame = finished.assign(top_kl=top).dropna(subset=["top_kl"])
    if frame.empty:
        raise SkipFigure("no finished trial logged kl_layer_{depth}")
    lines = [(label, t) for label, t in config_lines(frame, exclude=("rho",)) if t["rho"].nunique() > 1]
    if not lines:
        raise SkipFigure("no model configuration was trained at two or more values of rho")
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    for label, trials in lines:
        stats = trials.groupby("rho")["top_kl"].agg(["mean", "std"]).fillna(0.0)
        ax.errorbar(stats.index, stats["mean"], yerr=stats["std"], marker="o", capsize=3, label=label)
    ax.set(
        title="Top-layer KL vs OU smoothing ρ (phase transition)",
        xlabel="ρ (1 = no smoothing)",
        ylabel="KL of the top latent layer (nats)",
    )
    ax.grid(alpha=0.3)
    _legend(ax, title="model configuration (≥ 2 values of ρ)", fontsize=8)
    return fig


def _top_layer_kl(row: pd.Series) -> float:
    column = f"kl_layer_{int(row['depth'])}"
    value = row.get(column)
    return float(value) if value is not None and pd.notna(value) else np.nan


def curves(data: FigureData) -> Figure:
    metrics = [m for m in ("test_elbo", "kl_total") if (data.curves["metric"] == m).any()]
    if not metrics:
        raise SkipFigure("no trial logged test_elbo or kl_total per epoch")
    groups = deepest(data)
    fig = Figure(figsize=(6 * len(metrics), 4.2), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics):
        history = data.curves[data.curves["metric"] == metric]
        for label, trials in groups.items():
            mine = history[history["trial_id"].isin(trials["trial_id"])]
            if mine.empty:
                continue
            mean = mine.groupby("epoch")["value"].mean()
            ax.plot(mean.index, mean.to_numpy(), marker=".", label=_legend_label(label, trials))
        ax.set(title=f"{metric} per epoch (mean over seeds)", xlabel="epoch", ylabel=f"{metric} (nats)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        _legend(ax, title="variant (latent dims; seeds)", fontsize=8)
    fig.suptitle("Training curves (deepest model per variant)")
    return fig


# --------------------------------------------------------------------------- helpers


def _picks(data: FigureData, artifact: str) -> dict[str, pd.Series]:
    picks = {}
    for label, trials in deepest(data).items():
        row = representative(trials, data, artifact)
        if row is not None:
            picks[label] = row
    return picks


def _legend(ax, **kwargs) -> None:
    """A legend only where something labelled was drawn (matplotlib warns on an empty one)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kwargs)


def _npz(data: FigureData, row: pd.Series, name: str) -> dict[str, np.ndarray]:
    with np.load(data.artifacts.path(row["mlflow_run_id"], name), allow_pickle=False) as arrays:
        return {key: arrays[key] for key in arrays.files}


def _npz_layers(arrays: dict[str, np.ndarray]) -> int:
    layers = [int(k.split("_")[1]) for k in arrays if re.fullmatch(r"layer_\d+", k)]
    return max(layers, default=0)


_DRAW: dict[str, Callable[[FigureData], Figure]] = {
    "ll_vs_depth": ll_vs_depth,
    "unit_kl_heatmaps": unit_kl_heatmaps,
    "active_units": active_units,
    "kl_std_normal": kl_std_normal,
    "latent_pca": latent_pca,
    "prior_samples": prior_samples,
    "kl_vs_rho": kl_vs_rho,
    "curves": curves,
}
