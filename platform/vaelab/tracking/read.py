"""The read side of MLflow: a study's parent run, its trial runs, metric histories, artifacts.

Conventions read here are those of docs/ARCHITECTURE.md ("MLflow conventions"):

- experiment = study name;
- parent run: tag `vaelab.role=study` (the newest by start time when there are several),
  artifact `study.yaml` (the resolved study; its `report:` key is a `ReportSpec`);
- trial runs: tag `vaelab.role=trial`, `mlflow.parentRunId` = the parent's run id, tags
  `vaelab.trial_id`, `vaelab.variant`, `vaelab.status`, `vaelab.node`, `vaelab.cohort`;
  params = `TrialConfig.to_params()` as strings; metrics per epoch with step = epoch;
  artifacts `unit_kl.json`, `latents.npz`, `prior_samples.npz` (plus config.yaml, model.pt).

MLflow keeps params as strings; `typed_params` gives them back their `TrialConfig` types
(int, float, bool, str, None; dims tuples stay in the papers' '64-32-16' notation).

Cost: linear in the runs of the study run read (tracking/bulk.py): a database store is
read with set-based SQL on MLflow's tables, a tracking server with paged searches and bulk
history calls. Only the study run's own trials are read (a starting run never reads the
others'), and artifacts are fetched when a caller asks for one (tracking/artifact_files.py).

Only tracking/ imports mlflow; nothing here imports torch or ray. The tag names are those of
tags.py, shared with the write side (runs.py).
"""

from __future__ import annotations

import difflib
import functools
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping

import numpy as np
import pandas as pd
import yaml

from vaelab.config import TrialConfig
from vaelab.errors import StudyNotFoundError
from vaelab.tracking.artifact_files import ArtifactFiles, ArtifactRoot
from vaelab.tracking.bulk import RunRecord, RunSource, history_frame, open_source
from vaelab.tracking.tags import (
    ROLE_STUDY,
    ROLE_TRIAL,
    TAG_PARENT,
    TAG_ROLE,
    TAG_RUN_NAME,
    TAG_STATUS,
    TAG_TRIAL_ID,
    TAG_VARIANT,
    trial_status,
)
from vaelab.tracking.uri import redact_uri

STUDY_ARTIFACT = "study.yaml"
TRIAL_ARTIFACTS = ("unit_kl.json", "latents.npz", "prior_samples.npz")
ParamKind = Literal["int", "float", "bool", "str", "dims"]



@dataclass(frozen=True)
class StudyRun:
    """The study's parent run."""

    run_id: str
    tags: dict[str, str]
    study_yaml: dict[str, Any] | None  # parsed study.yaml, None when the artifact is absent
    start_time_ms: int
    run_name: str = ""  # tag vaelab.run_name (the Tune experiment folder), else MLflow's run name


@dataclass(frozen=True)
class TrialRun:
    """One trial (member) run, with typed params and final (last logged) metric values."""

    run_id: str
    trial_id: str
    variant: str
    status: str  # finished | diverged | failed | stopped | running
    mlflow_status: str  # RUNNING | FINISHED | FAILED | KILLED | SCHEDULED
    params: dict[str, Any]
    metrics: dict[str, float]
    tags: dict[str, str]
    start_time_ms: int | None
    end_time_ms: int | None
    artifact_uri: str = ""

    @property
    def duration_s(self) -> float | None:
        """Run duration from MLflow's own start/end times (None while running)."""
        if self.start_time_ms is None or self.end_time_ms is None:
            return None
        return (self.end_time_ms - self.start_time_ms) / 1000.0


@dataclass(frozen=True)
class StudyRecord:
    """Everything `read_study` found for one study."""

    study: str
    tracking_uri: str
    experiment_id: str
    parent: StudyRun | None
    trials: tuple[TrialRun, ...]
    warnings: tuple[str, ...] = field(default_factory=tuple)


# --------------------------------------------------------------------------- params


@functools.lru_cache(maxsize=None)
def param_kind(name: str) -> ParamKind:
    """How the MLflow string of param `name` is typed: from TrialConfig's annotation.

    Params TrialConfig does not know stay strings.
    """
    info = TrialConfig.model_fields.get(name)
    if info is None:
        return "str"
    return _annotation_kind(_strip_optional(info.annotation))


@functools.lru_cache(maxsize=None)
def param_is_optional(name: str) -> bool:
    info = TrialConfig.model_fields.get(name)
    return info is None or _strip_optional(info.annotation) is not info.annotation


def parse_param(name: str, text: str | None) -> Any:
    """One MLflow param string -> its typed value ('None' -> None for Optional fields)."""
    if text is None:
        return None
    if text == "None" and param_is_optional(name):
        return None
    kind = param_kind(name)
    try:
        if kind == "int":
            return int(float(text)) if _is_integral(text) else int(text)
        if kind == "float":
            return float(text)
        if kind == "bool":
            return _parse_bool(text)
    except ValueError as err:
        raise ValueError(f"param {name}={text!r} is not a valid {kind}") from err
    return text  # str, Literal[str] and dims ('64-32-16') stay strings


def typed_params(raw: Mapping[str, str]) -> dict[str, Any]:
    """All params of a run, typed by TrialConfig's annotations."""
    return {name: parse_param(name, value) for name, value in raw.items()}


def _strip_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _annotation_kind(annotation: Any) -> ParamKind:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        values = typing.get_args(annotation)
        return _annotation_kind(type(values[0])) if values else "str"
    if origin is tuple or annotation is tuple:
        return "dims"
    if annotation is bool:
        return "bool"
    if annotation is int:
        return "int"
    if annotation is float:
        return "float"
    return "str"


def _is_integral(text: str) -> bool:
    # "5.0" may come from a writer that logged an int field as float
    return "." in text and text.replace("-", "").replace(".", "").isdigit()


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise ValueError(text)


# --------------------------------------------------------------------------- runs


def _quiet_downloads() -> None:
    # MLflow draws a progress bar per downloaded file; hundreds of runs flood stderr.
    # setdefault: an explicit MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR of the user wins.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def read_study(study_name: str, tracking_uri: str, run: str | None = None) -> StudyRecord:
    """A study run (parent run with its parsed study.yaml) and its trial runs.

    `run`: the study run's name (as `vaelab run` printed it), a unique prefix of it, or its
    MLflow run id; None: the newest. Reads the study runs of the experiment and the trial
    runs of the chosen one only. Raises StudyNotFoundError when there is no experiment
    named `study_name` (with the names there are), or no study run named `run`.
    """
    source = open_source(tracking_uri)
    experiment = source.experiment(study_name)
    if experiment is None:
        raise StudyNotFoundError(_no_study_message(study_name, tracking_uri, source))
    parents = _study_runs(source, experiment.experiment_id)
    warnings: list[str] = []
    parent_run = _pick_parent(parents, warnings) if run is None else _named_parent(study_name, parents, run)
    parent = _study_run(tracking_uri, parent_run, warnings) if parent_run is not None else None
    trial_tags = {TAG_ROLE: ROLE_TRIAL}
    if parent_run is not None:
        trial_tags[TAG_PARENT] = parent_run.info.run_id
    trials = [_trial_run(r) for page in source.runs([experiment.experiment_id], trial_tags) for r in page]
    _warn_duplicate_ids(trials, warnings)
    return StudyRecord(
        study=study_name,
        tracking_uri=tracking_uri,
        experiment_id=experiment.experiment_id,
        parent=parent,
        trials=tuple(trials),
        warnings=tuple(warnings),
    )


def _no_study_message(study_name: str, tracking_uri: str, source: RunSource) -> str:
    names = sorted(e.name for e in source.experiments() if e.name != "Default")
    close = difflib.get_close_matches(study_name, names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    known = ", ".join(names) if names else "none"
    return (f"no study {study_name!r} at {redact_uri(tracking_uri)}{hint} (the study name is the MLflow "
            f"experiment name; studies there: {known})")


def study_run_name(run: RunRecord) -> str:
    """The name `vaelab run` gave a study run (its Tune experiment folder)."""
    return run.data.tags.get(TAG_RUN_NAME) or run.info.run_name or run.info.run_id


def _study_runs(source: RunSource, experiment_id: str) -> list[RunRecord]:
    """The experiment's study (parent) runs, newest first."""
    parents = [r for page in source.runs([experiment_id], {TAG_ROLE: ROLE_STUDY}) for r in page]
    return sorted(parents, key=lambda r: (r.info.start_time or 0, r.info.run_id), reverse=True)


def _pick_parent(parents: list[RunRecord], warnings: list[str]) -> RunRecord | None:
    if not parents:
        warnings.append(
            f"no parent run (tag {TAG_ROLE}={ROLE_STUDY}): every trial run of the experiment is used"
        )
        return None
    if len(parents) > 1:
        others = ", ".join(study_run_name(r) for r in parents[1:])
        warnings.append(
            f"{len(parents)} study runs in the experiment; the newest ({study_run_name(parents[0])}) "
            f"is reported; pick another with --run NAME: {others}"
        )
    return parents[0]


def _named_parent(study_name: str, parents: list[RunRecord], name: str) -> RunRecord:
    """The study run named `name` (or with that run id); else the one whose name starts with it."""
    for run in parents:
        if name in (study_run_name(run), run.info.run_id):
            return run
    matches = [r for r in parents if study_run_name(r).startswith(name)]
    if len(matches) == 1:
        return matches[0]
    names = ", ".join(study_run_name(r) for r in (matches or parents)) or "none"
    if len(matches) > 1:
        raise StudyNotFoundError(f"study {study_name!r}: {name!r} names several runs ({names}); give more of the name")
    raise StudyNotFoundError(f"study {study_name!r} has no run named {name!r}; its runs: {names}")


def _study_run(tracking_uri: str, run: RunRecord, warnings: list[str]) -> StudyRun:
    study_yaml = _read_yaml_artifact(tracking_uri, run, STUDY_ARTIFACT)
    if study_yaml is None:
        warnings.append(f"parent run {run.info.run_id} has no {STUDY_ARTIFACT} artifact")
    return StudyRun(
        run_id=run.info.run_id,
        tags=dict(run.data.tags),
        study_yaml=study_yaml,
        start_time_ms=run.info.start_time or 0,
        run_name=study_run_name(run),
    )


def _read_yaml_artifact(tracking_uri: str, run: RunRecord, name: str) -> dict[str, Any] | None:
    import tempfile

    root = ArtifactRoot(run.info.run_id, run.info.artifact_uri, run.info.end_time, ended=False)
    _quiet_downloads()
    with tempfile.TemporaryDirectory() as tmp:
        local = ArtifactFiles(tracking_uri, [root], Path(tmp)).path(run.info.run_id, name)
        loaded = yaml.safe_load(local.read_text(encoding="utf-8")) if local is not None else None
    if local is None:
        return None
    if not isinstance(loaded, dict):
        raise ValueError(f"{name} of run {run.info.run_id} is not a mapping")
    return loaded


def _trial_run(run: RunRecord) -> TrialRun:
    tags = dict(run.data.tags)
    trial_id = tags.get(TAG_TRIAL_ID) or run.info.run_name or run.info.run_id
    try:
        params = typed_params(run.data.params)
    except ValueError as err:
        raise ValueError(f"trial {trial_id} (MLflow run {run.info.run_id}): {err}") from err
    return TrialRun(
        run_id=run.info.run_id,
        trial_id=trial_id,
        variant=tags.get(TAG_VARIANT, ""),
        status=trial_status(tags.get(TAG_STATUS), run.info.status),
        mlflow_status=run.info.status,
        params=params,
        metrics=dict(run.data.metrics),
        tags=tags,
        start_time_ms=run.info.start_time,
        end_time_ms=run.info.end_time,
        artifact_uri=run.info.artifact_uri,
    )


def _warn_duplicate_ids(records: list[TrialRun], warnings: list[str]) -> None:
    seen: dict[str, int] = {}
    for record in records:
        seen[record.trial_id] = seen.get(record.trial_id, 0) + 1
    duplicated = sorted(t for t, n in seen.items() if n > 1)
    if duplicated:
        warnings.append(f"trial ids with several runs (reported as separate rows): {duplicated}")


# --------------------------------------------------------------------------- histories


def read_histories(tracking_uri: str, trials: Iterable[TrialRun]) -> pd.DataFrame:
    """Every metric history of `trials`: one row per (run_id, metric, step) with its value.

    Read in bulk (tracking/bulk.py). When a step was logged more than once (a retried trial
    re-logs the epochs after its last checkpoint), the value logged last wins.
    """
    trials = list(trials)
    source = open_source(tracking_uri)
    keys = sorted({k for t in trials for k in t.metrics})
    frames = list(source.histories([t.run_id for t in trials], keys))
    return latest_per_step(pd.concat(frames, ignore_index=True) if frames else history_frame([]))


def latest_per_step(frame: pd.DataFrame) -> pd.DataFrame:
    """Keep the value logged last (by timestamp, then arrival) for each (run_id, metric, step).

    Sorted on integer codes, not strings: millions of rows at 10,000 trials."""
    runs = pd.Categorical(frame["run_id"])
    metrics = pd.Categorical(frame["metric"])
    steps = frame["step"].to_numpy()
    order = np.lexsort((frame["timestamp"].to_numpy(), steps, metrics.codes, runs.codes))  # stable
    r, m, s = runs.codes[order], metrics.codes[order], steps[order]
    last = np.ones(len(order), dtype=bool)
    last[:-1] = (r[1:] != r[:-1]) | (m[1:] != m[:-1]) | (s[1:] != s[:-1])
    return frame.iloc[order[last]].drop(columns=["timestamp"]).reset_index(drop=True)


def history_of(histories: pd.DataFrame, run_id: str) -> dict[str, list[tuple[int, float]]]:
    """One run's histories as metric -> [(step, value)] sorted by step (for tests and tools)."""
    mine = histories[histories["run_id"] == run_id].sort_values(["metric", "step"])
    return {m: list(zip(g["step"].astype(int), g["value"].astype(float))) for m, g in mine.groupby("metric")}


# --------------------------------------------------------------------------- artifacts


def trial_artifacts(tracking_uri: str, trials: Iterable[TrialRun], cache_dir: Path) -> ArtifactFiles:
    """Lazy access to the trials' artifact files (fetched on first ask, see artifact_files.py)."""
    _quiet_downloads()
    roots = [
        ArtifactRoot(t.run_id, t.artifact_uri, t.end_time_ms,
                     ended=t.end_time_ms is not None and t.mlflow_status != "RUNNING")
        for t in trials
    ]
    return ArtifactFiles(tracking_uri, roots, cache_dir)
