"""Running a study on Ray Tune, start to end: `run_study` and `resume_study`.

Each checks storage, tracking and data before Ray starts, opens (or reopens) the study's
MLflow parent run, fits the Tuner (tuner.py) with Ctrl-C turned into a resumable stop, then
closes stale trial runs, prints the summary and builds the run's report. Imports ray only
lazily; the trial function is trial.py, Ray and cluster checks cluster.py.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

from vaelab.errors import RunnerError
from vaelab.studies import tune_state
from vaelab.studies.cluster import (
    check_cluster_storage,
    check_job_paths,
    connect_ray,
    leave_job_working_directory,
    quiet_ray_hints,
    shutdown_ray,
)
from vaelab.studies.faults import fault_from_env
from vaelab.studies.plan import (
    LaunchPlan,
    check_dataset_pairs,
    check_datasets,
    default_run_name,
    plan_datasets,
    plan_from_study,
    with_absolute_paths,
)
from vaelab.studies.progress import summary_table, time_line, trial_count
from vaelab.studies.storage import (
    check_storage,
    find_run_name,
    join_path,
    path_exists,
    read_sidecar,
    resolve_storage,
    write_sidecar,
)
from vaelab.studies.tuner import new_tuner, restored_tuner
from vaelab.tracking.connection import check_reachable
from vaelab.tracking.queries import list_trial_runs
from vaelab.tracking.runs import (
    StudyRunInfo,
    finish_study_run,
    mark_stale_trials,
    reopen_study_run,
    start_study_run,
)
from vaelab.tracking.tags import (
    STATUSES,
    TAG_COHORTS_PLANNED,
    TAG_SEARCH,
    TAG_STORAGE,
    TAG_TRIALS_ENDED_PREFIX,
    TAG_TRIALS_PLANNED,
)
from vaelab.tracking.uri import has_credentials, redact_uri, resolve_tracking_uri


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
    notes: Sequence[str] = (),
) -> StudyResult:
    """Run every trial of `study` (a Study from vaelab.studies, or a LaunchPlan) on Ray Tune.

    `notes` are printed under the header (what the command line's --set overrode)."""
    plan = study if isinstance(study, LaunchPlan) else plan_from_study(study, budget)
    if plan.n_trials == 0:
        raise RunnerError(f"study {plan.study!r} has no trials to run")
    cwd = Path.cwd()  # before ray.init: see leave_job_working_directory
    storage_uri = resolve_storage(storage)
    check_storage(storage_uri)  # before the tracking store and Ray: nothing is started on a bad bucket
    check_job_paths(storage_uri, resolve_tracking_uri(tracking_uri))
    uri = check_reachable(tracking_uri or resolve_tracking_uri(None))
    run_name = name or default_run_name(plan)
    experiment_path = join_path(storage_uri, run_name)
    if path_exists(experiment_path):
        raise RunnerError(
            f"{experiment_path} already exists: continue it with `vaelab resume {run_name}` "
            "or choose another --name"
        )
    plan = with_absolute_paths(plan, cwd)
    if address in (None, "", "local"):
        check_datasets(plan)  # on a cluster the data lives on the workers' machines
    leave_job_working_directory()
    clock = [time.monotonic()]
    started = connect_ray(address, uri)
    clock.append(time.monotonic())
    try:
        check_cluster_storage(address, storage_uri, uri, shared_storage)
        info = start_study_run(
            uri, plan.study, run_name, spec_hash=plan.spec_hash, budget=plan.budget,
            study_yaml=plan.study_yaml, repo_dir=plan.source_dir,
            tags={TAG_STORAGE: redact_uri(experiment_path),
                  TAG_SEARCH: "optuna" if plan.optuna else "grid",
                  TAG_TRIALS_PLANNED: str(plan.n_members),
                  TAG_COHORTS_PLANNED: str(plan.n_trials)},
        )
        ctx = _context(plan, info, run_name, uri, cwd)
        write_sidecar(experiment_path, _sidecar(plan, info, run_name, uri))
        echo(f"study {plan.study} · budget {plan.budget or '-'} · {trial_count(plan.n_members, plan.n_trials)} · "
             f"run {run_name} · storage {experiment_path} · tracking {redact_uri(uri)}")
        for note in notes:
            echo(f"  {note}")
        tuner = new_tuner(plan, ctx, run_name, storage_uri, progress)
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
    check_storage(storage_uri)
    name = find_run_name(storage_uri, name)
    experiment_path = join_path(storage_uri, name)
    meta = read_sidecar(experiment_path)
    uri = _resume_tracking_uri(meta, tracking_uri)
    uri = check_reachable(uri)
    report_dir = report_dir or report_dir_for(Path.cwd(), meta["study"], name)
    info = StudyRunInfo(uri, meta["experiment_id"], meta["parent_run_id"], meta["study"])
    rows = list_trial_runs(info)
    if _all_ended(meta, rows):  # before the data checks and Ray: there is nothing to train
        return _nothing_to_resume(meta, info, name, experiment_path, rows, report_dir, echo)
    if address in (None, "", "local"):  # the same pre-flight check as `vaelab run`
        check_dataset_pairs(_resume_datasets(meta, info))
    leave_job_working_directory()
    started = connect_ray(address, uri)
    try:
        check_cluster_storage(address, storage_uri, uri, shared_storage)
        from ray import tune

        if not tune.Tuner.can_restore(experiment_path):
            raise RunnerError(f"{experiment_path} has no Ray Tune experiment state to resume")
        ended = sum(r["status"] in ("finished", "diverged") for r in rows)
        echo(f"resuming {name} (study {meta['study']}) from {experiment_path}: {ended} trial run(s) "
             "already ended in MLflow are not rerun")
        # Local, mounted and s3:// storage alike (tune_state works through pyarrow.fs).
        for missing, source in tune_state.repair_missing_checkpoints(experiment_path):
            echo(f"  {missing.parent.name}: {missing.name} (named by Tune's last saved state, deleted "
                 f"after it) re-created from {source.name}")
        tuner = restored_tuner(experiment_path, meta["resources"])
        reopen_study_run(info)  # only once Tune's state loads: a refused resume changes nothing
        results, interrupted = _fit(tuner)
        return _conclude(results, info, name, experiment_path, meta.get("metric", "test_ll_iw"),
                         build_report=report, report_dir=report_dir, interrupted=interrupted, echo=echo)
    finally:
        if started:
            shutdown_ray()


def _all_ended(meta: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> bool:
    """Every planned trial's MLflow run ended with a result (finished or diverged): a
    resume would train nothing. Failed trials are retried by a resume, and a cohort that
    never started has no runs, so the runs are counted against the plan: Tune trials
    (cohorts) by their `cohort` tag, and trials where the sidecar records them."""
    if not rows or any(r["status"] not in ("finished", "diverged") for r in rows):
        return False
    cohorts = {r.get("cohort") or r["trial_id"] for r in rows}
    return len(cohorts) >= int(meta.get("n_trials") or 0) and len(rows) >= int(meta.get("n_members") or 0)


def _nothing_to_resume(
    meta: Mapping[str, Any], info: StudyRunInfo, name: str, experiment_path: str,
    rows: Sequence[Mapping[str, Any]], report_dir: Path, echo: Callable[[str], None],
) -> StudyResult:
    counts = _count(rows)
    ended = ", ".join(f"{counts[s]} {s}" for s in ("finished", "diverged") if counts.get(s))
    report = f"its report is {report_dir}" if (report_dir / "index.html").exists() else "it has no report yet"
    echo(f"nothing to resume: every trial of study run {name} (study {meta['study']}) has ended in MLflow "
         f"({ended}); {report}. Regenerate a report with `vaelab report {meta['study']} --run {name}`.")
    return StudyResult(
        name=name, study=info.study, parent_run_id=info.parent_run_id, experiment_path=experiment_path,
        tracking_uri=redact_uri(info.tracking_uri), trials=list(rows), counts=counts,
        report_dir=report_dir if (report_dir / "index.html").exists() else None,
    )


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
    quiet_ray_hints()
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
        info, status, {f"{TAG_TRIALS_ENDED_PREFIX}{k}": str(v) for k, v in counts.items()}
    )
    echo(summary_table(rows, plan_metric, interrupted=interrupted))
    out = None
    if build_report and rows:
        out = _build_report(info, name, report_dir, echo)
    return StudyResult(
        name=name, study=info.study, parent_run_id=info.parent_run_id,
        experiment_path=experiment_path, tracking_uri=redact_uri(info.tracking_uri),
        trials=rows, counts=counts, tune_errors=errors, report_dir=out, interrupted=interrupted,
    )


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


def report_dir_for(cwd: Path, study: str, run_name: str) -> Path:
    """reports/<study>/<run name>: each run's report in its own folder (never another run's)."""
    return cwd / "reports" / study / run_name


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
        "fault": fault_from_env(),
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
        "n_members": plan.n_members,
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
