"""The report's answers: the claims' verdicts and what drives the metric, and their files.

`analyse` works on a trials frame alone (from MLflow, or a report folder's
trials.parquet), so `vaelab claims` and `vaelab report` give the same verdicts.
`write_analysis` adds claims.parquet, tables.tex and, for sampled studies,
figures/parallel_coordinates.png to a report folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from vaelab.report.claims import ClaimResult, claims_table, evaluate_claims
from vaelab.report.drivers import Drivers, choose_metric, is_sampled, parallel_coordinates, what_drives
from vaelab.report.latex import render_latex
from vaelab.report.parquet import write_parquet
from vaelab.report.spec import ReportSpec
from vaelab.report.tables import TableResult

PARALLEL = "parallel_coordinates"
PARALLEL_CAPTION = "Every finished trial across the sampled axes (most important first), coloured by the metric"


@dataclass
class Analysis:
    alpha: float
    claims: list[ClaimResult]
    drivers: Optional[Drivers]

    @property
    def contradicted(self) -> list[ClaimResult]:
        return [c for c in self.claims if c.verdict == "contradicted"]


def analyse(spec: ReportSpec, trials: pd.DataFrame, study_yaml: dict[str, Any]) -> Analysis:
    """Claims of `spec` tested on `trials` (with `label`), and the drivers of the study's metric."""
    claims = evaluate_claims(spec.claims, trials, spec.alpha)
    fallback = spec.tables[0].value if spec.tables and spec.tables[0].rows != "layer" else (
        spec.claims[0].metric if spec.claims else "test_elbo")
    drivers = what_drives(trials, choose_metric(study_yaml, fallback), is_sampled(study_yaml))
    return Analysis(spec.alpha, claims, drivers)


def write_analysis(
    study: str, analysis: Analysis, tables: list[TableResult], trials: pd.DataFrame, out: Path
) -> tuple[dict[str, Path], dict[str, Path]]:
    """(files written, figures written): claims.parquet, tables.tex, parallel coordinates."""
    files = {"claims.parquet": write_parquet(claims_table(analysis.claims), out / "claims.parquet")}
    tex = out / "tables.tex"
    tex.write_text(render_latex(study, analysis.claims, tables), encoding="utf-8")
    files["tables.tex"] = tex
    figure_path = out / "figures" / f"{PARALLEL}.png"
    if analysis.drivers is None or analysis.drivers.kind != "importance":
        figure_path.unlink(missing_ok=True)  # no stale figure from an earlier build
        return files, {}
    figure_path.parent.mkdir(parents=True, exist_ok=True)
    parallel_coordinates(trials, analysis.drivers).savefig(figure_path, dpi=100, metadata={"Software": None})
    return files, {PARALLEL: figure_path}


# --------------------------------------------------------------------------- inputs of `vaelab claims`


@dataclass
class ClaimInputs:
    spec: ReportSpec
    trials: pd.DataFrame  # with `label`
    study_yaml: dict[str, Any]
    origin: str  # where the trials came from, for the output's first line
    warnings: list[str]


def inputs_from_mlflow(study: str, tracking_uri: str, run: Optional[str] = None) -> ClaimInputs:
    """The study run's trials and its stored `report:` section, without histories or artifacts."""
    from vaelab.report import parquet
    from vaelab.report.collect import read_study, report_spec, with_labels

    record = read_study(study, tracking_uri, run)
    trials = with_labels(parquet.trials_table(study, record.trials).to_pandas())
    study_yaml = dict(record.parent.study_yaml or {}) if record.parent else {}
    run_name = record.parent.run_name if record.parent else "no study run"
    from vaelab.tracking.uri import redact_uri  # `vaelab claims` prints the origin

    origin = f"MLflow {redact_uri(tracking_uri)}, study run {run_name}"
    return ClaimInputs(report_spec(record), trials, study_yaml, origin, list(record.warnings))


def inputs_from_folder(folder: Path) -> pd.DataFrame:
    """A report folder's trials.parquet as a trials frame (the spec comes from a study file)."""
    from vaelab.errors import ReportError
    from vaelab.report.collect import with_labels

    path = Path(folder) / "trials.parquet"
    if not path.is_file():
        raise ReportError(f"--from {folder}: no trials.parquet there (a folder `vaelab report` wrote holds one)")
    return with_labels(pd.read_parquet(path))


def status_line(trials: pd.DataFrame) -> str:
    counts = trials["status"].value_counts() if len(trials) else pd.Series(dtype=int)
    parts = ", ".join(f"{n} {status}" for status, n in counts.items())
    return f"{len(trials)} trials" + (f": {parts}" if parts else "")
