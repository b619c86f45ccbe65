"""MLflow writing: the study's parent run, one child run per trial member, with provenance.

Conventions (docs/ARCHITECTURE.md): experiment = study name; a parent run per study
(`vaelab.role=study`); a child run per trial member (`vaelab.role=trial`, tag
`mlflow.parentRunId`), found again by tag `vaelab.trial_id` under the same parent so a
retried or restored trial continues its run instead of starting a duplicate.

Writes use `MlflowClient` directly (never the fluent active-run stack, which is per process
and would tangle the members of one cohort). Every call is retried (retry.py) on transient
errors: a metric must never be lost. Retries are idempotent: a batch keeps its timestamps
across attempts and MLflow drops an exact duplicate (key, timestamp, step, value).
Imports mlflow; the lookups (and `StudyRunInfo`) live in queries.py, which imports nothing
from here.
"""

from __future__ import annotations

import logging
import re
import socket
import subprocess
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence, TypeVar

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from vaelab.errors import TrackingError
from vaelab.tracking.connection import client_for
from vaelab.tracking.queries import StudyRunInfo, find_runs
from vaelab.tracking.retry import with_retry
from vaelab.tracking.tags import (
    ROLE_STUDY,
    ROLE_TRIAL,
    STATUSES,
    TAG_ATTEMPT,
    TAG_BUDGET,
    TAG_COHORT,
    TAG_EXPERIMENT_KIND,
    TAG_GIT_SHA,
    TAG_HOST,
    TAG_NODE,
    TAG_PARENT,
    TAG_ROLE,
    TAG_RUN_NAME,
    TAG_SPEC_HASH,
    TAG_STATUS,
    TAG_STUDY,
    TAG_STUDY_GIT_SHA,
    TAG_TRIAL_ID,
    TAG_VERSION_PREFIX,
    TAG_VERSIONS,
)
from vaelab.tracking.uri import resolve_tracking_uri, sqlite_path

log = logging.getLogger(__name__)

T = TypeVar("T")

_MAX_PARAMS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000
_MAX_PARAM_LENGTH = 6000


# --------------------------------------------------------------------------- experiments


def default_artifact_location(tracking_uri: str, experiment_name: str) -> Optional[str]:
    """Artifacts of a SQLite-tracked study live beside the database, not in a trial's cwd."""
    path = sqlite_path(tracking_uri)
    if path is None:
        return None  # a server decides (proxied artifacts)
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", experiment_name).strip("_") or "study"
    return (path.parent / "mlartifacts" / slug).as_uri()


def get_or_create_experiment(client: MlflowClient, name: str, tracking_uri: str) -> str:
    """The experiment id of `name`, created if needed (safe when many processes race)."""

    def attempt() -> str:
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                raise TrackingError(
                    f"MLflow experiment {name!r} is deleted; restore it (`mlflow experiments restore`) "
                    "or permanently delete it (`mlflow gc`) first"
                )
            return exp.experiment_id
        try:
            return client.create_experiment(
                name, artifact_location=default_artifact_location(tracking_uri, name)
            )
        except MlflowException as err:
            if err.error_code == "RESOURCE_ALREADY_EXISTS":  # another process won the race
                found = client.get_experiment_by_name(name)
                if found is not None:
                    return found.experiment_id
            raise

    return with_retry(attempt, f"experiment {name!r}")


# --------------------------------------------------------------------------- provenance


def git_sha(start: Optional[Path] = None) -> str:
    """HEAD of the repository holding `start` (or the cwd), `+dirty` if modified; `unknown` without git."""
    cwd = str(start) if start else None
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")


def code_git_sha() -> str:
    """The SHA of the vaelab code that runs (the repository holding this package), whatever
    folder the study YAML or the shell is in."""
    return git_sha(Path(__file__).resolve().parents[1])


def library_versions() -> dict[str, str]:
    """Versions of the libraries that decide a result (read from metadata: nothing imported)."""
    out = {}
    for dist in ("vaelab", "torch", "ray", "mlflow", "optuna", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "absent"
    return out


def node_name() -> str:
    """`hostname/ip` of this process's machine (the ip a peer would use, loopback if alone)."""
    host = socket.gethostname()
    try:
        ip = socket.gethostbyname(host)
    except OSError:
        ip = "127.0.0.1"
    return f"{host}/{ip}"


# --------------------------------------------------------------------------- values


def param_strings(params: Mapping[str, Any]) -> dict[str, str]:
    """MLflow param values: `str(value)` ('True', 'None', '0.001', '64-32-16'), truncated to MLflow's limit."""
    return {k: str(v)[:_MAX_PARAM_LENGTH] for k, v in params.items()}


def to_metrics(values: Mapping[str, Any], step: int, timestamp_ms: int) -> list[Metric]:
    """Numeric entries of `values` as MLflow metrics (non-numbers are skipped; NaN/inf kept)."""
    out = []
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            try:
                value = float(value)  # numpy / torch scalars
            except (TypeError, ValueError):
                continue
        out.append(Metric(key=key, value=float(value), timestamp=timestamp_ms, step=step))
    return out


def _chunks(items: Sequence[T], size: int) -> Iterable[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _now_ms() -> int:
    return int(time.time() * 1000)


# --------------------------------------------------------------------------- the study run


def start_study_run(
    tracking_uri: str,
    study: str,
    run_name: str,
    *,
    spec_hash: str,
    budget: str,
    study_yaml: str,
    tags: Optional[Mapping[str, str]] = None,
    params: Optional[Mapping[str, Any]] = None,
    repo_dir: Optional[Path] = None,
) -> StudyRunInfo:
    """Create the study's parent run: provenance tags, `study.yaml` artifact."""
    uri = resolve_tracking_uri(tracking_uri)
    client = client_for(uri)
    experiment_id = get_or_create_experiment(client, study, uri)
    # MLflow 3's UI opens an experiment without this tag in its GenAI (traces) view
    with_retry(lambda: client.set_experiment_tag(experiment_id, TAG_EXPERIMENT_KIND, "custom_model_development"),
               "tag experiment")
    versions = library_versions()
    all_tags = {
        TAG_ROLE: ROLE_STUDY,
        TAG_STUDY: study,
        TAG_RUN_NAME: run_name,
        TAG_STATUS: "running",
        TAG_GIT_SHA: code_git_sha(),
        **({TAG_STUDY_GIT_SHA: git_sha(repo_dir)} if repo_dir else {}),  # the study file's repo
        TAG_SPEC_HASH: spec_hash,
        TAG_BUDGET: budget,
        TAG_VERSIONS: " ".join(f"{k}={v}" for k, v in versions.items()),
        TAG_HOST: node_name(),
        **{f"{TAG_VERSION_PREFIX}{k}": v for k, v in versions.items()},
        **(tags or {}),
    }
    run = _create_run_once(client, experiment_id, all_tags, run_name, TAG_RUN_NAME, run_name, None)
    if params:
        _log_params(client, run.info.run_id, param_strings(params), existing={})
    with_retry(lambda: client.log_text(run.info.run_id, study_yaml, "study.yaml"), "log study.yaml")
    return StudyRunInfo(uri, experiment_id, run.info.run_id, study)


def reopen_study_run(info: StudyRunInfo) -> None:
    """Mark a resumed study's parent run running again."""
    client = client_for(info.tracking_uri)
    _set_tags(client, info.parent_run_id, {TAG_STATUS: "running"})
    with_retry(lambda: client.update_run(info.parent_run_id, status="RUNNING"), "reopen parent run")


def finish_study_run(info: StudyRunInfo, status: str, tags: Optional[Mapping[str, str]] = None) -> None:
    """Close the parent run: `vaelab.status` (finished / failed / interrupted) plus summary tags."""
    client = client_for(info.tracking_uri)
    _set_tags(client, info.parent_run_id, {TAG_STATUS: status, **(tags or {})})
    mlflow_status = {"finished": "FINISHED", "interrupted": "KILLED"}.get(status, "FAILED")
    with_retry(
        lambda: client.set_terminated(info.parent_run_id, status=mlflow_status), "terminate parent run"
    )


def mark_stale_trials(info: StudyRunInfo, status_by_cohort: Mapping[str, str]) -> int:
    """After Tune ends: a child still `running` whose Tune trial is over gets the given status.

    A worker killed hard (OOM, lost node) past `max_failures`, or a trial stopped by a
    scheduler, never wrote its own end. Returns how many runs were updated.
    """
    client = client_for(info.tracking_uri)
    runs = find_runs(
        client, info.experiment_id,
        {TAG_ROLE: ROLE_TRIAL, TAG_PARENT: info.parent_run_id, TAG_STATUS: "running"},
    )
    changed = 0
    for run in runs:
        status = status_by_cohort.get(run.data.tags.get(TAG_COHORT, ""))
        if status:
            _set_tags(client, run.info.run_id, {TAG_STATUS: status})
            mlflow_status = "FINISHED" if status in ("finished", "stopped") else "FAILED"
            with_retry(
                lambda r=run: client.set_terminated(r.info.run_id, status=mlflow_status), "terminate run"
            )
            changed += 1
    return changed


# --------------------------------------------------------------------------- trial runs


@dataclass
class TrialRun:
    """One trial member's child run, opened inside the trial process.

    `open` finds the run again by `vaelab.trial_id` under the parent (a retried or restored
    trial continues it) or creates it. Epochs at or below `last_step` were already logged
    by an earlier attempt and are skipped, so the history has no repeats; an attempt that
    restarts from an older checkpoint re-trains those epochs without logging them twice.
    """

    client: MlflowClient
    run_id: str
    resumed: bool
    last_step: int = 0
    artifact_uri: str = ""
    logged_params: dict[str, str] = field(default_factory=dict)

    @classmethod
    def open(
        cls,
        info: StudyRunInfo,
        trial_id: str,
        *,
        run_name: str,
        params: Mapping[str, Any],
        tags: Mapping[str, str],
        node: Optional[str] = None,
    ) -> "TrialRun":
        client = client_for(info.tracking_uri)
        base_tags = {
            TAG_ROLE: ROLE_TRIAL,
            TAG_STUDY: info.study,
            TAG_TRIAL_ID: trial_id,
            TAG_PARENT: info.parent_run_id,
            **tags,
        }
        run = _create_run_once(
            client, info.experiment_id, base_tags, run_name, TAG_TRIAL_ID, trial_id, info.parent_run_id
        )
        resumed = run.info.status != "RUNNING" or bool(run.data.metrics) or bool(run.data.params)
        attempt = int(run.data.tags.get(TAG_ATTEMPT, "0") or 0) + 1
        trial = cls(
            client=client,
            run_id=run.info.run_id,
            resumed=resumed,
            last_step=_last_logged_step(client, run) if resumed else 0,
            artifact_uri=run.info.artifact_uri,
            logged_params=dict(run.data.params),
        )
        if run.info.status != "RUNNING":
            with_retry(lambda: client.update_run(trial.run_id, status="RUNNING"), "reopen run")
        trial.set_tags({TAG_STATUS: "running", TAG_NODE: node or node_name(), TAG_ATTEMPT: attempt, **tags})
        trial.log_params(params)
        return trial

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params not yet on the run (params are immutable in MLflow; a changed value is warned about)."""
        _log_params(self.client, self.run_id, param_strings(params), existing=self.logged_params)

    def log_epoch(self, epoch: int, metrics: Mapping[str, Any]) -> bool:
        """All of one epoch's metrics in one batch with step = epoch; False if already logged."""
        if epoch <= self.last_step:
            return False
        batch = to_metrics(metrics, step=epoch, timestamp_ms=_now_ms())
        for chunk in _chunks(batch, _MAX_METRICS_PER_BATCH):
            with_retry(lambda c=chunk: self.client.log_batch(self.run_id, metrics=c), f"log epoch {epoch}")
        self.last_step = epoch
        return True

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        _set_tags(self.client, self.run_id, tags)

    def log_artifacts(self, local_dir: Path, artifact_path: Optional[str] = None) -> None:
        with_retry(
            lambda: self.client.log_artifacts(self.run_id, str(local_dir), artifact_path),
            "log artifacts",
        )

    def log_text(self, text: str, artifact_file: str) -> None:
        with_retry(lambda: self.client.log_text(self.run_id, text, artifact_file), f"log {artifact_file}")

    def finish(self, status: str, tags: Optional[Mapping[str, Any]] = None) -> None:
        """Set `vaelab.status` (finished / diverged / failed / stopped) and end the MLflow run."""
        if status not in STATUSES:
            raise ValueError(f"unknown trial status {status!r}; expected one of {STATUSES}")
        self.set_tags({TAG_STATUS: status, **(tags or {})})
        mlflow_status = RunStatus.to_string(
            RunStatus.FINISHED if status in ("finished", "diverged", "stopped") else RunStatus.FAILED
        )
        with_retry(lambda: self.client.set_terminated(self.run_id, status=mlflow_status), "end run")


def _create_run_once(
    client: MlflowClient,
    experiment_id: str,
    tags: Mapping[str, str],
    run_name: str,
    key_tag: str,
    key_value: str,
    parent_run_id: Optional[str],
):
    """The run tagged `key_tag=key_value` (under `parent_run_id`), created only if absent.

    Each attempt searches before creating, so a create that succeeded but reported an
    error (a dropped HTTP response) is found rather than duplicated.
    """
    match = {key_tag: key_value}
    if parent_run_id:
        match[TAG_PARENT] = parent_run_id

    def attempt():
        found = find_runs(client, experiment_id, match, with_retries=False)
        if found:
            if len(found) > 1:
                log.warning("%d runs carry %s=%s; continuing the oldest", len(found), key_tag, key_value)
            return found[-1]
        # the REST store takes string values only (SQLite would coerce an int silently)
        return client.create_run(experiment_id, tags={k: str(v) for k, v in tags.items()}, run_name=run_name)

    return with_retry(attempt, f"find or create run {key_tag}={key_value}")


def _last_logged_step(client: MlflowClient, run) -> int:
    """The highest epoch already logged on the run (0 if none)."""
    keys = ["epoch"] if "epoch" in run.data.metrics else list(run.data.metrics)
    last = 0
    for key in keys:
        history = with_retry(lambda k=key: client.get_metric_history(run.info.run_id, k), "metric history")
        last = max([last, *(m.step for m in history)])
    return last


def _log_params(client: MlflowClient, run_id: str, params: Mapping[str, str], existing: dict[str, str]) -> None:
    new = {}
    for key, value in params.items():
        if key in existing:
            if existing[key] != value:
                log.warning("param %s is already %r on run %s; %r not logged", key, existing[key], run_id, value)
            continue
        new[key] = value
    items = [Param(k, v) for k, v in new.items()]
    for chunk in _chunks(items, _MAX_PARAMS_PER_BATCH):
        with_retry(lambda c=chunk: client.log_batch(run_id, params=c), "log params")
    existing.update(new)


def _set_tags(client: MlflowClient, run_id: str, tags: Mapping[str, Any]) -> None:
    items = [RunTag(k, str(v)) for k, v in tags.items()]
    for chunk in _chunks(items, _MAX_PARAMS_PER_BATCH):
        with_retry(lambda c=chunk: client.log_batch(run_id, tags=c), "set tags")


