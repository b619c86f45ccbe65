"""`build_report`: regenerate a study's report folder from MLflow alone.

    reports/<study>/
      trials.parquet  curves.parquet  units.parquet   (schemas: report.parquet)
      tables.md  index.html
      figures/<name>.png

Imports neither torch nor ray (mlflow only through vaelab.tracking.read). Regenerating
from the same MLflow content gives equal Parquet tables, tables.md and index.html.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from vaelab.report.collect import StudyData, collect_study
from vaelab.report.figures import FIGURE_NAMES, FigureData, render_figures
from vaelab.report.html import render_html
from vaelab.report.markdown import render_markdown
from vaelab.report.parquet import write_parquet
from vaelab.report.summary import summarize
from vaelab.report.tables import TableResult, build_tables

FIGURE_CAPTIONS = {
    "ll_vs_depth": "Test log-likelihood (IW bound) vs number of latent layers per variant, mean ± std over seeds (ICML Fig 3)",
    "unit_kl_heatmaps": "Per-unit KL over training epochs, one panel per layer, log colour scale (ICML Fig 5)",
    "active_units": "Active units per layer per variant (ICML Table 2)",
    "kl_std_normal": "KL(q(z_i|·) ‖ N(0, I)) per layer per variant (ICML Fig 6a)",
    "latent_pca": "PCA of posterior means per layer, coloured by class (ICML Fig 7)",
    "prior_samples": "Generated images with z* ~ N(0, I) injected at each layer (ICML Fig 6b)",
    "kl_vs_rho": "Top-layer KL vs OU smoothing ρ, one line per model config (Hermite VAE phase transition)",
    "curves": "test_elbo and kl_total per epoch, deepest model per variant",
}
_DATA_FILES = ("trials.parquet", "curves.parquet", "units.parquet", "tables.md")


@dataclass(frozen=True)
class ReportResult:
    study: str
    out_dir: Path
    trials_parquet: Path
    curves_parquet: Path
    units_parquet: Path
    tables_md: Path
    index_html: Path
    figures: dict[str, Path]  # name -> png written
    skipped_figures: dict[str, str]  # name -> why it was not drawn
    tables: list[TableResult]
    status_counts: dict[str, int]  # finished / diverged / failed / stopped / running
    warnings: list[str] = field(default_factory=list)


def default_out_dir(study_name: str, root: Path | str = "reports") -> Path:
    return Path(root) / study_name


def default_cache_dir() -> Path:
    """Downloaded trial artifacts: $VAELAB_CACHE_DIR or ~/.cache/vaelab/artifacts."""
    env = os.environ.get("VAELAB_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "vaelab" / "artifacts"


def build_report(
    study_name: str,
    tracking_uri: str,
    out_dir: Path | str | None = None,
    *,
    cache_dir: Path | str | None = None,
    workers: int = 4,
) -> ReportResult:
    """Read the study from MLflow and write its report into `out_dir` (default reports/<study>).

    `out_dir` is the study's own folder: the files land directly in it.
    """
    out = Path(out_dir) if out_dir is not None else default_out_dir(study_name)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    data = collect_study(study_name, tracking_uri, cache, workers=workers)
    out.mkdir(parents=True, exist_ok=True)
    paths = _write_parquet(data, out)
    tables = build_tables(data.spec.tables, data.trials_df)
    figures, skipped = _render_figures(data, out / "figures")
    summary = summarize(data)
    relative = {name: f"figures/{path.name}" for name, path in figures.items()}
    paths["tables.md"] = _write_text(out / "tables.md", render_markdown(summary, tables, relative, skipped))
    html = render_html(summary, tables, relative, skipped, FIGURE_CAPTIONS, list(_DATA_FILES))
    index = _write_text(out / "index.html", html)
    return ReportResult(
        study=study_name,
        out_dir=out,
        trials_parquet=paths["trials.parquet"],
        curves_parquet=paths["curves.parquet"],
        units_parquet=paths["units.parquet"],
        tables_md=paths["tables.md"],
        index_html=index,
        figures=figures,
        skipped_figures=skipped,
        tables=tables,
        status_counts=summary.status_counts,
        warnings=summary.warnings,
    )


def _write_parquet(data: StudyData, out: Path) -> dict[str, Path]:
    return {
        "trials.parquet": write_parquet(data.trials, out / "trials.parquet"),
        "curves.parquet": write_parquet(data.curves, out / "curves.parquet"),
        "units.parquet": write_parquet(data.units, out / "units.parquet"),
    }


def _render_figures(data: StudyData, figures_dir: Path) -> tuple[dict[str, Path], dict[str, str]]:
    names = list(data.spec.figures) or list(FIGURE_NAMES)  # none named: all the data allows
    for stale in set(FIGURE_NAMES) - set(names):
        (figures_dir / f"{stale}.png").unlink(missing_ok=True)
    frames = FigureData(data.trials_df, data.curves_df, data.units_df, data.artifacts)
    return render_figures(names, frames, figures_dir)


def _write_text(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path
