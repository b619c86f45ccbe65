"""The trial function Tune runs: one cohort trained by `Trainer`, each member logged to its MLflow run.

One Tune trial trains one cohort (S >= 1 members of one architecture in one set of kernels,
`Trainer`); each member has its own MLflow child run, created inside the trial and found
again by `vaelab.trial_id` when Tune retries or restores the trial (tracking/runs.py).
Also the keys of the Tune config and results it reads and writes. Imports ray, torch
(train) and the trial config lazily, inside the trial process.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

import yaml

from vaelab.studies.faults import maybe_inject_fault
from vaelab.studies.plan import Member, RunnerError, optuna_member
from vaelab.tracking.queries import ended_trial_runs
from vaelab.tracking.runs import StudyRunInfo, TrialRun, to_metrics
from vaelab.tracking.tags import TAG_COHORT, TAG_RUN_NAME, TAG_TRIAL_KEY, TAG_VARIANT
from vaelab.tracking.uri import resolve_tracking_uri

if TYPE_CHECKING:  # pragma: no cover - typing only
    from vaelab.train import EpochReport, Trainer

log = logging.getLogger(__name__)

CTX_KEY = "vaelab"  # the Tune config key holding the study context
COHORT_KEY = "cohort"  # grid/random: {"index": i, "members": [TrialSpec dicts]}
PARAMS_KEY = "params"  # optuna: the sampled point (axis -> value; a bundled axis takes a label)
CHECKPOINT_FILE = "checkpoint.pt"
STATUS_METRIC = "vaelab_status"  # in Tune results: running | finished | diverged | invalid
ENDED_STATUSES = ("finished", "diverged", "invalid")  # a trial with one of these reached its end
METRICS_SENT = "vaelab_metrics_sent"  # in Tune results: metric values sent to MLflow that epoch
TAG_RAY_NODE = "vaelab.ray_node_id"  # beside vaelab.node (hostname/ip): the node a trial last ran on
TAG_CPU_THREADS = "vaelab.cpu_threads"  # torch threads the trial's last attempt trained with


def cohort_trainable(config: dict[str, Any]) -> None:
    """The Tune function trainable: train one cohort, log every member to its MLflow run.

    `config[CTX_KEY]` carries the study context (parent run, tracking URI, fault
    injection); the cohort comes from `config[COHORT_KEY]` (grid) or from
    the optuna point `config[PARAMS_KEY]` rebuilt by the studies module (optuna).
    """
    from ray import tune

    from vaelab.config import trial_config
    from vaelab.train import Trainer

    threads = prepare_process()
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
    runs = _open_runs(ctx, members, configs, trainer, cohort_id, resumed_epoch, threads)
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
            maybe_inject_fault(ctx, report.epoch, due and not report.is_last)
    except SystemExit:
        # Tune stopped the trial (a scheduler such as ASHA, or the experiment ending).
        _end_open_runs(runs, "stopped", "stopped by Ray Tune")
        raise
    except BaseException as err:
        _end_open_runs(runs, "failed", f"{type(err).__name__}: {err}")
        raise


def ray_assigned_cpus() -> float:
    """CPUs Ray assigned to the calling task or actor (1 when it says nothing)."""
    import ray

    return float(ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)) or 1.0


def prepare_process() -> int:
    """Set up the process for this trial; returns its CPU threads.

    Tune runs trial after trial in one process (tuner.REUSE_ACTORS): whatever an earlier
    trial left in it that must not carry over is redone here, at every trial's start."""
    from vaelab.hardware import use_cpu_threads

    # exactly the CPUs Tune gave this trial: packed trials must not oversubscribe a node
    threads = use_cpu_threads(ray_assigned_cpus())
    forget_compiled_trials()
    return threads


def forget_compiled_trials() -> bool:
    """Drop the compiled graphs (and CUDA graph pools) of earlier trials in this process.

    Tune reuses a trial's process for the next trial. Each trial compiles its own step, and
    torch.compile keeps every earlier trial's graphs for the same code: after 8 the
    recompile limit is hit and the step silently runs eagerly, while the old graphs hold
    memory. Returns whether it reset (not when no trial ran here yet: nothing to drop).
    """
    dynamo = sys.modules.get("torch._dynamo")  # loaded during a trial; never imported here
    if dynamo is None:
        return False
    dynamo.reset()
    return True


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
    member = optuna_member(config[CTX_KEY], config[PARAMS_KEY], cohort_id)
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
    threads: int,
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
                TAG_CPU_THREADS: threads,
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
