"""`build_report`: regenerate a study run's report folder from MLflow alone.

    reports/<study>/<run name>/          (default; or any folder given)
      trials.parquet  curves.parquet  units.parquet   (schemas: report.parquet)
      tables.md  index.html  run.json
      claims.parquet  tables.tex      (claims: report.claims; LaTeX: report.latex)
      figures/<name>.png

Each study run (one `vaelab run`) has its own folder, so a 2-epoch smoke run never
replaces the report of a long one. `run.json` names the study run a folder holds; a
folder that holds another run's report is never written over unless asked to.

Imports neither torch nor ray (mlflow only through vaelab.tracking.read). Regenerating
from the same MLflow content gives equal Parquet tables, tables.md and index.html.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from vaelab.errors import ReportError
from vaelab.report.analysis import PARALLEL, PARALLEL_CAPTION, analyse, write_analysis
from vaelab.report.collect import StudyData, collect_study
from vaelab.report.figures import FIGURE_NAMES, FigureData, render_figures
from vaelab.report.html import render_html
from vaelab.report.markdown import render_markdown
from vaelab.report.parquet import write_parquet
from vaelab.report.summary import summarize
from vaelab.report.tables import TableResult, build_tables
from vaelab.tracking.tags import TAG_BUDGET

FIGURE_CAPTIONS = {
    "ll_vs_depth": "Test log-likelihood (IW bound) vs number of latent layers per variant, mean ± std over seeds (ICML Fig 3)",
    "unit_kl_heatmaps": "Per-unit KL over training epochs, one panel per layer, log colour scale (ICML Fig 5)",
    "active_units": "Active units per layer per variant (ICML Table 2)",
    "kl_std_normal": "KL(q(z_i|·) ‖ N(0, I)) per layer per variant (ICML Fig 6a)",
    "latent_pca": "PCA of posterior means per layer, coloured by class (ICML Fig 7)",
    "prior_samples": "Generated images with z* ~ N(0, I) injected at each layer (ICML Fig 6b)",
    "kl_vs_rho": "Top-layer KL vs OU smoothing ρ, one line per model config (Hermite VAE phase transition)",
    "curves": "test_elbo and kl_total per epoch, deepest model per variant",
    PARALLEL: PARALLEL_CAPTION,
}
_DATA_FILES = ("trials.parquet", "curves.parquet", "units.parquet", "tables.md")
RUN_MARKER = "run.json"  # which study run the folder's report is of


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


def default_out_dir(study_name: str, run_name: str = "", root: Path | str = "reports") -> Path:
    """reports/<study>/<run name>: one folder per study run, so runs never collide."""
    return Path(root) / study_name / run_name if run_name else Path(root) / study_name


def default_cache_dir() -> Path:
    """Downloaded trial artifacts: $VAELAB_CACHE_DIR or ~/.cache/vaelab/artifacts."""
    env = os.environ.get("VAELAB_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "vaelab" / "artifacts"


def build_report(
    study_name: str,
    tracking_uri: str,
    out_dir: Path | str | None = None,
    *,
    run: str | None = None,
    overwrite: bool = False,
    cache_dir: Path | str | None = None,
    workers: int = 4,
) -> ReportResult:
    """Read one study run from MLflow and write its report into `out_dir`.

    `run`: the study run's name or MLflow run id (None: the newest). `out_dir` (default
    reports/<study>/<run name>) receives the files directly. A folder that already holds
    the report of another study run raises ReportError unless `overwrite`.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    data = collect_study(study_name, tracking_uri, cache, workers=workers, run=run)
    out = Path(out_dir) if out_dir is not None else default_out_dir(study_name, _run_name(data))
    if not overwrite:
        _refuse_other_run(out, data)
    out.mkdir(parents=True, exist_ok=True)
    _write_text(out / RUN_MARKER, json.dumps(_run_identity(data), indent=1) + "\n")
    paths = _write_parquet(data, out)
    tables = build_tables(data.spec.tables, data.trials_df)
    analysis = analyse(data.spec, data.trials_df, data.study_yaml)
    figures, skipped = _render_figures(data, out / "figures")
    files, driver_figures = write_analysis(data.record.study, analysis, tables, data.trials_df, out)
    figures.update(driver_figures)
    summary = summarize(data)
    relative = {name: f"figures/{path.name}" for name, path in figures.items()}
    paths["tables.md"] = _write_text(out / "tables.md", render_markdown(summary, tables, relative, skipped, analysis))
    html = render_html(summary, tables, relative, skipped, FIGURE_CAPTIONS, list(_DATA_FILES) + list(files), analysis)
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


def _run_name(data: StudyData) -> str:
    return data.record.parent.run_name if data.record.parent else "all-runs"


def _run_identity(data: StudyData) -> dict[str, str | None]:
    parent = data.record.parent
    return {
        "study": data.record.study,
        "run_name": parent.run_name if parent else None,
        "parent_run_id": parent.run_id if parent else None,
        "budget": data.parent_tags.get(TAG_BUDGET),
    }


def _refuse_other_run(out: Path, data: StudyData) -> None:
    """Raise when `out` holds the report of another study run (never overwrite it silently).

    The folder's run.json says whose report it is; a folder written before run.json
    existed is recognised by the MLflow run ids in its trials.parquet: a report of the
    same study run (rebuilt, or grown by a resume) holds no trial run this one lacks."""
    marker, trials = out / RUN_MARKER, out / "trials.parquet"
    parent = data.record.parent
    if marker.is_file():
        owner = json.loads(marker.read_text(encoding="utf-8"))
        if owner.get("parent_run_id") == (parent.run_id if parent else None):
            return
        other = f"study {owner.get('study')!r}, run {owner.get('run_name')!r}"
    elif trials.is_file():
        held = set(pq.read_table(trials, columns=["mlflow_run_id"]).column(0).to_pylist())
        if held <= {t.run_id for t in data.record.trials}:
            return
        other = f"{len(held)} trial runs that study run {_run_name(data)!r} does not have"
    else:
        return
    raise ReportError(
        f"{out} holds the report of another run ({other}); it is left as it is. Write this "
        f"one elsewhere with --out DIR (default reports/{data.record.study}/<run name>), "
        "or pass --overwrite to replace it"
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
