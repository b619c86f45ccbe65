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

Cost: one paginated `search_runs` for the whole experiment, then per trial one
`get_metric_history` per metric key and one `list_artifacts` (+ downloads). Histories and
artifacts are fetched on a small thread pool; downloaded artifacts of runs that have ended
are cached by run id and reused.

Only tracking/ imports mlflow; nothing here imports torch or ray. The tag names are those of
tags.py, shared with the write side (runs.py).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import types
import typing
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping

import yaml
from mlflow.entities import Run, ViewType
from mlflow.tracking import MlflowClient

from vaelab.config import TrialConfig
from vaelab.errors import VaelabError
from vaelab.tracking.connection import require_existing_store
from vaelab.tracking.tags import ROLE_STUDY, ROLE_TRIAL, TAG_PARENT, TAG_ROLE, TAG_RUN_NAME

STUDY_ARTIFACT = "study.yaml"
TRIAL_ARTIFACTS = ("unit_kl.json", "latents.npz", "prior_samples.npz")
ParamKind = Literal["int", "float", "bool", "str", "dims"]

_PAGE_SIZE = 1000
_CACHE_MARKER = ".vaelab-complete.json"


class StudyNotFoundError(VaelabError, LookupError):
    """No MLflow experiment (or no study run of the given name) for the study name."""


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


def param_kind(name: str) -> ParamKind:
    """How the MLflow string of param `name` is typed: from TrialConfig's annotation.

    Params TrialConfig does not know stay strings.
    """
    info = TrialConfig.model_fields.get(name)
    if info is None:
        return "str"
    return _annotation_kind(_strip_optional(info.annotation))


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


def open_client(tracking_uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=tracking_uri)


def _quiet_downloads() -> None:
    # MLflow draws a progress bar per downloaded file; hundreds of runs flood stderr.
    # setdefault: an explicit MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR of the user wins.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def read_study(study_name: str, tracking_uri: str, run: str | None = None) -> StudyRecord:
    """A study run (parent run with its parsed study.yaml) and its trial runs.

    `run`: the study run's name (as `vaelab run` printed it) or MLflow run id; None: the
    newest. One paginated search over the experiment; runs are split into parent/trials
    here. Raises StudyNotFoundError when there is no experiment named `study_name`, or no
    study run named `run` (the message lists the names there are).
    """
    require_existing_store(tracking_uri)  # a read never creates a tracking database
    client = open_client(tracking_uri)
    experiment = client.get_experiment_by_name(study_name)
    if experiment is None:
        raise StudyNotFoundError(
            f"no MLflow experiment named {study_name!r} at {tracking_uri} "
            "(the experiment name is the study name; `vaelab ls` lists them)"
        )
    runs = _search_all_runs(client, experiment.experiment_id)
    warnings: list[str] = []
    parent_run = _pick_parent(runs, warnings) if run is None else _named_parent(study_name, runs, run)
    parent = _study_run(client, parent_run, warnings) if parent_run is not None else None
    trials = _trial_runs(runs, parent_run, warnings)
    return StudyRecord(
        study=study_name,
        tracking_uri=tracking_uri,
        experiment_id=experiment.experiment_id,
        parent=parent,
        trials=tuple(trials),
        warnings=tuple(warnings),
    )


def _search_all_runs(client: MlflowClient, experiment_id: str) -> list[Run]:
    runs: list[Run] = []
    token: str | None = None
    while True:
        page = client.search_runs(
            [experiment_id],
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=_PAGE_SIZE,
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _role(run: Run) -> str:
    return run.data.tags.get(TAG_ROLE, "")


def study_run_name(run: Run) -> str:
    """The name `vaelab run` gave a study run (its Tune experiment folder)."""
    return run.data.tags.get(TAG_RUN_NAME) or run.info.run_name or run.info.run_id


def _study_runs(runs: list[Run]) -> list[Run]:
    """The experiment's study (parent) runs, newest first."""
    parents = [r for r in runs if _role(r) == ROLE_STUDY]
    return sorted(parents, key=lambda r: (r.info.start_time or 0, r.info.run_id), reverse=True)


def _pick_parent(runs: list[Run], warnings: list[str]) -> Run | None:
    parents = _study_runs(runs)
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


def _named_parent(study_name: str, runs: list[Run], name: str) -> Run:
    parents = _study_runs(runs)
    for run in parents:
        if name in (study_run_name(run), run.info.run_id):
            return run
    names = ", ".join(study_run_name(r) for r in parents) or "none"
    raise StudyNotFoundError(f"study {study_name!r} has no run named {name!r}; its runs: {names}")


def _study_run(client: MlflowClient, run: Run, warnings: list[str]) -> StudyRun:
    study_yaml = _read_yaml_artifact(client, run.info.run_id, STUDY_ARTIFACT)
    if study_yaml is None:
        warnings.append(f"parent run {run.info.run_id} has no {STUDY_ARTIFACT} artifact")
    return StudyRun(
        run_id=run.info.run_id,
        tags=dict(run.data.tags),
        study_yaml=study_yaml,
        start_time_ms=run.info.start_time or 0,
        run_name=study_run_name(run),
    )


def _read_yaml_artifact(client: MlflowClient, run_id: str, name: str) -> dict[str, Any] | None:
    names = {info.path for info in client.list_artifacts(run_id)}
    if name not in names:
        return None
    _quiet_downloads()
    with tempfile.TemporaryDirectory() as tmp:
        local = client.download_artifacts(run_id, name, tmp)
        loaded = yaml.safe_load(Path(local).read_text(encoding="utf-8"))
    if not isinstance(loaded, dict):
        raise ValueError(f"{name} of run {run_id} is not a mapping")
    return loaded


def _trial_runs(runs: list[Run], parent: Run | None, warnings: list[str]) -> list[TrialRun]:
    trials = [r for r in runs if _role(r) == ROLE_TRIAL]
    if parent is not None:
        mine = [r for r in trials if r.data.tags.get(TAG_PARENT) == parent.info.run_id]
        if len(mine) < len(trials):
            ignored = len(trials) - len(mine)
            warnings.append(f"{ignored} trial run(s) of other study runs ignored")
        trials = mine
    records = [_trial_run(r) for r in trials]
    _warn_duplicate_ids(records, warnings)
    return records


def _trial_run(run: Run) -> TrialRun:
    tags = dict(run.data.tags)
    trial_id = tags.get("vaelab.trial_id") or run.info.run_name or run.info.run_id
    try:
        params = typed_params(run.data.params)
    except ValueError as err:
        raise ValueError(f"trial {trial_id} (MLflow run {run.info.run_id}): {err}") from err
    return TrialRun(
        run_id=run.info.run_id,
        trial_id=trial_id,
        variant=tags.get("vaelab.variant", ""),
        status=trial_status(tags.get("vaelab.status"), run.info.status),
        mlflow_status=run.info.status,
        params=params,
        metrics={k: float(v) for k, v in run.data.metrics.items()},
        tags=tags,
        start_time_ms=run.info.start_time,
        end_time_ms=run.info.end_time,
    )


def trial_status(tag: str | None, mlflow_status: str) -> str:
    """finished / diverged / failed / stopped / running, from the vaelab.status tag and MLflow.

    A terminal tag wins (an unknown one is kept as written, so it is shown, not hidden);
    otherwise a run MLflow marks FAILED or KILLED has failed (a worker that died before it
    could tag), FINISHED is finished, anything else is still running.
    """
    tag = (tag or "").strip().lower()
    if tag and tag != "running":
        return tag
    if mlflow_status in ("FAILED", "KILLED"):
        return "failed"
    if mlflow_status == "FINISHED":
        return "finished"
    return "running"


def _warn_duplicate_ids(records: list[TrialRun], warnings: list[str]) -> None:
    seen: dict[str, int] = {}
    for record in records:
        seen[record.trial_id] = seen.get(record.trial_id, 0) + 1
    duplicated = sorted(t for t, n in seen.items() if n > 1)
    if duplicated:
        warnings.append(f"trial ids with several runs (reported as separate rows): {duplicated}")


# --------------------------------------------------------------------------- histories

History = dict[str, list[tuple[int, float]]]  # metric -> [(step, value)] sorted by step


def read_histories(
    tracking_uri: str, trials: Iterable[TrialRun], workers: int = 4
) -> dict[str, History]:
    """Full metric histories of every trial: run_id -> metric -> [(epoch, value)].

    One `get_metric_history` per (run, metric key). When a step was logged more than once
    (a retried trial re-logs the epochs after its last checkpoint), the value logged last
    wins, so each (metric, step) appears once.
    """
    client = open_client(tracking_uri)
    trials = list(trials)

    def fetch(trial: TrialRun) -> tuple[str, History]:
        return trial.run_id, {key: _history(client, trial.run_id, key) for key in sorted(trial.metrics)}

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return dict(pool.map(fetch, trials))


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    latest: dict[int, tuple[int, int, float]] = {}
    for order, metric in enumerate(client.get_metric_history(run_id, key)):
        rank = (metric.timestamp or 0, order)
        step = int(metric.step)
        if step not in latest or rank >= latest[step][:2]:
            latest[step] = (*rank, float(metric.value))
    return [(step, latest[step][2]) for step in sorted(latest)]


# --------------------------------------------------------------------------- artifacts


def download_trial_artifacts(
    tracking_uri: str,
    trials: Iterable[TrialRun],
    cache_dir: Path,
    names: tuple[str, ...] = TRIAL_ARTIFACTS,
    workers: int = 4,
) -> dict[str, dict[str, Path]]:
    """Download `names` of every trial into cache_dir/<run_id>/: run_id -> name -> local path.

    Artifacts may sit at the run's artifact root or one folder below it. A run that has
    ended is downloaded once: later calls reuse cache_dir/<run_id> when its marker matches
    the run's end time. Missing artifacts are simply absent from the result.
    """
    client = open_client(tracking_uri)
    cache_dir = Path(cache_dir)
    _quiet_downloads()

    def fetch(trial: TrialRun) -> tuple[str, dict[str, Path]]:
        return trial.run_id, _run_artifacts(client, trial, cache_dir / trial.run_id, names)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return dict(pool.map(fetch, list(trials)))


def _run_artifacts(
    client: MlflowClient, trial: TrialRun, dest: Path, names: tuple[str, ...]
) -> dict[str, Path]:
    fingerprint = {"end_time_ms": trial.end_time_ms, "names": list(names)}
    cached = _cached_artifacts(dest, fingerprint)
    if cached is not None:
        return cached
    dest.mkdir(parents=True, exist_ok=True)
    found: dict[str, Path] = {}
    for name, remote in _locate_artifacts(client, trial.run_id, names).items():
        local = Path(client.download_artifacts(trial.run_id, remote, str(dest / "remote")))
        target = dest / name
        local.replace(target)
        found[name] = target
    shutil.rmtree(dest / "remote", ignore_errors=True)
    if trial.end_time_ms is not None and trial.mlflow_status != "RUNNING":
        marker = {**fingerprint, "found": sorted(found)}
        (dest / _CACHE_MARKER).write_text(json.dumps(marker), encoding="utf-8")
    return found


def _cached_artifacts(dest: Path, fingerprint: dict[str, Any]) -> dict[str, Path] | None:
    marker = dest / _CACHE_MARKER
    if not marker.is_file():
        return None
    saved = json.loads(marker.read_text(encoding="utf-8"))
    if {k: saved.get(k) for k in fingerprint} != fingerprint:
        return None
    found = {name: dest / name for name in saved.get("found", [])}
    return found if all(p.is_file() for p in found.values()) else None


def _locate_artifacts(client: MlflowClient, run_id: str, names: tuple[str, ...]) -> dict[str, str]:
    """name -> artifact path, looking at the root and one folder down (root wins)."""
    located: dict[str, str] = {}
    root = client.list_artifacts(run_id)
    for info in root:
        if not info.is_dir and info.path in names:
            located[info.path] = info.path
    for folder in sorted((i.path for i in root if i.is_dir)):
        if len(located) == len(names):
            break
        for info in client.list_artifacts(run_id, folder):
            base = info.path.rsplit("/", 1)[-1]
            if not info.is_dir and base in names and base not in located:
                located[base] = info.path
    return located
