"""The Ray Tune runner: a study's trials on Ray Tune, each logging to its own MLflow run.

This is the only vaelab module that imports ray (STYLE 6: Ray's API moved several times,
so the next move touches one file). Ray is imported lazily, inside functions: a local Ray
must see RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before its first import so that every node
binds 127.0.0.1, while a driver joining a real cluster must not.

One Tune trial trains one cohort (S >= 1 members of one architecture in one set of kernels,
`Trainer`); each member has its own MLflow child run, created inside the trial and found
again by `vaelab.trial_id` when Tune retries or restores the trial (tracking/runs.py).

    grid / random   tune.grid_search over the pre-expanded cohorts (one Tune trial each)
    optuna          OptunaSearch (+ ConcurrencyLimiter, optional ASHA) over the study's
                    search space; every trial is a cohort of one
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Optional, Sequence

import yaml

from vaelab.errors import VaelabError
from vaelab.studies import tune_state
from vaelab.tracking.connection import check_reachable
from vaelab.tracking.queries import ended_trial_runs, list_trial_runs
from vaelab.tracking.runs import (
    StudyRunInfo,
    TrialRun,
    finish_study_run,
    mark_stale_trials,
    reopen_study_run,
    start_study_run,
    to_metrics,
)
from vaelab.tracking.tags import STATUSES, TAG_COHORT, TAG_RUN_NAME, TAG_TRIAL_KEY, TAG_VARIANT
from vaelab.tracking.uri import has_credentials, redact_uri, resolve_tracking_uri, sqlite_path

if TYPE_CHECKING:  # pragma: no cover - typing only
    from vaelab.train import EpochReport, Trainer

log = logging.getLogger(__name__)

CTX_KEY = "vaelab"  # the Tune config key holding the study context
COHORT_KEY = "cohort"  # grid/random: {"index": i, "members": [TrialSpec dicts]}
PARAMS_KEY = "params"  # optuna: the sampled point (axis -> value; a bundled axis takes a label)
SIDECAR = "vaelab_study.json"  # in the Tune experiment directory: what `resume` needs
CHECKPOINT_FILE = "checkpoint.pt"
STATUS_METRIC = "vaelab_status"  # in Tune results: running | finished | diverged | invalid
ENDED_STATUSES = ("finished", "diverged", "invalid")  # a trial with one of these reached its end
METRICS_SENT = "vaelab_metrics_sent"  # in Tune results: metric values sent to MLflow that epoch
# Fault injection for tests only: the trial process exits hard after reporting a
# checkpoint at epoch >= VAELAB_TEST_KILL_AT_EPOCH, once (the marker file records it).
KILL_EPOCH_ENV = "VAELAB_TEST_KILL_AT_EPOCH"
KILL_MARKER_ENV = "VAELAB_TEST_KILL_MARKER"
# Settings a trial needs from the driver, sent with the job's runtime_env. Credentials
# (MLFLOW_TRACKING_PASSWORD, AWS_*) are deliberately not: Ray keeps a job's runtime_env in
# its metadata. A local Ray inherits them from the driver's environment; on a cluster they
# belong in the nodes' environment (or the runtime_env of `ray job submit`).
FORWARDED_ENV = ("VAELAB_DATA_DIR", "VAELAB_TRACKING_RETRY_S", "MLFLOW_TRACKING_INSECURE_TLS",
                 "MLFLOW_S3_ENDPOINT_URL")
TAG_RAY_NODE = "vaelab.ray_node_id"  # beside vaelab.node (hostname/ip): the node a trial last ran on
REMOTE_SCHEMES = ("s3://", "gs://", "gcs://", "abfs://", "az://", "hdfs://")


class RunnerError(VaelabError):
    """A study cannot be launched or resumed as asked (storage, names, cluster)."""


# =========================================================================== the plan


@dataclass(frozen=True)
class Member:
    """One trial member: a TrialSpec as plain data (travels inside the Tune config)."""

    trial_key: str
    trial_id: str
    variant: str
    config: dict[str, Any]
    seed: int = 0


@dataclass(frozen=True)
class OptunaPlan:
    metric: str
    mode: str  # "max" | "min"
    num_samples: int
    max_concurrent: int
    space: dict[str, tuple]  # expand.tune_search_space: ("uniform", lo, hi), ("choice", [...]), ...
    epochs: int  # every trial's epochs (ASHA's max_t, the ETA)
    asha: Optional[dict[str, Any]] = None  # grace_period, reduction_factor
    seed: Optional[int] = None


@dataclass(frozen=True)
class LaunchPlan:
    """Everything the runner needs from a study, independent of the YAML schema."""

    study: str
    budget: str
    spec_hash: str
    study_yaml: str  # the resolved study (expand.resolved_yaml): rebuilds optuna trials in workers
    cohorts: list[list[Member]]  # grid / random; empty for optuna
    optuna: Optional[OptunaPlan]
    resources: dict[str, float]  # {"cpu": c, "gpu": g}
    max_failures: int = 2
    max_concurrent: Optional[int] = None  # grid / random: Tune trials at once (None: as resources allow)
    checkpoint_every: Optional[int] = None  # None: each trial's own `checkpoint_every`
    metric: str = "test_ll_iw"  # "best so far" in the progress line
    mode: str = "max"
    source_dir: Optional[Path] = None  # where the study file lives (git SHA)

    @property
    def n_trials(self) -> int:
        return self.optuna.num_samples if self.optuna else len(self.cohorts)


def plan_from_study(study: Any, budget: Optional[str] = None) -> LaunchPlan:
    """A loaded `vaelab.studies.Study` (load_study) as a LaunchPlan for one budget."""
    from vaelab.studies import expand

    budget = budget or study.budget
    if budget != study.budget:
        study = study.with_budget(budget)
    search = study.search
    metric = search.metric or "test_elbo"  # evaluated every eval_every epochs: a live "best so far"
    mode = search.direction or ("min" if metric.endswith("loss") else "max")
    budget_params = study.budget_params(budget)
    cohorts: list[list[Member]] = []
    optuna = None
    if search.mode == "optuna":
        fixed = {**study.search_space.fixed, **study.overrides, **budget_params}
        optuna = OptunaPlan(
            metric=metric,
            mode=mode,
            num_samples=int(study.num_samples_for(budget) or 8),
            max_concurrent=int(search.max_concurrent or 0),
            space=dict(expand.tune_search_space(study)),
            epochs=int(fixed.get("epochs", 2000)),
            asha=search.scheduler.model_dump() if search.scheduler else None,
            seed=search.seed,
        )
    else:
        trials = expand.expand_trials(study, budget)
        groups = expand.group_cohorts(trials, study.cohort_size) if study.cohort_size > 1 else [[t] for t in trials]
        cohorts = [[_member(t) for t in group] for group in groups]
    return LaunchPlan(
        study=study.name,
        budget=budget,
        spec_hash=expand.spec_hash(study),
        study_yaml=expand.resolved_yaml(study),
        cohorts=cohorts,
        optuna=optuna,
        resources={"cpu": float(study.resources.cpu), "gpu": float(study.resources.gpu)},
        max_failures=int(study.failure.max_failures),
        max_concurrent=search.max_concurrent,
        checkpoint_every=budget_params.get("checkpoint_every") or study.checkpoint_every,
        metric=metric,
        mode=mode,
        source_dir=_source_dir(study.source.file),
    )


def _member(spec: Any) -> Member:
    return Member(
        trial_key=str(spec.trial_key),
        trial_id=str(spec.trial_id),
        variant=str(spec.variant or ""),
        config=dict(spec.config),
        seed=int(spec.seed),
    )


def _source_dir(file: str) -> Optional[Path]:
    path = Path(file)
    return path.resolve().parent if path.exists() else None


def _optuna_member(ctx: Mapping[str, Any], point: Mapping[str, Any], cohort_id: str) -> Optional[Member]:
    """The trial optuna proposed, built by the studies module from the resolved study.

    None when the point is excluded or invalid: there is nothing to train."""
    from vaelab.errors import SpecError
    from vaelab.studies import expand

    with tempfile.TemporaryDirectory(prefix="vaelab-study-") as tmp:
        path = Path(tmp) / "study.yaml"
        path.write_text(ctx["study_yaml"])
        study = expand.load_study(path, ctx["budget"] or None)
        try:
            spec = expand.trial_from_point(study, dict(point), budget=ctx["budget"] or None)
        except SpecError as err:
            log.warning("optuna proposed an invalid point %s: %s", dict(point), err)
            return None
    # Two optuna trials may propose the same point: the Tune trial id keeps their runs apart.
    return dataclasses.replace(_member(spec), trial_id=f"{spec.trial_id}-{cohort_id}",
                               config=absolute_paths(spec.config, Path(ctx.get("cwd") or Path.cwd())))


# =========================================================================== paths


def resolve_storage(storage: Optional[str]) -> str:
    """`./ray_results` by default; local paths absolute, s3:// etc. unchanged."""
    storage = storage or os.environ.get("VAELAB_STORAGE") or "ray_results"
    if storage.startswith(REMOTE_SCHEMES):
        return storage.rstrip("/")
    if storage.startswith("file://"):
        storage = storage[len("file://") :]
    return str(Path(storage).expanduser().resolve())


def is_remote_storage(storage: str) -> bool:
    return storage.startswith(REMOTE_SCHEMES)


def absolute_paths(config: Mapping[str, Any], base: Path) -> dict[str, Any]:
    """data_dir and init_from made absolute: a trial runs in its own working directory."""
    out = dict(config)
    for key in ("data_dir", "init_from"):
        value = out.get(key)
        if isinstance(value, str) and value and "://" not in value:
            out[key] = str((base / Path(value).expanduser()).resolve())
    return out


def _join(storage: str, name: str) -> str:
    return f"{storage}/{name}" if is_remote_storage(storage) else str(Path(storage) / name)


def _filesystem(path: str):
    import pyarrow.fs

    if is_remote_storage(path):
        return pyarrow.fs.FileSystem.from_uri(path)
    return pyarrow.fs.LocalFileSystem(), path


def _exists(path: str) -> bool:
    import pyarrow.fs

    fs, inner = _filesystem(path)
    return fs.get_file_info(inner).type != pyarrow.fs.FileType.NotFound


def write_sidecar(experiment_path: str, meta: Mapping[str, Any]) -> None:
    fs, inner = _filesystem(experiment_path)
    fs.create_dir(inner, recursive=True)
    with fs.open_output_stream(f"{inner}/{SIDECAR}") as out:
        out.write(json.dumps(meta, indent=2, sort_keys=True).encode())


def read_sidecar(experiment_path: str) -> dict[str, Any]:
    fs, inner = _filesystem(experiment_path)
    try:
        with fs.open_input_stream(f"{inner}/{SIDECAR}") as src:
            return json.loads(src.read().decode())
    except (FileNotFoundError, OSError) as err:
        raise RunnerError(
            f"{experiment_path} holds no vaelab study ({SIDECAR} missing): check the name and --storage"
        ) from err


def stored_runs(storage: str) -> list[dict[str, Any]]:
    """The sidecars of every vaelab study run under `storage`, newest first."""
    import pyarrow.fs

    fs, inner = _filesystem(storage)
    try:
        entries = fs.get_file_info(pyarrow.fs.FileSelector(inner, allow_not_found=True))
    except OSError:
        return []
    runs = []
    for entry in entries:
        if entry.type != pyarrow.fs.FileType.Directory:
            continue
        try:
            runs.append(read_sidecar(_join(storage, entry.base_name)))
        except (RunnerError, ValueError):
            continue
    return sorted(runs, key=lambda m: (m.get("created", ""), m.get("run_name", "")), reverse=True)


def find_run_name(storage: str, name: str) -> str:
    """The run `vaelab resume NAME` means: the run named NAME, else the only run whose name
    starts with NAME (a study name, or STUDY-BUDGET). Several or none: an error listing
    the runs there are."""
    if _exists(_join(storage, name)):
        return name
    runs = [m.get("run_name", "") for m in stored_runs(storage)]
    matches = [r for r in runs if r.startswith(name)]
    if len(matches) == 1:
        return matches[0]
    listed = ", ".join(matches or runs) or "none"
    if matches:
        raise RunnerError(f"{name!r} matches several runs in {storage}: {listed} (newest first); "
                          "name one of them")
    raise RunnerError(f"no vaelab study run {name!r} in {storage}; the runs there: {listed} "
                      "(or check --storage)")


# =========================================================================== the trainable


def cohort_trainable(config: dict[str, Any]) -> None:
    """The Tune function trainable: train one cohort, log every member to its MLflow run.

    `config[CTX_KEY]` carries the study context (parent run, tracking URI, fault
    injection); the cohort comes from `config[COHORT_KEY]` (grid) or from
    the optuna point `config[PARAMS_KEY]` rebuilt by the studies module (optuna).
    """
    from ray import tune

    from vaelab.config import trial_config
    from vaelab.hardware import use_cpu_threads
    from vaelab.train import Trainer

    # exactly the CPUs Tune gave this trial: packed trials must not oversubscribe a node
    use_cpu_threads(ray_assigned_cpus())
    ctx = config[CTX_KEY]
    cohort_id = tune.get_context().get_trial_id()
    members = _cohort_members(config, cohort_id)
    if not members:  # an optuna point the study excludes: report it as a failed point
        tune.report({ctx["metric"]: math.nan, STATUS_METRIC: "invalid"})
        return
    ended = _ended_payload(ctx, members)
    if ended is not None:  # every member already ended in MLflow: report that, train nothing
        tune.report(ended)
        return
    configs = [trial_config(m.config) for m in members]
    try:
        trainer = Trainer(configs)
        resumed_epoch = _restore(trainer, tune.get_checkpoint())
    except Exception as err:
        _record_start_failure(ctx, members, configs, cohort_id, err)
        raise
    runs = _open_runs(ctx, members, configs, trainer, cohort_id, resumed_epoch)
    every = int(ctx.get("checkpoint_every") or configs[0].checkpoint_every)
    latest: dict[str, Any] = {}
    try:
        if trainer.epoch >= configs[0].epochs or all(s == "diverged" for s in trainer.status):
            # Restored from the final checkpoint (the driver died before Tune recorded
            # the end): nothing to train; make sure every run is closed with artifacts.
            _close_runs(runs, trainer, members, configs)
            return
        for report in trainer.run():
            sent = _log_report(runs, report, configs)
            if report.is_last:
                _close_runs(runs, trainer, members, configs)
            latest.update(report.metrics[0])
            payload = _tune_metrics(latest, report, ctx.get("metric"))
            payload[METRICS_SENT] = sent  # this epoch, all members: what MLflow must hold
            due = report.is_last or report.epoch % every == 0
            _report(tune, trainer, payload, checkpoint=due)
            _maybe_inject_fault(ctx, report.epoch, due and not report.is_last)
    except SystemExit:
        # Tune stopped the trial (a scheduler such as ASHA, or the experiment ending).
        _end_open_runs(runs, "stopped", "stopped by Ray Tune")
        raise
    except BaseException as err:
        _end_open_runs(runs, "failed", f"{type(err).__name__}: {err}")
        raise


def _ended_payload(ctx: Mapping[str, Any], members: Sequence[Member]) -> Optional[dict[str, Any]]:
    """The Tune result of a cohort whose members' MLflow runs all ended (finished or
    diverged), else None. Tune's saved experiment state can lag behind MLflow (a Ctrl-C or
    a killed driver right after a trial's last epoch): MLflow, which the user sees, decides
    what `vaelab resume` reruns."""
    ended = ended_trial_runs(_run_info(ctx), [m.trial_id for m in members])
    if len(ended) < len(members):
        return None
    rows = [ended[m.trial_id] for m in members]
    payload = {k: float(v) for k, v in rows[0]["metrics"].items()}
    metric = ctx.get("metric")
    if metric and metric not in payload:
        payload[metric] = math.nan
    diverged = sum(r["status"] == "diverged" for r in rows)
    payload.update({"members": len(rows), "members_diverged": diverged, METRICS_SENT: 0,
                    STATUS_METRIC: "diverged" if diverged == len(rows) else "finished"})
    return payload


def _cohort_members(config: Mapping[str, Any], cohort_id: str) -> list[Member]:
    if COHORT_KEY in config:
        return [Member(**m) for m in config[COHORT_KEY]["members"]]
    member = _optuna_member(config[CTX_KEY], config[PARAMS_KEY], cohort_id)
    return [member] if member else []


def _restore(trainer: "Trainer", checkpoint: Any) -> int:
    """Load the latest Tune checkpoint into the trainer; returns the epoch restored (0: none)."""
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as directory:
        trainer.load(Path(directory) / CHECKPOINT_FILE)
    return trainer.epoch


def _open_runs(
    ctx: Mapping[str, Any],
    members: Sequence[Member],
    configs: Sequence[Any],
    trainer: "Trainer",
    cohort_id: str,
    resumed_epoch: int,
) -> list[Optional[TrialRun]]:
    """One MLflow run per member (found again on retry); None for a member already ended."""
    info = _run_info(ctx)
    node = _node()
    runs: list[Optional[TrialRun]] = []
    for member, cfg, status in zip(members, configs, trainer.status):
        if status == "diverged":  # its run was closed when it diverged (before this checkpoint)
            runs.append(None)
            continue
        run = TrialRun.open(
            info,
            member.trial_id,
            run_name=member.trial_key,
            params=cfg.to_params(),
            tags={
                TAG_VARIANT: member.variant,
                TAG_TRIAL_KEY: member.trial_key,
                TAG_COHORT: cohort_id,
                TAG_RUN_NAME: ctx["run_name"],
                "vaelab.resumed_from_epoch": resumed_epoch,
                TAG_RAY_NODE: _ray_node_id(),
            },
            node=node,
        )
        if run.last_step > resumed_epoch:
            # Epochs after the checkpoint were logged by the lost attempt; they are trained
            # again but not logged twice (MLflow keeps the first values).
            run.set_tags({"vaelab.relogged_epochs_skipped": f"{resumed_epoch + 1}-{run.last_step}"})
        runs.append(run)
    return runs


def _record_start_failure(
    ctx: Mapping[str, Any], members: Sequence[Member], configs: Sequence[Any], cohort_id: str, err: Exception
) -> None:
    """A trial that cannot even start (missing data, bad checkpoint) still gets its runs,
    marked failed with the reason, so the study's record shows it."""
    try:
        info = _run_info(ctx)
        for member, cfg in zip(members, configs):
            run = TrialRun.open(
                info, member.trial_id, run_name=member.trial_key, params=cfg.to_params(),
                tags={TAG_VARIANT: member.variant, TAG_TRIAL_KEY: member.trial_key,
                      TAG_COHORT: cohort_id, TAG_RUN_NAME: ctx["run_name"]},
                node=_node(),
            )
            run.finish("failed", {"vaelab.error": f"{type(err).__name__}: {err}"[:4000]})
    except Exception as record_err:  # noqa: BLE001 - the original error is the one to raise
        log.warning("could not record the failure in MLflow: %s", record_err)


def _run_info(ctx: Mapping[str, Any]) -> StudyRunInfo:
    uri = ctx.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise RunnerError("no tracking URI in the trial's config or environment (MLFLOW_TRACKING_URI)")
    return StudyRunInfo(
        tracking_uri=resolve_tracking_uri(uri),
        experiment_id=ctx["experiment_id"],
        parent_run_id=ctx["parent_run_id"],
        study=ctx["study"],
    )


def _ray_node_id() -> str:
    """The Ray node this trial runs on (hostname/ip can repeat: several nodes on one host)."""
    import ray

    try:
        return ray.get_runtime_context().get_node_id() or ""
    except Exception:  # noqa: BLE001 - outside a Ray worker
        return ""


def _node() -> str:
    import socket

    import ray

    try:
        ip = ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - outside a Ray worker
        ip = "127.0.0.1"
    return f"{socket.gethostname()}/{ip}"


def _log_report(
    runs: list[Optional[TrialRun]], report: "EpochReport", configs: Sequence[Any]
) -> int:
    """One batch per member for this epoch; a member that just diverged is closed as such.

    Returns how many metric values were sent (0 for an epoch an earlier attempt logged)."""
    sent = 0
    for s, run in enumerate(runs):
        if run is None:
            continue
        if run.log_epoch(report.epoch, report.metrics[s]):
            sent += len(to_metrics(report.metrics[s], step=report.epoch, timestamp_ms=0))
        if report.status[s] == "diverged":
            run.log_text(_config_yaml(configs[s]), "config.yaml")
            run.finish("diverged", {"vaelab.diverged_epoch": report.epoch})
            runs[s] = None
    return sent


def _close_runs(
    runs: list[Optional[TrialRun]], trainer: "Trainer", members: Sequence[Member],
    configs: Sequence[Any],
) -> None:
    """Last epoch: export each member's artifacts and config.yaml, then mark it finished."""
    for s, run in enumerate(runs):
        if run is None:
            continue
        with tempfile.TemporaryDirectory(prefix="vaelab-artifacts-") as tmp:
            trainer.export_artifacts(s, Path(tmp))
            run.log_artifacts(Path(tmp))
        run.log_text(_config_yaml(configs[s]), "config.yaml")
        run.finish("finished")
        runs[s] = None


def _end_open_runs(runs: list[Optional[TrialRun]], status: str, reason: str) -> None:
    for s, run in enumerate(runs):
        if run is None:
            continue
        try:
            run.finish(status, {"vaelab.error": reason[:4000]})
        except Exception as err:  # noqa: BLE001 - the original error matters more
            log.warning("could not mark run %s %s: %s", run.run_id, status, err)
        runs[s] = None


def _config_yaml(cfg: Any) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def _tune_metrics(latest: Mapping[str, Any], report: "EpochReport", metric: Optional[str]) -> dict[str, Any]:
    """Member 0's metrics (latest value of each, so evaluation metrics persist between
    evaluations) plus a cohort summary. The searched metric is always present (NaN until
    first evaluated): Tune rejects results that lack it."""
    payload = {k: float(v) for k, v in latest.items() if isinstance(v, (int, float))}
    if metric and metric not in payload:
        payload[metric] = math.nan
    diverged = sum(s == "diverged" for s in report.status)
    payload["members"] = len(report.status)
    payload["members_diverged"] = diverged
    payload[STATUS_METRIC] = (
        "diverged" if diverged == len(report.status) else "finished" if report.is_last else "running"
    )
    return payload


def _report(tune: Any, trainer: "Trainer", payload: dict[str, Any], checkpoint: bool) -> None:
    if not checkpoint:
        tune.report(payload)
        return
    with tempfile.TemporaryDirectory(prefix="vaelab-ckpt-") as tmp:
        trainer.save(Path(tmp) / CHECKPOINT_FILE)
        tune.report(payload, checkpoint=tune.Checkpoint.from_directory(tmp))


def _maybe_inject_fault(ctx: Mapping[str, Any], epoch: int, checkpointed: bool) -> None:
    fault = ctx.get("fault")
    if not fault or not checkpointed or epoch < int(fault["kill_at_epoch"]):
        return
    try:
        fd = os.open(fault["marker"], os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return  # killed once already
    os.write(fd, f"killed at epoch {epoch} pid {os.getpid()}\n".encode())
    os.close(fd)
    os._exit(1)


def _fault_from_env() -> Optional[dict[str, Any]]:
    epoch, marker = os.environ.get(KILL_EPOCH_ENV), os.environ.get(KILL_MARKER_ENV)
    if not epoch or not marker:
        return None
    return {"kill_at_epoch": int(epoch), "marker": str(Path(marker).resolve())}


# =========================================================================== progress


def _make_progress_callback(metric: str, mode: str, total: int, interval_s: float = 5.0):
    """A tune.Callback printing one compact line: trials done/running/failed, best, ETA."""
    from ray import tune

    class Progress(tune.Callback):
        def __init__(self) -> None:
            self.metric, self.mode, self.total, self.interval_s = metric, mode, total, interval_s
            self._reset()

        def _reset(self) -> None:
            self.start = time.monotonic()
            self.last_print = 0.0
            self.iters_at_start: dict[str, int] = {}
            self.last_line = ""

        def setup(self, **info: Any) -> None:
            self._reset()

        def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
            if time.monotonic() - self.last_print >= self.interval_s:
                self._print(trials)

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._print(trials)

        def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            print(f"[vaelab] {_trial_label(trial)} failed ({_error_line(trial)}); retrying from its "
                  f"last checkpoint (failure {trial.num_failures})", file=sys.stderr, flush=True)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            print(f"[vaelab] {_trial_label(trial)} failed for good ({_error_line(trial)}); "
                  f"details: {trial.error_file or trial.path}", file=sys.stderr, flush=True)
            self._print(trials)

        def on_experiment_end(self, trials: list, **info: Any) -> None:
            self._print(trials, force=True)

        def _print(self, trials: list, force: bool = False) -> None:
            self.last_print = time.monotonic()
            line = progress_line(trials, self.metric, self.mode, self.total, self.start, self.iters_at_start)
            if line != self.last_line or force:
                print(line, file=sys.stderr, flush=True)
                self.last_line = line

    return Progress()


def _trial_label(trial: Any) -> str:
    cohort = trial.config.get(COHORT_KEY)
    if cohort:
        return "trial " + " + ".join(m["trial_key"] for m in cohort["members"])
    return f"trial {trial.trial_id}"


def _error_line(trial: Any) -> str:
    try:
        error = trial.get_pickled_error() or trial.get_error()
    except Exception:  # noqa: BLE001 - a message is all we want
        error = None
    if error is None:
        return _error_file_line(trial) or "its worker process died"
    text = str(error).strip()
    # Ray wraps the cause; its most useful line is usually the last non-empty one
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    head = next((ln for ln in lines if "actor died" in ln.lower() or "Error" in ln), lines[-1] if lines else "")
    return f"{type(error).__name__}: {head[:200]}"


def _error_file_line(trial: Any) -> str:
    try:
        text = Path(trial.error_file).read_text() if trial.error_file else ""
    except OSError:
        return ""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:200] if lines else ""


def progress_line(
    trials: Sequence[Any], metric: str, mode: str, total: int, start: float, iters_at_start: dict[str, int]
) -> str:
    """`[vaelab 0:01:23] 3/8 done · 2 running · 0 failed · 1 diverged · best test_ll_iw -85.31 · ETA 0:02:10`.

    `done` counts trials that reached their end (last epoch, or diverged); a trial Tune
    ended before that (Ctrl-C, a scheduler) is `stopped`, one never started is in neither.
    ETA: the work left (in trials; a running trial counts by its share of epochs done)
    at the rate work was done so far in this session."""
    done = running = failed = diverged = stopped = 0
    work_done = 0.0  # this session, in trials
    work_left = float(max(total - len(trials), 0))  # trials not even created yet
    best: Optional[float] = None
    for trial in trials:
        result = trial.last_result or {}
        it = int(result.get("training_iteration", 0) or 0)
        first = iters_at_start.setdefault(trial.trial_id, it)
        epochs = max(_trial_epochs(trial.config), 1)
        if trial.status == "TERMINATED" and result.get(STATUS_METRIC) in ENDED_STATUSES:
            done += 1
            diverged += result.get(STATUS_METRIC) == "diverged"
            work_done += 1.0 - min(first / epochs, 1.0)
        elif trial.status == "TERMINATED":
            stopped += 1
            work_done += max(it - first, 0) / epochs
        elif trial.status == "ERROR":
            failed += 1
        else:
            running += trial.status == "RUNNING"
            work_done += max(it - first, 0) / epochs
            work_left += 1.0 - min(it / epochs, 1.0)
        value = result.get(metric)
        if isinstance(value, (int, float)) and math.isfinite(value):
            better = best is None or (value > best if mode == "max" else value < best)
            best = value if better else best
    elapsed = time.monotonic() - start
    if work_left <= 0:
        eta = "0:00:00"
    else:
        eta = _clock(elapsed / work_done * work_left) if work_done > 0.05 else "?"
    parts = [f"{done}/{total} done", f"{running} running", f"{failed} failed"]
    if stopped:
        parts.append(f"{stopped} stopped")
    if diverged:
        parts.append(f"{diverged} diverged")
    parts.append(f"best {metric} {best:.4g}" if best is not None else f"best {metric} -")
    parts.append(f"ETA {eta}")
    return f"[vaelab {_clock(elapsed)}] " + " · ".join(parts)


def _trial_epochs(config: Mapping[str, Any]) -> int:
    if COHORT_KEY in config:
        return int(config[COHORT_KEY]["members"][0]["config"].get("epochs", 1))
    return int(config.get(CTX_KEY, {}).get("epochs") or 1)


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


# =========================================================================== Ray


def connect_ray(
    address: Optional[str], tracking_uri: str, *, num_cpus: Optional[int] = None,
    num_gpus: Optional[int] = None,
) -> bool:
    """Start a local Ray in-process (address None/"local") or join a cluster.

    Returns whether this call started Ray (then the caller shuts it down). The tracking URI
    reaches every worker as MLFLOW_TRACKING_URI through the job's runtime_env, unless it
    carries credentials (see `_pass_credentialed_uri_by_environment`). A local Ray
    binds 127.0.0.1 only (every node address, and the dashboard, which is not started);
    inside `ray job submit`, settings the job's own runtime_env already carries are left
    to it (Ray refuses to merge two values of one variable).
    """
    local = address in (None, "", "local")
    if local:
        # Loopback only: set before ray is imported for the first time in this process.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        _quiet_ray_hints("ray._private.authentication.authentication_token_setup")
    import ray

    if ray.is_initialized():
        return False
    env_vars = {"MLFLOW_TRACKING_URI": tracking_uri}
    env_vars.update({k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)})
    env_vars = _without_job_env_vars(env_vars)
    if "MLFLOW_TRACKING_URI" in env_vars and has_credentials(tracking_uri):
        env_vars.pop("MLFLOW_TRACKING_URI")
        _pass_credentialed_uri_by_environment(tracking_uri, local)
    kwargs: dict[str, Any] = dict(
        include_dashboard=False,
        log_to_driver=os.environ.get("VAELAB_RAY_LOG_TO_DRIVER", "0") == "1",
        configure_logging=True,
        logging_level=logging.WARNING,
    )
    if env_vars:
        kwargs["runtime_env"] = {"env_vars": env_vars}
    if local:
        kwargs.update(address="local", num_cpus=num_cpus or os.cpu_count() or 1, dashboard_host="127.0.0.1")
        if num_gpus is not None:
            kwargs["num_gpus"] = num_gpus
    else:
        kwargs["address"] = address
    attempts = CLIENT_CONNECT_ATTEMPTS if str(address).startswith("ray://") else 1
    for attempt in range(1, attempts + 1):
        try:
            ray.init(**kwargs)
            return True
        except ConnectionError as err:
            # Ray Client's proxy forks one server process per client; that fork sometimes
            # dies at birth ("Starting Ray client server failed"). A new connection gets a
            # new server.
            if attempt == attempts:
                raise
            log.warning("Ray Client connection to %s failed (%s); retrying", address, str(err).strip()[-200:])
            ray.shutdown()
            time.sleep(2.0 * attempt)
    return True


CLIENT_CONNECT_ATTEMPTS = 3


def _pass_credentialed_uri_by_environment(tracking_uri: str, local: bool) -> None:
    """A tracking URI that carries a password never goes into Ray's runtime_env, which Ray
    keeps in its job metadata and shows on the dashboard. A local Ray's workers inherit this
    process's environment, so it is set here; on a cluster the nodes' own environment (or
    `ray job submit --runtime-env-json`, the user's explicit choice) must carry it."""
    if local:
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
        return
    raise RunnerError(
        f"tracking URI {redact_uri(tracking_uri)} carries credentials, which vaelab does not "
        "send through Ray's runtime_env (Ray stores it in its job metadata and shows it on the "
        "dashboard): set MLFLOW_TRACKING_URI, or MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD "
        "with a URI without them, in every node's environment before `ray start`, or submit the "
        "study with `ray job submit --runtime-env-json '{\"env_vars\": {...}}' -- vaelab run ...`"
    )


JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray for the driver of a submitted job


def job_runtime_env() -> Optional[dict[str, Any]]:
    """The runtime_env of the `ray job submit` this process is the driver of, else None."""
    raw = os.environ.get(JOB_CONFIG_ENV)
    if not raw:
        return None
    try:
        return dict(json.loads(raw).get("runtime_env") or {})
    except (ValueError, AttributeError):
        return None


def _without_job_env_vars(env_vars: Mapping[str, str]) -> dict[str, str]:
    """`env_vars` less those the submitted job's runtime_env sets already (those reach the
    workers anyway). A tracking URI that differs from the job's is an error: the trials
    would log somewhere else than the driver."""
    job_env = (job_runtime_env() or {}).get("env_vars") or {}
    out = {}
    for key, value in env_vars.items():
        if key not in job_env:
            out[key] = value
        elif key == "MLFLOW_TRACKING_URI" and resolve_tracking_uri(job_env[key]) != value:
            raise RunnerError(
                f"--tracking-uri {redact_uri(value)} differs from MLFLOW_TRACKING_URI="
                f"{redact_uri(job_env[key])} in the job's runtime_env: the trials would log "
                "elsewhere; pass one of them"
            )
    return out


def check_job_paths(storage: str, tracking_uri: str) -> None:
    """Under `ray job submit --working-dir`, the driver runs in a temporary copy of that
    directory which Ray deletes: a relative --storage or SQLite path would vanish with it."""
    if not (job_runtime_env() or {}).get("working_dir"):
        return
    cwd = Path.cwd().resolve()
    for what, path in (("storage", None if is_remote_storage(storage) else Path(storage)),
                       ("SQLite tracking database", sqlite_path(tracking_uri))):
        if path is not None and (path == cwd or cwd in path.parents):
            raise RunnerError(
                f"{what} {path} lies in the job's temporary working directory (ray job submit "
                "--working-dir), which Ray deletes when the job ends: pass an absolute path every "
                "node sees (--storage /shared/ray_results --shared-storage), s3://..., or an MLflow "
                "server (--tracking-uri http://HOST:PORT)"
            )


def shutdown_ray() -> None:
    import ray

    ray.shutdown()


def alive_nodes() -> int:
    import ray

    return sum(1 for n in ray.nodes() if n.get("Alive"))


def check_cluster_storage(
    address: Optional[str], storage: str, tracking_uri: str, shared_storage: bool
) -> None:
    """On a multi-node cluster, trials on other machines must reach storage and tracking."""
    if address in (None, "", "local") or shared_storage:
        return
    remote_client = str(address).startswith("ray://")
    nodes = alive_nodes()
    if not (remote_client or nodes > 1):
        return
    where = "through Ray Client" if remote_client else f"on a {nodes}-node cluster"
    if not is_remote_storage(storage):
        raise RunnerError(
            f"storage {storage} is a local path, but trials run {where}: checkpoints written "
            "on other machines would be lost and `vaelab resume` could not find them. Pass "
            "--storage s3://BUCKET/PATH (or gs://...), or a path on a filesystem every node "
            "mounts (NFS) together with --shared-storage"
        )
    if sqlite_path(tracking_uri) is not None:
        raise RunnerError(
            f"tracking URI {redact_uri(tracking_uri)} is a SQLite file, but trials run "
            f"{where}: run an MLflow server (`mlflow server --host 127.0.0.1 ...` behind your "
            "network's access control) and pass --tracking-uri http://HOST:PORT, or pass "
            "--shared-storage if the file is on a filesystem every node mounts"
        )


def ray_assigned_cpus() -> float:
    """CPUs Ray assigned to the calling task or actor (1 when it says nothing)."""
    import ray

    return float(ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)) or 1.0


def _cpu_slots(resources: Mapping[str, float]) -> int:
    """How many trials fit on the cluster's CPUs at once."""
    import ray

    cpus = ray.cluster_resources().get("CPU", os.cpu_count() or 1)
    return max(1, int(cpus // max(resources.get("cpu", 1) or 1, 1e-9)))


def _trainable(resources: Mapping[str, float]):
    from ray import tune

    return tune.with_resources(
        cohort_trainable, {k: v for k, v in resources.items() if v}
    )


def _search_space(spec: Mapping[str, tuple]) -> dict[str, Any]:
    """The study's search space (('uniform', lo, hi), ...) as Tune domains."""
    from ray import tune

    makers: dict[str, Callable[..., Any]] = {
        "uniform": tune.uniform,
        "loguniform": tune.loguniform,
        "randint": tune.randint,  # hi excluded, as in expand's random sampler
        "choice": lambda values: tune.choice(list(values)),
        "grid": lambda values: tune.choice(list(values)),
    }
    space = {}
    for name, item in spec.items():
        kind, *args = item
        if kind not in makers:
            raise RunnerError(f"search space: {name}: {kind!r} is not supported by optuna search")
        space[name] = makers[kind](*args)
    return space


def _param_space(plan: LaunchPlan, ctx: Mapping[str, Any]) -> dict[str, Any]:
    from ray import tune

    if plan.optuna:
        return {CTX_KEY: dict(ctx), PARAMS_KEY: _search_space(plan.optuna.space)}
    cohorts = [
        {"index": i, "members": [dataclasses.asdict(m) for m in members]}
        for i, members in enumerate(plan.cohorts)
    ]
    return {CTX_KEY: dict(ctx), COHORT_KEY: tune.grid_search(cohorts)}


def _tune_config(plan: LaunchPlan):
    from ray import tune

    if not plan.optuna:
        return tune.TuneConfig(
            num_samples=1, trial_dirname_creator=trial_dirname, max_concurrent_trials=plan.max_concurrent
        )
    import optuna
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    opt = plan.optuna
    concurrent = opt.max_concurrent or _cpu_slots(plan.resources)
    searcher = ConcurrencyLimiter(OptunaSearch(seed=opt.seed), max_concurrent=concurrent)
    scheduler = None
    if opt.asha is not None:
        from ray.tune.schedulers import ASHAScheduler

        # One Tune result per epoch, so training_iteration counts epochs (also after a restore).
        scheduler = ASHAScheduler(
            time_attr="training_iteration",
            max_t=opt.epochs,
            grace_period=int(opt.asha.get("grace_period", 1)),
            reduction_factor=float(opt.asha.get("reduction_factor", 4)),
        )
    return tune.TuneConfig(
        metric=opt.metric,
        mode=opt.mode,
        search_alg=searcher,
        scheduler=scheduler,
        num_samples=opt.num_samples,
        trial_dirname_creator=trial_dirname,
    )


def trial_dirname(trial: Any) -> str:
    """Short trial directory names (Tune's default embeds the whole cohort config)."""
    cohort = trial.config.get(COHORT_KEY)
    prefix = f"cohort_{cohort['index']:04d}" if cohort else "trial"
    return f"{prefix}-{trial.trial_id}"  # Tune trial ids hold no '-'; _tune_statuses parses it back


def _run_config(name: str, storage: str, plan: LaunchPlan, progress: bool):
    from ray import tune

    callbacks = [_make_progress_callback(plan.metric, plan.mode, plan.n_trials)] if progress else []
    return tune.RunConfig(
        name=name,
        storage_path=storage,
        failure_config=tune.FailureConfig(max_failures=plan.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        verbose=0,
        callbacks=callbacks,
    )


# =========================================================================== results


@dataclass
class StudyResult:
    """The outcome of `run_study` / `resume_study`."""

    name: str
    study: str
    parent_run_id: str
    experiment_path: str
    tracking_uri: str  # redacted
    trials: list[dict[str, Any]]  # one row per MLflow trial run
    counts: dict[str, int]
    tune_errors: list[str] = field(default_factory=list)
    report_dir: Optional[Path] = None
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return not self.interrupted and not self.tune_errors and not self.counts.get("failed")


def _conclude(
    results: Any, info: StudyRunInfo, name: str, experiment_path: str, plan_metric: str,
    *, build_report: bool, report_dir: Optional[Path], interrupted: bool, echo: Callable[[str], None],
) -> StudyResult:
    if not interrupted:  # interrupted trials are paused, to be resumed: leave them running
        mark_stale_trials(info, _tune_statuses(results))
    rows = list_trial_runs(info)
    counts = _count(rows)
    errors = [f"{getattr(r, 'path', '?')}: {type(r.error).__name__}: {r.error}"
              for r in results if getattr(r, "error", None) is not None]
    expected_done = not interrupted and not errors
    status = "finished" if expected_done else ("interrupted" if interrupted else "failed")
    finish_study_run(
        info, status, {f"vaelab.trials_{k}": str(v) for k, v in counts.items()}
    )
    echo(summary_table(rows, plan_metric))
    out = None
    if build_report and rows:
        out = _build_report(info, name, report_dir, echo)
    return StudyResult(
        name=name, study=info.study, parent_run_id=info.parent_run_id,
        experiment_path=experiment_path, tracking_uri=redact_uri(info.tracking_uri),
        trials=rows, counts=counts, tune_errors=errors, report_dir=out, interrupted=interrupted,
    )


def time_line(clock: Sequence[float], rows: Sequence[Mapping[str, Any]]) -> str:
    """Where a study's wall time went: `time 0:02:03 = Ray start 9 s + trials 0:01:31 (26 s
    of it training and evaluating, summed over trials; ...) + summary and report 21 s`.
    `clock`: Ray starting, Ray up, Tune done, end."""
    start, ray_up, tune_done, end = clock
    trained = sum(float(r["metrics"].get("wall_time_s") or 0.0) for r in rows)
    return (f"time {_clock(end - start)} = Ray start {ray_up - start:.0f} s + trials {_clock(tune_done - ray_up)} "
            f"({trained:.0f} s of it training and evaluating, summed over trials; the rest is process "
            f"start-up, data loading and MLflow) + summary and report {end - tune_done:.0f} s")


def _tune_statuses(results: Any) -> dict[str, str]:
    """Tune trial id -> the vaelab status its still-running MLflow runs should get."""
    out = {}
    for result in results:
        trial_id = (result.metrics or {}).get("trial_id") or _trial_id_from_path(result)
        if not trial_id:
            continue
        out[trial_id] = "failed" if result.error is not None else "stopped"
    return out


def _trial_id_from_path(result: Any) -> Optional[str]:
    tail = str(getattr(result, "path", "") or "").rstrip("/").rsplit("/", 1)[-1]
    return tail.rsplit("-", 1)[-1] if "-" in tail else None


def _count(rows: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    counts = {s: 0 for s in STATUSES}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    counts["total"] = sum(v for k, v in counts.items() if k != "total")
    return counts


def summary_table(rows: Sequence[Mapping[str, Any]], metric: str, max_params: int = 6) -> str:
    """A plain-text table: trial, variant, the params that vary, final metrics, status."""
    if not rows:
        return "no trial runs recorded"
    varying = [k for k in sorted({k for r in rows for k in r["params"]})
               if len({r["params"].get(k) for r in rows}) > 1 and k != "seed"][:max_params]
    metrics = [m for m in (metric, "test_elbo", "test_ll_iw", "active_units") if m]
    metrics = list(dict.fromkeys(metrics))
    header = ["trial", "variant", *varying, "seed", *metrics, "epochs", "status"]
    table = [header]
    for r in sorted(rows, key=lambda r: r["trial_key"]):
        cells = [r["trial_key"], r["variant"] or "-", *(_fmt_param(r["params"].get(k, "")) for k in varying),
                 r["params"].get("seed", "")]
        cells += [_fmt(r["metrics"].get(m)) for m in metrics]
        cells += [str(int(r["metrics"].get("epoch", 0) or 0)), r["status"]]
        table.append([str(c) for c in cells])
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt_param(text: str) -> str:
    """MLflow param strings; long floats shortened for the table."""
    try:
        value = float(text)
    except ValueError:
        return text
    return f"{value:.4g}" if "." in text or "e" in text.lower() else text


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _build_report(
    info: StudyRunInfo, run_name: str, out_dir: Optional[Path], echo: Callable[[str], None]
) -> Optional[Path]:
    """The run's report in its own folder (default reports/<study>/<run name>)."""
    try:
        from vaelab.report.build import build_report
    except ImportError:
        echo("report: vaelab.report.build is not available; skipped")
        return None
    out = Path(out_dir or report_dir_for(Path.cwd(), info.study, run_name)).resolve()
    try:
        build_report(info.study, info.tracking_uri, out, run=info.parent_run_id)
    except Exception as err:  # noqa: BLE001 - the study itself succeeded; say why the report did not
        echo(f"report: failed ({type(err).__name__}: {err}); rerun with "
             f"`vaelab report {info.study} --run {run_name}`")
        return None
    echo(f"report: {out}")
    return out


# =========================================================================== entry points


def run_study(
    study: Any,
    budget: Optional[str] = None,
    address: Optional[str] = None,
    storage: Optional[str] = None,
    tracking_uri: Optional[str] = None,
    name: Optional[str] = None,
    *,
    shared_storage: bool = False,
    progress: bool = True,
    report: bool = True,
    report_dir: Optional[Path] = None,
    echo: Callable[[str], None] = print,
) -> StudyResult:
    """Run every trial of `study` (a Study from vaelab.studies, or a LaunchPlan) on Ray Tune."""
    plan = study if isinstance(study, LaunchPlan) else plan_from_study(study, budget)
    if plan.n_trials == 0:
        raise RunnerError(f"study {plan.study!r} has no trials to run")
    cwd = Path.cwd()  # before ray.init: see _leave_job_working_directory
    storage_uri = resolve_storage(storage)
    check_job_paths(storage_uri, resolve_tracking_uri(tracking_uri))
    uri = check_reachable(tracking_uri or resolve_tracking_uri(None))
    run_name = name or default_run_name(plan)
    experiment_path = _join(storage_uri, run_name)
    if _exists(experiment_path):
        raise RunnerError(
            f"{experiment_path} already exists: continue it with `vaelab resume {run_name}` "
            "or choose another --name"
        )
    plan = _with_absolute_paths(plan, cwd)
    if address in (None, "", "local"):
        check_datasets(plan)  # on a cluster the data lives on the workers' machines
    _leave_job_working_directory()
    clock = [time.monotonic()]
    started = connect_ray(address, uri)
    clock.append(time.monotonic())
    try:
        check_cluster_storage(address, storage_uri, uri, shared_storage)
        info = start_study_run(
            uri, plan.study, run_name, spec_hash=plan.spec_hash, budget=plan.budget,
            study_yaml=plan.study_yaml, repo_dir=plan.source_dir,
            tags={"vaelab.storage": redact_uri(experiment_path),
                  "vaelab.search": "optuna" if plan.optuna else "grid",
                  "vaelab.trials_planned": str(plan.n_trials)},
        )
        ctx = _context(plan, info, run_name, uri, cwd)
        write_sidecar(experiment_path, _sidecar(plan, info, run_name, uri))
        echo(f"study {plan.study} · budget {plan.budget or '-'} · {plan.n_trials} trials · "
             f"run {run_name} · storage {experiment_path} · tracking {redact_uri(uri)}")
        from ray import tune

        tuner = tune.Tuner(
            _trainable(plan.resources),
            param_space=_param_space(plan, ctx),
            tune_config=_tune_config(plan),
            run_config=_run_config(run_name, storage_uri, plan, progress),
        )
        results, interrupted = _fit(tuner)
        clock.append(time.monotonic())
        result = _conclude(results, info, run_name, experiment_path, plan.metric, build_report=report,
                           report_dir=report_dir or report_dir_for(cwd, plan.study, run_name),
                           interrupted=interrupted,
                           echo=echo)
        echo(time_line(clock + [time.monotonic()], result.trials))
        if interrupted:
            echo(f"interrupted: continue with `vaelab resume {run_name}`")
        return result
    finally:
        if started:
            shutdown_ray()


def resume_study(
    name: str,
    storage: Optional[str] = None,
    tracking_uri: Optional[str] = None,
    *,
    address: Optional[str] = None,
    shared_storage: bool = False,
    progress: bool = True,
    report: bool = True,
    report_dir: Optional[Path] = None,
    echo: Callable[[str], None] = print,
) -> StudyResult:
    """Continue an interrupted study: unfinished and errored trials resume from their last
    checkpoint; finished trials are not rerun (Tuner.restore)."""
    storage_uri = resolve_storage(storage)
    name = find_run_name(storage_uri, name)
    experiment_path = _join(storage_uri, name)
    meta = read_sidecar(experiment_path)
    uri = _resume_tracking_uri(meta, tracking_uri)
    uri = check_reachable(uri)
    report_dir = report_dir or report_dir_for(Path.cwd(), meta["study"], name)
    info = StudyRunInfo(uri, meta["experiment_id"], meta["parent_run_id"], meta["study"])
    if address in (None, "", "local"):  # the same pre-flight check as `vaelab run`
        check_dataset_pairs(_resume_datasets(meta, info))
    _leave_job_working_directory()
    started = connect_ray(address, uri)
    try:
        check_cluster_storage(address, storage_uri, uri, shared_storage)
        from ray import tune

        if not tune.Tuner.can_restore(experiment_path):
            raise RunnerError(f"{experiment_path} has no Ray Tune experiment state to resume")
        reopen_study_run(info)
        ended = sum(r["status"] in ("finished", "diverged") for r in list_trial_runs(info))
        echo(f"resuming {name} (study {meta['study']}) from {experiment_path}: {ended} trial run(s) "
             "already ended in MLflow are not rerun")
        if not is_remote_storage(experiment_path):
            for missing, source in tune_state.repair_missing_checkpoints(Path(experiment_path)):
                echo(f"  {missing.parent.name}: {missing.name} (named by Tune's last saved state, deleted "
                     f"after it) re-created from {source.name}")
        tuner = tune.Tuner.restore(
            experiment_path, trainable=_trainable(meta["resources"]), resume_errored=True
        )
        results, interrupted = _fit(tuner)
        return _conclude(results, info, name, experiment_path, meta.get("metric", "test_ll_iw"),
                         build_report=report, report_dir=report_dir, interrupted=interrupted, echo=echo)
    finally:
        if started:
            shutdown_ray()


def _fit(tuner: Any) -> tuple[Any, bool]:
    """Tuner.fit(), returning (results, interrupted).

    Ctrl-C (SIGINT) and SIGTERM stop the study gracefully and resumably: they are turned
    into SIGUSR1, on which Tune saves its experiment state and stops the trials. A second
    Ctrl-C aborts at once. Tune's own SIGINT handler is switched off because it leaves no
    trace of the interruption in the ResultGrid."""
    # Ray's own console output is replaced by the progress callback's lines; a trial's
    # traceback stays in its error.txt (the callback prints where).
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    logging.getLogger("ray.tune.execution.tune_controller").setLevel(logging.CRITICAL)
    _quiet_ray_hints()
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    interrupted = {"flag": False}

    def on_signal(signum: int, frame: Any) -> None:
        if interrupted["flag"] or signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None):
            raise KeyboardInterrupt
        interrupted["flag"] = True
        print("[vaelab] stopping: saving the experiment state (Ctrl-C again to abort)",
              file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGUSR1)

    in_main = threading.current_thread() is threading.main_thread()
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)} if in_main else {}
    saved_env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    if in_main:
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        for sig in saved:
            signal.signal(sig, on_signal)
    try:
        results = tuner.fit()
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        if saved_env is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = saved_env
    unfinished = results.num_terminated + results.num_errors < len(results)
    return results, interrupted["flag"] or unfinished


class _RayHintFilter(logging.Filter):
    """Drops Ray's own advice that contradicts vaelab's: "Resume experiment with:
    Tuner.restore(...)" (vaelab prints `vaelab resume NAME`), "Trials did not complete"
    (the progress line and summary say which), and the FileNotFoundError traceback Tune
    logs when it deletes a checkpoint that is already gone (tune_state re-creates the
    ones it needs)."""

    _DROPPED = ("Resume experiment with", "Resume training with", "Trials did not complete",
                # a local Ray binds 127.0.0.1 only: its token-auth advice is about clusters
                "Token authentication is enabled for this Ray cluster",
                "Token authentication is disabled for this Ray cluster")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(text in message for text in self._DROPPED):
            return False
        error = record.exc_info[1] if record.exc_info else None
        return not (isinstance(error, FileNotFoundError) and "deleting path" in message)


_RAY_HINT_FILTER = _RayHintFilter()


def _quiet_ray_hints(*names: str) -> None:
    for name in names or ("ray.tune.tune", "ray.train._internal.storage"):
        logger = logging.getLogger(name)
        if _RAY_HINT_FILTER not in logger.filters:
            logger.addFilter(_RAY_HINT_FILTER)


def _leave_job_working_directory() -> None:
    """The driver of `ray job submit --working-dir` runs in Ray's unpacked copy of that
    directory, and Ray 2.60 may delete it while the driver still runs (seen on the first
    job of a fresh multi-node cluster, seconds after ray.init). Every path vaelab needs is
    absolute by now; Tune and native libraries still call getcwd(), so move out first."""
    if (job_runtime_env() or {}).get("working_dir"):
        os.chdir(tempfile.gettempdir())


def report_dir_for(cwd: Path, study: str, run_name: str) -> Path:
    """reports/<study>/<run name>: each run's report in its own folder (never another run's)."""
    return cwd / "reports" / study / run_name


def default_run_name(plan: LaunchPlan) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    budget = f"-{plan.budget}" if plan.budget else ""
    return f"{plan.study}{budget}-{stamp}"


def plan_datasets(plan: LaunchPlan) -> list[tuple[str, Optional[str]]]:
    """(dataset, data_dir) pairs the plan's trials read (data_dir None: found by name)."""
    wanted = {(m.config.get("dataset", "mnist"), m.config.get("data_dir")) for c in plan.cohorts for m in c}
    return sorted(wanted, key=str)


def check_datasets(plan: LaunchPlan) -> None:
    """Every dataset the trials read is present (and passes its checksum) before any trial
    starts: a missing file would otherwise fail every trial max_failures + 1 times."""
    check_dataset_pairs(plan_datasets(plan))


def check_dataset_pairs(pairs: Iterable[Sequence[Optional[str]]]) -> None:
    from vaelab import data

    for name, data_dir in pairs:
        if "missing" in data.verify(name, data_dir).values():
            data.load_arrays(name, data_dir)  # raises MissingDataError: which files, and how to fetch them


def _with_absolute_paths(plan: LaunchPlan, base: Path) -> LaunchPlan:
    cohorts = [[dataclasses.replace(m, config=absolute_paths(m.config, base)) for m in c] for c in plan.cohorts]
    return dataclasses.replace(plan, cohorts=cohorts)


def _context(plan: LaunchPlan, info: StudyRunInfo, run_name: str, uri: str, cwd: Path) -> dict[str, Any]:
    return {
        "study": plan.study,
        "budget": plan.budget,
        "run_name": run_name,
        "cwd": str(cwd),
        "epochs": plan.optuna.epochs if plan.optuna else None,
        "checkpoint_every": plan.checkpoint_every,
        "study_yaml": plan.study_yaml if plan.optuna else None,
        "experiment_id": info.experiment_id,
        "parent_run_id": info.parent_run_id,
        # A URI carrying credentials reaches trials only through their environment.
        "tracking_uri": None if has_credentials(uri) else uri,
        "metric": plan.optuna.metric if plan.optuna else None,
        "fault": _fault_from_env(),
    }


def _sidecar(plan: LaunchPlan, info: StudyRunInfo, run_name: str, uri: str) -> dict[str, Any]:
    return {
        "format": 1,
        "study": plan.study,
        "budget": plan.budget,
        "run_name": run_name,
        "spec_hash": plan.spec_hash,
        "experiment_id": info.experiment_id,
        "parent_run_id": info.parent_run_id,
        "tracking_uri": None if has_credentials(uri) else uri,
        "tracking_uri_redacted": redact_uri(uri),
        "resources": plan.resources,
        "metric": plan.metric,
        "mode": plan.mode,
        "n_trials": plan.n_trials,
        "datasets": plan_datasets(plan),  # `vaelab resume` checks them before Ray starts
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _resume_datasets(meta: Mapping[str, Any], info: StudyRunInfo) -> list[tuple[str, Optional[str]]]:
    """The datasets a resumed study reads: from the sidecar, else (a run started before
    the sidecar listed them) from the params of its trial runs in MLflow."""
    if meta.get("datasets") is not None:
        return [(name, data_dir) for name, data_dir in meta["datasets"]]
    pairs = {(r["params"].get("dataset", "mnist"), r["params"].get("data_dir")) for r in list_trial_runs(info)}
    return sorted(((name, None if d in (None, "None") else d) for name, d in pairs), key=str)


def _resume_tracking_uri(meta: Mapping[str, Any], given: Optional[str]) -> str:
    recorded = meta.get("tracking_uri")
    if given:
        resolved = resolve_tracking_uri(given)
        if recorded and resolved != recorded:
            raise RunnerError(
                f"study run {meta.get('run_name')} was tracked at {redact_uri(recorded)}; "
                f"resume it against the same store (got {redact_uri(resolved)})"
            )
        return resolved
    if recorded:
        return recorded
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if not env:
        raise RunnerError(
            f"study run {meta.get('run_name')} was tracked at {meta.get('tracking_uri_redacted')} "
            "(credentials not stored): pass --tracking-uri or set MLFLOW_TRACKING_URI"
        )
    return resolve_tracking_uri(env)
