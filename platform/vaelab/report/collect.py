"""MLflow -> Arrow tables and pandas frames: everything a report is made from.

`collect_study` reads the study through `vaelab.tracking.read` (the only mlflow user),
builds the three Parquet tables (schemas in `report.parquet`) and the pandas frames the
tables and figures are computed from — the frames are read back from those Arrow tables,
so the report shows exactly what the Parquet files hold.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
from pydantic import ValidationError

from vaelab.errors import ReportError
from vaelab.report import parquet
from vaelab.report.spec import ReportSpec
from vaelab.tracking.artifact_files import ArtifactFiles
from vaelab.tracking.read import StudyRecord, TrialRun, read_histories, read_study, trial_artifacts
from vaelab.tracking.tags import TAG_BUDGET, TAG_GIT_SHA


@dataclass
class StudyData:
    """A study as the report sees it."""

    record: StudyRecord
    spec: ReportSpec
    trials: pa.Table
    curves: pa.Table
    units: pa.Table
    artifacts: ArtifactFiles  # run_id + artifact name -> local file, fetched when asked
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.trials_df = with_labels(self.trials.to_pandas())
        self.curves_df = self.curves.to_pandas()
        self.units_df = self.units.to_pandas()

    @property
    def parent_tags(self) -> dict[str, str]:
        return dict(self.record.parent.tags) if self.record.parent else {}

    @property
    def study_yaml(self) -> dict[str, Any]:
        return dict(self.record.parent.study_yaml or {}) if self.record.parent else {}


def collect_study(
    study_name: str, tracking_uri: str, cache_dir: Path, workers: int = 4, run: str | None = None
) -> StudyData:
    """Read one study run (`run`: its name or MLflow id; None: the newest) from MLflow and
    build its tables and frames."""
    record = read_study(study_name, tracking_uri, run)
    warnings = list(record.warnings)
    spec = report_spec(record)
    histories = read_histories(tracking_uri, record.trials)
    artifacts = trial_artifacts(tracking_uri, record.trials, cache_dir)
    unit_files = artifacts.paths([t.run_id for t in record.trials], "unit_kl.json", workers=workers)
    return StudyData(
        record=record,
        spec=spec,
        trials=parquet.trials_table(study_name, record.trials, run_columns(record)),
        curves=parquet.curves_table(record.trials, histories),
        units=_units_table(record.trials, unit_files, warnings),
        artifacts=artifacts,
        warnings=warnings,
    )


def run_columns(record: StudyRecord) -> dict[str, str | None]:
    """trials.parquet's run / budget / git_sha: from the study run's tags."""
    if record.parent is None:
        return {}
    tags = record.parent.tags
    return {"run": record.parent.run_name, "budget": tags.get(TAG_BUDGET), "git_sha": tags.get(TAG_GIT_SHA)}


def report_spec(record: StudyRecord) -> ReportSpec:
    """The `report:` section of the parent run's study.yaml (defaults when absent)."""
    study_yaml = record.parent.study_yaml if record.parent else None
    section = (study_yaml or {}).get("report") or {}
    try:
        return ReportSpec.model_validate(section)
    except ValidationError as err:
        run = record.parent.run_id if record.parent else "?"
        raise ReportError(f"study.yaml of run {run}: invalid `report:` section:\n{err}") from err


def _units_table(trials: tuple[TrialRun, ...], files: dict[str, Path], warnings: list[str]) -> pa.Table:
    """units.parquet from each trial's unit_kl.json; an unreadable file is named, not fatal."""
    per_trial: dict[str, tuple[list, list, list, list]] = {}
    for trial in trials:
        path = files.get(trial.run_id)
        if path is None:
            continue
        try:
            per_trial[trial.run_id] = parquet.unit_kl_columns(path)
        except (ValueError, KeyError, TypeError, json.JSONDecodeError) as err:
            warnings.append(f"trial {trial.trial_id}: unreadable unit_kl.json ({err})")
    return parquet.units_table(trials, per_trial)


# --------------------------------------------------------------------------- labels


def derived_label(row: pd.Series) -> str:
    """A variant label from the params, for trials logged without one (VAE+BN+WU style)."""
    parts = [str(row.get("inference") or "vae").upper()]
    if bool(row.get("batch_norm")):
        parts.append("BN")
    warmup = row.get("warmup_epochs")
    if warmup is not None and not pd.isna(warmup) and float(warmup) > 0:
        parts.append("WU")
    return "+".join(parts)


def with_labels(trials: pd.DataFrame) -> pd.DataFrame:
    """Add `label`: the variant tag, or a label derived from the params when it is empty."""
    trials = trials.copy()
    if trials.empty:
        trials["label"] = pd.Series(dtype=object)
        return trials
    derived = trials.apply(derived_label, axis=1)
    tagged = trials["variant"].fillna("").astype(object)
    trials["label"] = tagged.where(tagged != "", derived).astype(object)
    return trials
