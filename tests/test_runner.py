"""The Ray Tune runner and the MLflow writer, end to end: real local Ray (loopback), real
SQLite MLflow stores, real tiny trials on 8x8 digits.

One small grid study runs once for the module (4 trials: three variants that train and
one with lr = 1e6 that diverges for real; one worker is killed hard after its epoch-3
checkpoint) and several tests read what it left in MLflow. The optuna study, the
concurrent-writer test and the unit tests run on their own. Killing the driver (`vaelab run`
in a subprocess, SIGKILL) and `vaelab resume` is marked slow (`make test-slow`).
"""

from __future__ import annotations

import json
import math
import multiprocessing
import pickle
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, TEMPORARILY_UNAVAILABLE
from mlflow.tracking import MlflowClient

from vaelab.errors import RunnerError, TrackingError
from vaelab.studies import load_study
from vaelab.studies import cluster, runner, tune_state
from vaelab.studies.faults import KILL_EPOCH_ENV, KILL_MARKER_ENV
from vaelab.studies.storage import read_sidecar
from vaelab.tracking.connection import check_reachable
from vaelab.tracking.queries import list_trial_runs
from vaelab.tracking.retry import is_transient, with_retry
from vaelab.tracking.runs import StudyRunInfo, TrialRun, start_study_run
from vaelab.tracking.tags import TAG_ATTEMPT, TAG_VARIANT
from vaelab.tracking.uri import has_credentials, redact_uri, resolve_tracking_uri

EPOCHS = 5
KILL_EPOCH = 3
GRID_BODY = f"""
  axes:
    variant:
      grid:
        - {{label: VAE, inference: vae, batch_norm: false, lr: 1.0e-3}}
        - {{label: VAE+BN, inference: vae, batch_norm: true, lr: 1.0e-3}}
        - {{label: LVAE+BN+WU, inference: lvae, batch_norm: true, warmup_epochs: 2, lr: 1.0e-3}}
        - {{label: Diverge, inference: vae, batch_norm: false, lr: 1.0e+6}}
budgets:
  test: {{epochs: {EPOCHS}}}
seeds: [0]
search: {{mode: grid, max_concurrent: 2}}
resources: {{cpu: 1, gpu: 0}}
failure: {{max_failures: 2}}
checkpoint_every: 1
report:
  tables:
    - {{name: ll, rows: depth, columns: variant, value: test_ll_iw}}
"""
SPEC_METRICS = {"train_elbo", "test_elbo", "test_ll_iw", "kl_total", "kl_layer_1", "kl_layer_2",
                "active_units", "active_units_layer_1", "active_units_layer_2",
                "kl_std_normal_layer_1", "kl_std_normal_layer_2", "beta", "epoch", "steps_per_s",
                "wall_time_s"}


# --------------------------------------------------------------------------- helpers


def child_runs(uri: str, study: str) -> list[Any]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(study)
    return client.search_runs([exp.experiment_id], "tags.`vaelab.role` = 'trial'")


def parent_runs(uri: str, study: str) -> list[Any]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(study)
    return client.search_runs([exp.experiment_id], "tags.`vaelab.role` = 'study'")


def steps(uri: str, run_id: str, key: str = "epoch") -> list[int]:
    return sorted(m.step for m in MlflowClient(uri).get_metric_history(run_id, key))


def by_variant(runs: list[Any]) -> dict[str, Any]:
    return {r.data.tags["vaelab.variant"]: r for r in runs}


# --------------------------------------------------------------------------- the grid study


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory, ray_local: Any, make_study: Any) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("grid")
    path = make_study(root, "gridstudy", GRID_BODY)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    marker = root / "killed.marker"
    os.environ[KILL_EPOCH_ENV] = str(KILL_EPOCH)
    os.environ[KILL_MARKER_ENV] = str(marker)
    lines: list[str] = []
    started = time.monotonic()
    try:
        result = runner.run_study(
            load_study(path), storage=str(root / "ray_results"), tracking_uri=uri, name="grid-run",
            report_dir=root / "report", echo=lines.append,
        )
    finally:
        os.environ.pop(KILL_EPOCH_ENV)
        os.environ.pop(KILL_MARKER_ENV)
    return {"root": root, "uri": uri, "result": result, "lines": lines, "marker": marker,
            "seconds": time.monotonic() - started}


def test_grid_study_one_child_run_per_trial_under_its_parent(grid: dict[str, Any]) -> None:
    uri, result = grid["uri"], grid["result"]
    parents = parent_runs(uri, "gridstudy")
    assert len(parents) == 1
    parent = parents[0]
    tags = parent.data.tags
    assert tags["vaelab.status"] == "finished" and parent.info.status == "FINISHED"
    assert tags["vaelab.budget"] == "test" and len(tags["vaelab.spec_hash"]) == 64
    assert "ray=" in tags["vaelab.versions"] and "torch=" in tags["vaelab.versions"]
    assert tags["vaelab.git_sha"]
    assert [a.path for a in MlflowClient(uri).list_artifacts(parent.info.run_id)] == ["study.yaml"]
    runs = child_runs(uri, "gridstudy")
    assert len(runs) == 4
    assert len({r.data.tags["vaelab.trial_id"] for r in runs}) == 4
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in runs)
    assert result.parent_run_id == parent.info.run_id
    assert result.counts["finished"] == 3 and result.counts["diverged"] == 1 and not result.tune_errors


def test_grid_study_params_under_bare_names(grid: dict[str, Any]) -> None:
    runs = by_variant(child_runs(grid["uri"], "gridstudy"))
    params = runs["LVAE+BN+WU"].data.params
    assert params["inference"] == "lvae" and params["batch_norm"] == "True"
    assert params["warmup_epochs"] == "2.0" and params["depth"] == "2" and params["rho"] == "1.0"
    assert params["latent_dims"] == "8-4" and params["hidden_dims"] == "32-16"
    assert params["epochs"] == str(EPOCHS) and params["dataset"] == "digits"
    assert not any(k.startswith(("config.", "vaelab", "MLFLOW")) for k in params)
    assert runs["Diverge"].data.params["lr"] == "1000000.0"


def test_grid_study_metrics_every_epoch_exactly_once(grid: dict[str, Any]) -> None:
    uri = grid["uri"]
    for variant, run in by_variant(child_runs(uri, "gridstudy")).items():
        if variant == "Diverge":
            continue
        assert steps(uri, run.info.run_id) == list(range(1, EPOCHS + 1)), variant
        assert steps(uri, run.info.run_id, "test_elbo") == list(range(1, EPOCHS + 1)), variant
        assert SPEC_METRICS <= set(run.data.metrics), SPEC_METRICS - set(run.data.metrics)
        assert math.isfinite(run.data.metrics["test_ll_iw"])


def test_grid_study_artifacts_and_tags(grid: dict[str, Any]) -> None:
    uri = grid["uri"]
    client = MlflowClient(uri)
    run = by_variant(child_runs(uri, "gridstudy"))["VAE"]
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "model.pt", "unit_kl.json", "latents.npz", "prior_samples.npz"} <= names
    tags = run.data.tags
    assert tags["vaelab.status"] == "finished" and run.info.status == "FINISHED"
    assert tags["vaelab.study"] == "gridstudy" and tags["vaelab.variant"] == "VAE"
    assert tags["vaelab.node"].endswith("/127.0.0.1")
    assert tags["vaelab.cohort"] and tags["vaelab.trial_key"] == "variant=VAE,seed=0"
    # artifacts sit beside the database, not in a trial's working directory
    assert run.info.artifact_uri.startswith((grid["root"] / "mlartifacts").as_uri())


def test_diverged_trial_is_recorded_while_the_grid_goes_on(grid: dict[str, Any]) -> None:
    uri = grid["uri"]
    runs = by_variant(child_runs(uri, "gridstudy"))
    diverged = runs["Diverge"]
    assert diverged.data.tags["vaelab.status"] == "diverged"
    assert diverged.info.status == "FINISHED"  # ended normally: not a Tune error, no retry
    assert math.isnan(diverged.data.metrics["train_loss"])
    assert steps(uri, diverged.info.run_id) == [1]
    assert diverged.data.tags["vaelab.attempt"] == "1"
    assert {runs[v].data.tags["vaelab.status"] for v in ("VAE", "VAE+BN", "LVAE+BN+WU")} == {"finished"}


def test_killed_worker_resumes_from_checkpoint_in_the_same_run(grid: dict[str, Any]) -> None:
    uri = grid["uri"]
    assert grid["marker"].exists(), "the fault injection never fired"
    runs = child_runs(uri, "gridstudy")
    retried = [r for r in runs if r.data.tags["vaelab.attempt"] == "2"]
    assert len(retried) == 1, [r.data.tags["vaelab.attempt"] for r in runs]
    run = retried[0]
    assert int(run.data.tags["vaelab.resumed_from_epoch"]) >= KILL_EPOCH
    assert run.data.tags["vaelab.status"] == "finished"
    for key in ("epoch", "train_loss", "test_elbo"):  # no gap, no repeat
        assert steps(uri, run.info.run_id, key) == list(range(1, EPOCHS + 1)), key
    history = MlflowClient(uri).get_metric_history(run.info.run_id, "epoch")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == [float(e) for e in range(1, EPOCHS + 1)]


def tune_pids(experiment: Path) -> list[int]:
    """The process of every result Tune recorded, trial by trial."""
    return [json.loads(line)["pid"] for result in sorted(experiment.glob("*/result.json"))
            for line in result.read_text().splitlines() if line.strip()]


def test_trials_share_worker_processes_yet_keep_their_own_runs_and_threads(grid: dict[str, Any]) -> None:
    """Tune runs trial after trial in one process: fewer processes than attempts (4 trials,
    one worker killed and retried), while each trial has its own run (the tests above) and
    records the threads its own CPU allotment gave it."""
    pids = tune_pids(Path(grid["result"].experiment_path))
    assert pids and len(set(pids)) < 4 + 1, pids
    runs = child_runs(grid["uri"], "gridstudy")
    assert len({r.info.run_id for r in runs}) == len({r.data.tags["vaelab.cohort"] for r in runs}) == 4
    assert {r.data.tags["vaelab.cpu_threads"] for r in runs} == {"1"}  # resources: cpu 1


def test_grid_study_progress_summary_and_report(grid: dict[str, Any]) -> None:
    text = "\n".join(grid["lines"])
    assert "gridstudy" in text and "4 trials" in text
    assert "status" in text and "diverged" in text and "variant=LVAE+BN+WU,seed=0" in text
    result = grid["result"]
    if result.report_dir is not None:  # the report module is written by another engineer
        assert (result.report_dir / "trials.parquet").exists()
    # `vaelab resume` finds its study again
    meta = read_sidecar(result.experiment_path)
    assert meta["parent_run_id"] == result.parent_run_id and meta["study"] == "gridstudy"
    print(f"grid study: {grid['seconds']:.1f} s")


# --------------------------------------------------------------------------- optuna

OPTUNA_BODY = """
  axes:
    lr: {loguniform: [1.0e-4, 1.0e-2]}
    warmup_epochs: {uniform: [0, 2]}
budgets:
  test: {epochs: 2, num_samples: 3}
search: {mode: optuna, metric: test_elbo, direction: max, max_concurrent: 2, seed: 3}
resources: {cpu: 1, gpu: 0}
failure: {max_failures: 1}
"""


def test_optuna_study_records_each_trial(tmp_path: Path, ray_local: Any, write_study: Any, tracking_uri: str) -> None:
    path = write_study("optstudy", OPTUNA_BODY)
    result = runner.run_study(
        load_study(path), storage=str(tmp_path / "ray_results"), tracking_uri=tracking_uri,
        name="opt-run", report=False, echo=lambda _: None,
    )
    runs = child_runs(tracking_uri, "optstudy")
    assert len(runs) == 3 and result.counts["finished"] == 3
    assert len({r.data.tags["vaelab.trial_id"] for r in runs}) == 3
    parent = parent_runs(tracking_uri, "optstudy")[0]
    assert parent.data.tags["vaelab.search"] == "optuna"
    lrs = set()
    for run in runs:
        lr, warmup = float(run.data.params["lr"]), float(run.data.params["warmup_epochs"])
        assert 1e-4 <= lr <= 1e-2 and 0 <= warmup <= 2
        lrs.add(lr)
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["vaelab.status"] == "finished"
        assert steps(tracking_uri, run.info.run_id) == [1, 2]
        assert math.isfinite(run.data.metrics["test_elbo"])
    assert len(lrs) == 3


# --------------------------------------------------------------------------- concurrent writers


def _writer(uri: str, info: dict[str, str], index: int, epochs: int, barrier: Any) -> None:
    study_run = StudyRunInfo(**info)
    run = TrialRun.open(study_run, f"writer-{index}", run_name=f"w{index}",
                        params={"depth": 2, "index": index}, tags={TAG_VARIANT: "w"})
    barrier.wait()  # every writer hits the file at the same moment
    for epoch in range(1, epochs + 1):
        run.log_epoch(epoch, {f"m{k}": epoch * 100 + k for k in range(20)} | {"epoch": epoch})
    run.finish("finished")


def test_concurrent_sqlite_writers_lose_nothing(tmp_path: Path, tracking_uri: str) -> None:
    writers, epochs = 8, 40
    uri = check_reachable(tracking_uri)
    info = start_study_run(uri, "concurrency", "c1", spec_hash="x", budget="b", study_yaml="name: c\n")
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(writers)
    procs = [ctx.Process(target=_writer, args=(uri, vars(info), i, epochs, barrier)) for i in range(writers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    assert [p.exitcode for p in procs] == [0] * writers
    runs = list_trial_runs(info)
    assert len(runs) == writers and {r["status"] for r in runs} == {"finished"}
    client = MlflowClient(uri)
    for row in runs:
        for key in ("epoch", "m0", "m19"):
            history = client.get_metric_history(row["run_id"], key)
            assert sorted(m.step for m in history) == list(range(1, epochs + 1)), (row["trial_id"], key)
        values = {m.step: m.value for m in client.get_metric_history(row["run_id"], "m7")}
        assert values == {e: float(e * 100 + 7) for e in range(1, epochs + 1)}


# --------------------------------------------------------------------------- writer units


def test_reopened_trial_run_skips_logged_epochs_and_params(tracking_uri: str) -> None:
    uri = check_reachable(tracking_uri)
    info = start_study_run(uri, "reopen", "r1", spec_hash="x", budget="b", study_yaml="name: r\n")
    first = TrialRun.open(info, "t1", run_name="t1", params={"depth": 2}, tags={})
    for epoch in (1, 2, 3):
        first.log_epoch(epoch, {"epoch": epoch, "loss": 1.0 / epoch})
    # the retry restarts from the epoch-2 checkpoint: epoch 3 is trained again
    again = TrialRun.open(info, "t1", run_name="t1", params={"depth": 2, "rho": 0.5}, tags={})
    assert again.run_id == first.run_id and again.resumed and again.last_step == 3
    assert again.log_epoch(3, {"epoch": 3, "loss": 9.0}) is False
    assert again.log_epoch(4, {"epoch": 4, "loss": 0.25}) is True
    client = MlflowClient(uri)
    assert steps(uri, first.run_id, "loss") == [1, 2, 3, 4]
    run = client.get_run(first.run_id)
    assert run.data.params == {"depth": "2", "rho": "0.5"}
    assert run.data.tags[TAG_ATTEMPT] == "2"
    assert len(list_trial_runs(info)) == 1


def test_retry_survives_locked_database_and_gives_up_on_bad_requests() -> None:
    calls = {"n": 0}

    def flaky() -> str:
        calls["n"] += 1
        if calls["n"] < 3:
            raise MlflowException("(sqlite3.OperationalError) database is locked", TEMPORARILY_UNAVAILABLE)
        return "ok"

    def bad_request() -> None:
        calls["n"] += 1
        raise MlflowException("param depth already logged with another value", INVALID_PARAMETER_VALUE)

    assert with_retry(flaky, "test", first_delay_s=0.001) == "ok" and calls["n"] == 3
    with pytest.raises(MlflowException):
        with_retry(bad_request, "t")
    assert calls["n"] == 4  # not retried
    assert is_transient(ConnectionError("reset"))
    assert not is_transient(ValueError("nope"))


def test_unreachable_tracking_server_fails_fast() -> None:
    started = time.monotonic()
    with pytest.raises(TrackingError, match="unreachable"):
        check_reachable("http://127.0.0.1:9", timeout_s=3)
    assert time.monotonic() - started < 10


def test_credentials_never_reach_tags() -> None:
    assert redact_uri("http://alice:s3cret@mlflow.example:5000/x") == "http://***@mlflow.example:5000/x"
    assert "s3cret" not in redact_uri("https://h/?token=s3cret&x=1")
    assert redact_uri("sqlite:////abs/mlflow.db") == "sqlite:////abs/mlflow.db"
    assert has_credentials("postgresql://u:p@db/mlflow") and not has_credentials("sqlite:////a.db")
    assert resolve_tracking_uri("sqlite:///rel.db") == f"sqlite:///{Path('rel.db').resolve()}"


def test_multi_node_cluster_refuses_local_storage(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(cluster, "alive_nodes", lambda: 3)
    sqlite = f"sqlite:///{tmp_path}/m.db"
    with pytest.raises(RunnerError, match="local path"):
        cluster.check_cluster_storage("auto", str(tmp_path), "http://127.0.0.1:5000", shared_storage=False)
    with pytest.raises(RunnerError, match="SQLite"):
        cluster.check_cluster_storage("auto", "s3://bucket/x", sqlite, shared_storage=False)
    cluster.check_cluster_storage("auto", "s3://bucket/x", "http://127.0.0.1:5000", shared_storage=False)
    cluster.check_cluster_storage("auto", str(tmp_path), sqlite, shared_storage=True)
    cluster.check_cluster_storage(None, str(tmp_path), sqlite, shared_storage=False)  # local Ray


def test_existing_run_name_is_refused(tmp_path: Path, write_study: Any, tracking_uri: str) -> None:
    (tmp_path / "ray_results" / "taken").mkdir(parents=True)
    study = load_study(write_study("namestudy", GRID_BODY))
    with pytest.raises(RunnerError, match="vaelab resume taken"):
        runner.run_study(study, storage=str(tmp_path / "ray_results"), tracking_uri=tracking_uri, name="taken")


# --------------------------------------------------------------------------- driver killed


def vaelab_command() -> list[str]:
    script = Path(sys.executable).parent / "vaelab"
    return [str(script)] if script.exists() else [sys.executable, "-m", "vaelab.cli"]


RESUME_BODY = """
  axes:
    variant:
      grid:
        - {label: A, batch_norm: false, lr: 1.0e-3}
        - {label: B, batch_norm: true, lr: 1.0e-3}
        - {label: C, batch_norm: false, lr: 2.0e-3}
        - {label: D, batch_norm: true, lr: 2.0e-3}
        - {label: E, batch_norm: false, lr: 5.0e-4}
        - {label: F, batch_norm: true, lr: 5.0e-4}
budgets:
  test: {epochs: 6}
search: {mode: grid, max_concurrent: 2}
resources: {cpu: 1, gpu: 0}
checkpoint_every: 1
"""


@pytest.mark.slow  # 25-60 s: a second Ray driver in a subprocess, killed and resumed
def test_killed_driver_is_resumed_without_rerunning_finished_trials(
    tmp_path: Path, ray_local: Any, write_study: Any, tracking_uri: str
) -> None:
    study = write_study("resumable", RESUME_BODY)
    address = ray_local.get_runtime_context().gcs_address
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1", "PYTHONUNBUFFERED": "1"}
    common = ["--address", address, "--storage", str(tmp_path / "ray_results"), "--tracking-uri", tracking_uri,
              "--no-report"]
    check_reachable(tracking_uri)  # the schema exists before this test's polling reads it
    log = open(tmp_path / "run.log", "w")
    proc = subprocess.Popen([*vaelab_command(), "run", str(study), "--name", "killme", *common],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 240
    finished: list[Any] = []
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(1)
        try:
            finished = [r for r in child_runs(tracking_uri, "resumable") if r.data.tags.get("vaelab.status") == "finished"]
        except Exception:  # noqa: BLE001 - the store may not exist yet
            continue
        if len(finished) >= 2:
            break
    time.sleep(2.5)  # let Tune's experiment state (saved every second here) record them
    assert proc.poll() is None, "the study finished before the driver could be killed: " + (tmp_path / "run.log").read_text()[-2000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {r.data.tags["vaelab.trial_id"]: r for r in child_runs(tracking_uri, "resumable")}
    done_before = {t for t, r in before.items() if r.data.tags["vaelab.status"] == "finished"}
    assert 2 <= len(done_before) < 6
    lagged = simulate_checkpoints_deleted_after_the_last_saved_state(tmp_path / "ray_results" / "killme")

    resumed = subprocess.run([*vaelab_command(), "resume", "killme", *common], env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert resumed.stdout.count("re-created from") == lagged, resumed.stdout[-2000:]
    after = child_runs(tracking_uri, "resumable")
    assert len(after) == 6 and len({r.data.tags["vaelab.trial_id"] for r in after}) == 6  # no duplicates
    assert len(parent_runs(tracking_uri, "resumable")) == 1
    for run in after:
        trial = run.data.tags["vaelab.trial_id"]
        assert run.data.tags["vaelab.status"] == "finished", trial
        assert steps(tracking_uri, run.info.run_id) == list(range(1, 7)), trial
        if trial in done_before:  # not rerun: untouched since the kill
            assert run.data.tags["vaelab.attempt"] == "1"
            assert run.info.end_time == before[trial].info.end_time
    assert parent_runs(tracking_uri, "resumable")[0].data.tags["vaelab.status"] == "finished"


def simulate_checkpoints_deleted_after_the_last_saved_state(experiment: Path) -> int:
    """What a driver killed at the wrong moment leaves: Tune registered two newer checkpoints
    of a trial and deleted those its last saved experiment state names (num_to_keep=2). Each
    unfinished trial's named checkpoint k becomes k + 2 (its content stays a valid checkpoint
    of that trial); returns how many named checkpoints went missing."""
    state = tune_state.newest_state_file(experiment)
    missing = 0
    for path in sorted(tune_state.referenced_checkpoints(state), reverse=True):
        trial_dir = path.parent
        if not path.exists() or '"done": true' in (trial_dir / "result.json").read_text():
            continue  # finished trials are not restored
        target = trial_dir / f"checkpoint_{int(path.name.split('_')[1]) + 2:06d}"
        if not target.exists():
            path.rename(target)
            missing += 1
    assert missing, f"no unfinished trial with a named checkpoint in {experiment}"
    return missing


def write_tune_state(experiment: Path, trials: dict[str, list[str]]) -> None:
    """An experiment_state file in Tune 2.x's layout: per trial a list of JSON strings, with
    the checkpoint manager's paths inside a hex-encoded pickle."""
    trial_data = []
    for trial, checkpoints in trials.items():
        manager = {"checkpoints": [str(experiment / trial / c) for c in checkpoints],
                   "short": "/" * 2 + "x" * 45}  # a 47-byte string: its pickled length byte is "/"
        blob = {"_type": "CLOUDPICKLE_FALLBACK", "value": pickle.dumps(manager).hex()}
        trial_data.append([json.dumps({"trial_id": trial}),
                           json.dumps({"checkpoint_manager": blob, "last_result": {}})])
    (experiment / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps({"trial_data": trial_data}))


def test_resume_recreates_checkpoints_tune_deleted_after_its_last_saved_state(tmp_path: Path) -> None:
    experiment = tmp_path / "study"
    for trial, on_disk in {"t0": ["checkpoint_000004", "checkpoint_000005"],  # intact
                           "t1": ["checkpoint_000006", "checkpoint_000007"],  # state names 4, 5
                           "t2": []}.items():  # nothing newer to copy: left to Tune's error
        for name in on_disk:
            (experiment / trial / name).mkdir(parents=True)
            (experiment / trial / name / "checkpoint.pt").write_text(f"{trial}/{name}")
        (experiment / trial).mkdir(parents=True, exist_ok=True)
    write_tune_state(experiment, {"t0": ["checkpoint_000004", "checkpoint_000005"],
                                  "t1": ["checkpoint_000004", "checkpoint_000005"],
                                  "t2": ["checkpoint_000001"]})
    named = tune_state.referenced_checkpoints(tune_state.newest_state_file(experiment))
    assert {p.relative_to(experiment).as_posix() for p in named} == {
        "t0/checkpoint_000004", "t0/checkpoint_000005", "t1/checkpoint_000004", "t1/checkpoint_000005",
        "t2/checkpoint_000001"}
    repaired = tune_state.repair_missing_checkpoints(experiment)
    assert [(m.relative_to(experiment).as_posix(), s.name) for m, s in repaired] == [
        ("t1/checkpoint_000004", "checkpoint_000007"), ("t1/checkpoint_000005", "checkpoint_000007")]
    for name in ("checkpoint_000004", "checkpoint_000005"):  # the newest checkpoint's content
        assert (experiment / "t1" / name / "checkpoint.pt").read_text() == "t1/checkpoint_000007"
    assert (experiment / "t0" / "checkpoint_000004" / "checkpoint.pt").read_text() == "t0/checkpoint_000004"
    assert not (experiment / "t2" / "checkpoint_000001").exists()
    assert tune_state.repair_missing_checkpoints(experiment) == []  # idempotent


def test_vaelab_resume_of_unknown_name_is_a_clean_error(tmp_path: Path) -> None:
    with pytest.raises(RunnerError, match="no vaelab study"):
        runner.resume_study("nope", str(tmp_path))


def test_a_run_started_by_another_vaelab_version_is_refused_in_words(tmp_path: Path) -> None:
    """Tune pickles the functions it was given by module path; a saved state naming one this
    version lacks (here a GLOBAL opcode for a function that no longer exists) must end in a
    RunnerError that says what to do, not an AttributeError traceback."""
    (tmp_path / "tuner.pkl").write_bytes(b"cvaelab.studies.runner\ntrial_dirname_of_an_old_version\n.")
    from vaelab.studies.tuner import restored_tuner

    with pytest.raises(RunnerError, match="started by another version of vaelab.*vaelab.git_sha"):
        restored_tuner(str(tmp_path), {"cpu": 1})
