"""The cluster path docs/cluster.md recommends, on a real S3-compatible server on 127.0.0.1
(moto, a process of its own, behind a relay that can go down and come back): Ray Tune's
state and checkpoints in `--storage s3://...`, MLflow artifacts through `vaelab server
--artifacts-destination s3://...`.

Default run (short): the mistakes users make with S3 (a bucket that does not exist, wrong
credentials, an endpoint that does not answer, credentials inside a URI) end before any
trial in one paragraph naming the option, exit 2; the checkpoint repair of `vaelab
resume` on s3://. `-m slow`: a worker node lost mid-study, the driver killed and the
study resumed (with checkpoints the last saved state names deleted), the S3 server
restarted mid-study, each counting every epoch in MLflow against the plan; and a sweep of
every command and everything vaelab writes for the secrets of the tracking URI and S3.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from cluster_helpers import (  # noqa: E402
    RayCluster,
    S3Server,
    TrackingServer,
    free_port,
    moto_missing_reason,
    short_tmpdir,
    stop_group,
    tool_env,
    wait_until,
)
from test_cluster import (  # noqa: E402
    client,
    epoch_steps,
    everything_logged,
    finish,
    logged_epochs,
    run_vaelab,
    start_vaelab,
    study_runs,
    write_study,
)

BUCKET = "vaelab"
pytestmark = pytest.mark.skipif(moto_missing_reason() is not None, reason=moto_missing_reason() or "")


# --------------------------------------------------------------------------- fixtures


def s3_server(require_auth: bool) -> Iterator[S3Server]:
    server = S3Server(short_tmpdir("vs3-"))
    try:
        server.start()
        server.create_bucket(BUCKET)
        if require_auth:
            server.require_auth()
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    """moto's S3 on 127.0.0.1 with one bucket, any key accepted. (moto's own key check fails
    the presigned URLs MLflow downloads artifacts through: only `s3_auth` has it.)"""
    yield from s3_server(require_auth=False)


@pytest.fixture(scope="module")
def s3_auth() -> Iterator[S3Server]:
    """The same, accepting only its own access key."""
    yield from s3_server(require_auth=True)


def s3_env(s3: S3Server, **extra: str) -> dict[str, str]:
    return tool_env(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", **s3.env(**extra))


def assert_refused_before_anything(result: Any, tmp_path: Path, *needles: str) -> str:
    """Exit 2, one paragraph on stderr naming what to fix, no traceback, nothing started."""
    err = result.stderr.strip()
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Traceback" not in err and err.startswith("error: ") and "\n" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    assert not (tmp_path / "mlflow.db").exists()  # refused before the tracking store was touched
    return err


# =========================================================================== default: the mistakes


def test_a_bucket_that_does_not_exist_is_refused_before_any_trial(tmp_path: Path, s3: S3Server) -> None:
    study = write_study(tmp_path, "nobucket", 2, 2)
    result = run_vaelab(["run", str(study), "--storage", "s3://no-such-bucket/ray_results",
                         "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"], s3_env(s3), tmp_path, timeout=120)
    err = assert_refused_before_anything(result, tmp_path, "--storage s3://no-such-bucket/ray_results",
                                         "bucket 'no-such-bucket' does not exist", s3.endpoint)
    assert s3.secret not in result.stdout + result.stderr
    print(f"\n{err}")


def test_wrong_credentials_are_refused_before_any_trial(tmp_path: Path, s3_auth: S3Server) -> None:
    s3 = s3_auth
    study = write_study(tmp_path, "badkeys", 2, 2)
    wrong = "wrong-" + s3.secret[::-1]
    result = run_vaelab(["run", str(study), "--storage", f"s3://{BUCKET}/ray_results",
                         "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"],
                        s3_env(s3, AWS_SECRET_ACCESS_KEY=wrong), tmp_path, timeout=120)
    err = assert_refused_before_anything(result, tmp_path, f"--storage s3://{BUCKET}/ray_results",
                                         "refused this machine's credentials", "AWS_SECRET_ACCESS_KEY")
    assert wrong not in result.stdout + result.stderr and s3.secret not in result.stdout + result.stderr
    assert not s3.keys(BUCKET, "ray_results/")  # nothing written
    print(f"\n{err}")


def test_an_endpoint_that_does_not_answer_is_refused_before_any_trial(tmp_path: Path, s3: S3Server) -> None:
    study = write_study(tmp_path, "noendpoint", 2, 2)
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    result = run_vaelab(["run", str(study), "--storage", f"s3://{BUCKET}/ray_results",
                         "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"],
                        s3_env(s3, AWS_ENDPOINT_URL=dead), tmp_path, timeout=180)
    err = assert_refused_before_anything(result, tmp_path, f"--storage s3://{BUCKET}/ray_results",
                                         f"endpoint {dead} (AWS_ENDPOINT_URL) does not answer")
    assert s3.secret not in result.stdout + result.stderr
    print(f"\n{err}")


def test_resume_makes_the_same_storage_check(tmp_path: Path, s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    from vaelab.studies import runner
    from vaelab.errors import RunnerError

    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    with pytest.raises(RunnerError, match="bucket 'gone' does not exist"):
        runner.resume_study("some-run", "s3://gone/ray_results")


def test_credentials_inside_the_storage_uri_or_the_endpoint_are_refused_unprinted(
    s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tune records the storage path and its filesystem's endpoint in the experiment state."""
    from vaelab.errors import RunnerError
    from vaelab.studies.storage import check_storage

    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    with pytest.raises(RunnerError, match="carries credentials") as refused:
        check_storage(f"s3://{BUCKET}/rr?access_key={s3.key_id}&secret_key={s3.secret}")
    assert s3.secret not in str(refused.value) and "--storage" in str(refused.value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://user:{s3.secret}@127.0.0.1:{s3.port}")
    with pytest.raises(RunnerError, match="AWS_ENDPOINT_URL=http://\\*\\*\\*@127.0.0.1") as refused:
        check_storage(f"s3://{BUCKET}/rr")
    assert s3.secret not in str(refused.value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)
    check_storage(f"s3://{BUCKET}/rr")  # the good case writes and deletes one probe object
    assert not [k for k in s3.keys(BUCKET, "rr/") if ".vaelab-write-check" in k]


# =========================================================================== default: checkpoint repair on S3


def write_s3_tune_state(s3: S3Server, prefix: str, trials: dict[str, list[str]]) -> None:
    """Tune 2.x's experiment state for an S3 experiment: checkpoint paths inside the bucket
    ("bucket/prefix/trial/checkpoint_N", no leading slash) in a hex-encoded pickle."""
    trial_data = []
    for trial, checkpoints in trials.items():
        manager = {"checkpoints": [f"{BUCKET}/{prefix}/{trial}/{c}" for c in checkpoints]}
        blob = {"_type": "CLOUDPICKLE_FALLBACK", "value": pickle.dumps(manager).hex()}
        trial_data.append([json.dumps({"trial_id": trial}),
                           json.dumps({"checkpoint_manager": blob, "last_result": {}})])
    s3.client().put_object(Bucket=BUCKET, Key=f"{prefix}/experiment_state-2026-01-01_00-00-00.json",
                           Body=json.dumps({"trial_data": trial_data}).encode())


def test_resume_recreates_checkpoints_deleted_after_the_last_saved_state_on_s3(
    s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vaelab.studies import tune_state

    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    prefix = "repair/study"
    for trial, on_store in {"t0": ["checkpoint_000004", "checkpoint_000005"],  # intact
                            "t1": ["checkpoint_000006", "checkpoint_000007"],  # state names 4, 5
                            "t2": []}.items():  # nothing newer to copy: left to Tune's error
        for name in on_store:
            for file in ("checkpoint.pt", "extra/meta.json"):
                s3.client().put_object(Bucket=BUCKET, Key=f"{prefix}/{trial}/{name}/{file}",
                                       Body=f"{trial}/{name}/{file}".encode())
    write_s3_tune_state(s3, prefix, {"t0": ["checkpoint_000004", "checkpoint_000005"],
                                     "t1": ["checkpoint_000004", "checkpoint_000005"],
                                     "t2": ["checkpoint_000001"]})
    repaired = tune_state.repair_missing_checkpoints(f"s3://{BUCKET}/{prefix}")
    assert [(str(m), s.name) for m, s in repaired] == [
        (f"{BUCKET}/{prefix}/t1/checkpoint_000004", "checkpoint_000007"),
        (f"{BUCKET}/{prefix}/t1/checkpoint_000005", "checkpoint_000007")]
    for name in ("checkpoint_000004", "checkpoint_000005"):  # the newest checkpoint's content, every file
        for file in ("checkpoint.pt", "extra/meta.json"):
            assert s3.read(BUCKET, f"{prefix}/t1/{name}/{file}") == f"t1/checkpoint_000007/{file}".encode()
    assert s3.read(BUCKET, f"{prefix}/t0/checkpoint_000004/checkpoint.pt") == b"t0/checkpoint_000004/checkpoint.pt"
    assert not s3.keys(BUCKET, f"{prefix}/t2/")
    assert tune_state.repair_missing_checkpoints(f"s3://{BUCKET}/{prefix}") == []  # idempotent


# =========================================================================== slow: the cluster on S3


@pytest.fixture(scope="module")
def s3_cluster(s3: S3Server) -> Iterator[RayCluster]:
    """Head (no CPUs) + two 2-CPU workers on 127.0.0.1, every node with the S3 endpoint and keys
    in its environment (what a cluster's machines get from their own setup)."""
    root = short_tmpdir("vls-")
    cluster = RayCluster(root, head_cpus=0, extra_env=s3.env())
    try:
        cluster.start()
        cluster.add_worker(2)
        cluster.add_worker(2)
        yield cluster
    finally:
        cluster.shutdown()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def s3_workers(s3_cluster: RayCluster) -> RayCluster:
    while len(s3_cluster.workers) < 2:
        s3_cluster.add_worker(2)
    return s3_cluster


@pytest.fixture(scope="module")
def s3_tracking(s3: S3Server) -> Iterator[TrackingServer]:
    """`vaelab server` on 127.0.0.1, runs in SQLite, artifacts in s3://vaelab/mlflow."""
    root = short_tmpdir("vlt-")
    server = TrackingServer(f"sqlite:///{root / 'mlflow.db'}", f"s3://{BUCKET}/mlflow", root / "server.log",
                            workers=2, extra_env=s3.env())
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def epoch_count(uri: str, runs: list[Any], epochs: int) -> tuple[int, int, int]:
    """(epochs logged, epochs expected, duplicates) over every per-epoch metric of every run."""
    logged = duplicates = 0
    for run in runs:
        for key in ("epoch", "train_loss", "test_elbo", "kl_total"):
            steps = epoch_steps(uri, run.info.run_id, key)
            logged += len(set(steps))
            duplicates += len(steps) - len(set(steps))
            assert sorted(set(steps)) == list(range(1, epochs + 1)), (run.data.tags.get("vaelab.trial_key"), key, steps)
    return logged, 4 * epochs * len(runs), duplicates


def checkpoints_in_s3(s3: S3Server, prefix: str) -> set[str]:
    """trial folder/checkpoint_N of every checkpoint under s3://vaelab/PREFIX."""
    return {"/".join(k.split("/")[-3:-1]) for k in s3.keys(BUCKET, prefix) if k.endswith("/checkpoint.pt")}


def model_artifacts_in_s3(s3: S3Server) -> int:
    return sum(k.endswith("/model.pt") for k in s3.keys(BUCKET, "mlflow/"))


@pytest.mark.slow
def test_worker_node_lost_trials_resume_from_checkpoints_in_s3(
    tmp_path: Path, s3: S3Server, s3_workers: RayCluster, s3_tracking: TrackingServer
) -> None:
    cluster, uri, epochs, name = s3_workers, s3_tracking.uri, 30, "s3nodeloss"
    study = write_study(tmp_path, name, 4, epochs)
    log = tmp_path / "driver.log"
    env = cluster.env(MLFLOW_TRACKING_URI=uri, TUNE_GLOBAL_CHECKPOINT_S="1")
    started = time.monotonic()
    proc = start_vaelab(["run", str(study), "--budget", "test", "--address", cluster.address,
                         "--storage", f"s3://{BUCKET}/ray_results", "--name", name, "--no-report"], env, tmp_path, log)
    try:
        def trial_on_a_worker_mid_way() -> Any:
            for run in study_runs(uri, name) if logged_epochs(uri, name) else []:
                epoch = int(run.data.metrics.get("epoch", 0))
                if 3 <= epoch <= epochs // 4 and run.data.tags.get("vaelab.ray_node_id") in cluster.workers:
                    return run.data.tags["vaelab.ray_node_id"], run.data.tags["vaelab.trial_id"], epoch
            assert proc.poll() is None, log.read_text()[-3000:]
            return None

        victim, trial, epoch = wait_until(trial_on_a_worker_mid_way, 600, 0.3, "a trial mid-way on a worker")
        on_victim = {r.data.tags["vaelab.trial_id"]: int(r.data.metrics.get("epoch", 0)) for r in study_runs(uri, name)
                     if r.data.tags.get("vaelab.ray_node_id") == victim and r.data.tags.get("vaelab.status") == "running"}
        cluster.kill_worker(victim)
        cluster.add_worker(2)
        text = finish(proc, log)
    finally:
        stop_group(proc)
    runs = study_runs(uri, name)
    assert len(runs) == 4 and {r.data.tags["vaelab.status"] for r in runs} == {"finished"}
    logged, expected, duplicates = epoch_count(uri, runs, epochs)
    moved = [r for r in runs if r.data.tags["vaelab.trial_id"] in on_victim]
    assert moved and all(int(r.data.tags["vaelab.attempt"]) >= 2 and r.data.tags["vaelab.ray_node_id"] != victim
                         for r in moved)
    resumed_from = {r.data.tags["vaelab.trial_id"]: r.data.tags.get("vaelab.resumed_from_epoch") for r in moved}
    for run in moved:  # from its checkpoint in S3, wherever one had been written (every epoch)
        if on_victim[run.data.tags["vaelab.trial_id"]] >= 2:
            assert int(run.data.tags["vaelab.resumed_from_epoch"]) >= 1, run.data.tags
    assert on_victim.get(trial, 0) >= 2
    stored = checkpoints_in_s3(s3, f"ray_results/{name}/")
    assert len({c.split("/")[0] for c in stored}) == 4, stored  # every trial checkpointed into S3
    assert f"storage s3://{BUCKET}/ray_results/{name}" in text
    print(f"\nnode kill [s3]: worker {victim[:8]} killed while trial {trial} was at epoch {epoch}; trials on it "
          f"{on_victim} resumed from epochs {resumed_from} (checkpoints in S3: {len(stored)}); epochs logged "
          f"{logged} vs expected {expected}, duplicates {duplicates}, {time.monotonic() - started:.0f} s")
    assert duplicates == 0 and logged == expected


def simulate_s3_checkpoints_deleted_after_the_last_saved_state(s3: S3Server, prefix: str) -> int:
    """What a driver killed at the wrong moment leaves (tests/test_runner.py does it on disk):
    each unfinished trial's named checkpoint k moves to k + 2 in the bucket."""
    from vaelab.studies import tune_state

    states = sorted(k for k in s3.keys(BUCKET, prefix) if "/experiment_state-" in k)
    named = tune_state._named_checkpoints(s3.read(BUCKET, states[-1]), f"{BUCKET}/{prefix.rstrip('/')}")
    c, moved = s3.client(), 0
    for path in sorted(named, reverse=True):
        key = path.split("/", 1)[1]
        trial_dir, name = key.rsplit("/", 1)
        if '"done": true' in s3.read(BUCKET, f"{trial_dir}/result.json").decode():
            continue  # finished trials are not restored
        target = f"{trial_dir}/checkpoint_{int(name.split('_')[1]) + 2:06d}"
        objects = s3.keys(BUCKET, key + "/")
        if not objects or s3.keys(BUCKET, target + "/"):
            continue
        for obj in objects:
            c.copy_object(Bucket=BUCKET, Key=target + obj[len(key):], CopySource={"Bucket": BUCKET, "Key": obj})
            c.delete_object(Bucket=BUCKET, Key=obj)
        moved += 1
    return moved


@pytest.mark.slow
def test_driver_killed_then_vaelab_resume_on_s3_logs_every_epoch_once_and_reports_from_s3(
    tmp_path: Path, s3: S3Server, s3_workers: RayCluster, s3_tracking: TrackingServer
) -> None:
    cluster, uri, epochs, n, name = s3_workers, s3_tracking.uri, 30, 6, "s3driverkill"
    study = write_study(tmp_path, name, n, epochs, max_concurrent=2)
    env = cluster.env(MLFLOW_TRACKING_URI=uri, TUNE_GLOBAL_CHECKPOINT_S="1")
    common = ["--address", cluster.address, "--storage", f"s3://{BUCKET}/ray_results"]
    log = tmp_path / "driver.log"
    started = time.monotonic()
    proc = start_vaelab(["run", str(study), "--budget", "test", "--name", name, "--no-report", *common],
                        env, tmp_path, log)
    try:
        def two_finished_one_mid_way() -> bool:
            assert proc.poll() is None, "the study ended before the kill: " + log.read_text()[-3000:]
            runs = study_runs(uri, name) if logged_epochs(uri, name) else []
            finished = sum(r.data.tags.get("vaelab.status") == "finished" for r in runs)
            return finished >= 2 and any(r.data.tags.get("vaelab.status") == "running"
                                         and 2 <= r.data.metrics.get("epoch", 0) <= epochs // 3 for r in runs)

        wait_until(two_finished_one_mid_way, 600, 0.2, "two finished trials and one mid-way")
        time.sleep(1.5)  # Tune saves its experiment state every second here
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        stop_group(proc)
    before = {r.data.tags["vaelab.trial_id"]: r for r in study_runs(uri, name)}
    done_before = {t for t, r in before.items() if r.data.tags["vaelab.status"] == "finished"}
    interrupted = {t for t, r in before.items() if r.data.tags["vaelab.status"] == "running"}
    deleted = simulate_s3_checkpoints_deleted_after_the_last_saved_state(s3, f"ray_results/{name}/")
    resumed = run_vaelab(["resume", name, *common], env, tmp_path, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    recreated = resumed.stdout.count("re-created from")
    # those moved here, and any Tune itself deleted between its last saved state and the kill
    assert recreated >= deleted, resumed.stdout[-3000:]
    runs = study_runs(uri, name)
    assert len(runs) == n and len({r.data.tags["vaelab.trial_id"] for r in runs}) == n
    assert {r.data.tags["vaelab.status"] for r in runs} == {"finished"}
    logged, expected, duplicates = epoch_count(uri, runs, epochs)
    for run in runs:
        trial = run.data.tags["vaelab.trial_id"]
        if trial in done_before:
            assert run.data.tags["vaelab.attempt"] == "1" and run.info.end_time == before[trial].info.end_time
        if trial in interrupted:  # continued its own run; from a checkpoint where Tune's saved state could
            # name one (a trial that had logged under two epochs at the kill may rightly start again at 0)
            assert int(run.data.tags["vaelab.attempt"]) >= 2
            if int(before[trial].data.metrics.get("epoch", 0)) >= 2:
                assert int(run.data.tags["vaelab.resumed_from_epoch"]) >= 1, (
                    trial, int(before[trial].data.metrics.get("epoch", 0)), run.data.tags, resumed.stdout[-3000:])
    # the report of the resume, and `vaelab report` again, built from artifacts that live in S3
    assert model_artifacts_in_s3(s3) >= n and not list(Path(s3_tracking.log.parent).rglob("model.pt"))
    report = run_vaelab(["report", name, "--tracking-uri", uri, "--out", str(tmp_path / "again")], env, tmp_path,
                        timeout=600)
    assert report.returncode == 0, report.stdout[-3000:] + report.stderr[-3000:]
    import pyarrow.parquet as pq

    for folder in (tmp_path / "reports" / name / name, tmp_path / "again"):
        assert (folder / "index.html").is_file(), sorted(p.name for p in folder.parent.rglob("*"))[:20]
        units = pq.read_table(folder / "units.parquet")  # from each run's unit_kl.json artifact
        assert units.num_rows > 0 and set(units.column("trial_id").to_pylist()) == set(before) | {
            r.data.tags["vaelab.trial_id"] for r in runs}
    print(f"\ndriver kill [s3]: killed with {len(done_before)}/{n} finished and {len(interrupted)} mid-way "
          f"(epochs {[int(before[t].data.metrics.get('epoch', 0)) for t in interrupted]}); checkpoints deleted "
          f"after the last saved state {deleted}, re-created by resume {recreated}; epochs logged {logged} vs "
          f"expected {expected}, duplicates {duplicates}; attempts {sorted(r.data.tags['vaelab.attempt'] for r in runs)}; "
          f"model.pt in S3 {model_artifacts_in_s3(s3)}; report from S3 artifacts: {units.num_rows} unit rows; "
          f"{time.monotonic() - started:.0f} s")
    assert duplicates == 0 and logged == expected


@pytest.mark.slow
def test_s3_server_restarted_mid_study_is_retried_and_nothing_is_lost(
    tmp_path: Path, s3: S3Server, s3_workers: RayCluster, s3_tracking: TrackingServer
) -> None:
    cluster, uri, epochs, name = s3_workers, s3_tracking.uri, 16, "s3restart"
    study = write_study(tmp_path, name, 4, epochs)
    env = cluster.env(MLFLOW_TRACKING_URI=uri)
    log = tmp_path / "driver.log"
    started = time.monotonic()
    artifacts_before = model_artifacts_in_s3(s3)
    proc = start_vaelab(["run", str(study), "--budget", "test", "--address", cluster.address, "--storage",
                         f"s3://{BUCKET}/ray_results", "--name", name, "--no-report"], env, tmp_path, log)
    outages = []
    try:
        for threshold in (2, 8):
            def running_at(threshold: int = threshold) -> bool:
                assert proc.poll() is None, "the study ended before the outage: " + log.read_text()[-3000:]
                return any(threshold <= e < epochs for e in logged_epochs(uri, name).values())

            wait_until(running_at, 600, 0.3, f"a trial past epoch {threshold}")
            snapshot = logged_epochs(uri, name)
            down = time.monotonic()
            s3.restart(down_s=5)
            outages.append((round(down - started), round(time.monotonic() - down, 1), snapshot))
        text = finish(proc, log)
    finally:
        stop_group(proc)
    runs = study_runs(uri, name)
    assert len(runs) == 4 and {r.data.tags["vaelab.status"] for r in runs} == {"finished"}, text[-3000:]
    logged, expected, duplicates = epoch_count(uri, runs, epochs)
    attempts = sorted(int(r.data.tags["vaelab.attempt"]) for r in runs)
    stored = checkpoints_in_s3(s3, f"ray_results/{name}/")
    assert len({c.split("/")[0] for c in stored}) == 4
    for run in runs:  # every member's exported files reached S3 through the server
        assert {"model.pt", "unit_kl.json"} <= {a.path for a in client(uri).list_artifacts(run.info.run_id)}
    assert model_artifacts_in_s3(s3) - artifacts_before == 4
    print(f"\nS3 restart: endpoint down twice (at s, down for s, epochs logged then) {outages}; attempts per trial "
          f"{attempts}; epochs logged {logged} vs expected {expected}, duplicates {duplicates}; checkpoints in S3 "
          f"{len(stored)}; {time.monotonic() - started:.0f} s")
    assert duplicates == 0 and logged == expected


# =========================================================================== slow: no secret anywhere


def bytes_under(root: Path) -> bytes:
    """Every file under `root`, concatenated (logs, JSON, Parquet, HTML, pickles alike)."""
    return b"\n".join(p.read_bytes() for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def objects_under(s3: S3Server, prefix: str) -> bytes:
    return b"\n".join(s3.read(BUCKET, key) for key in s3.keys(BUCKET, prefix))


@pytest.mark.slow
def test_no_command_prints_or_records_a_tracking_password_or_s3_secret(tmp_path: Path, s3: S3Server) -> None:
    """A tracking URI with alice:PASSWORD@ (the `mlflow server` here checks none, so it works) and
    S3 keys of their own, through every command; then every place vaelab writes is searched."""
    password = "alice-pw-" + os.urandom(6).hex()
    root = short_tmpdir("vsw-")
    server = TrackingServer(f"sqlite:///{root / 'mlflow.db'}", f"s3://{BUCKET}/sweep-mlflow", root / "server.log",
                            extra_env=s3.env())
    outputs: dict[str, str] = {}
    try:
        server.start()
        uri = f"http://alice:{password}@127.0.0.1:{server.port}"
        # Ray's logs in a folder of this test's own (searched below); the local Ray inherits the keys
        env = s3_env(s3, RAY_TMPDIR=str(root / "ray"))
        study = write_study(tmp_path, "sweep", 2, 2)
        storage = f"s3://{BUCKET}/sweep-ray"
        commands = {
            "run": ["run", str(study), "--budget", "test", "--storage", storage, "--tracking-uri", uri, "--name", "sweep"],
            "resume": ["resume", "sweep", "--storage", storage, "--tracking-uri", uri],
            "report": ["report", "sweep", "--tracking-uri", uri, "--out", str(tmp_path / "report2")],
            "claims": ["claims", "sweep", "--tracking-uri", uri],
            "query": ["query", "--study", "sweep", "--tracking-uri", uri],
            "query parquet": ["query", "--study", "sweep", "--tracking-uri", uri, "--format", "parquet",
                              "--out", str(tmp_path / "query.parquet")],
            "ls": ["ls", "--tracking-uri", uri],
            # the tracking URI from the environment, as on a cluster's nodes
            "ls (env)": ["ls"],
            # the refusals quote the URI and the endpoint
            "run, bad bucket": ["run", str(study), "--storage", "s3://missing-bucket/x", "--tracking-uri", uri],
            "run, server down": ["run", str(study), "--storage", storage, "--tracking-uri",
                                 f"http://alice:{password}@127.0.0.1:{free_port()}", "--name", "down"],
        }
        for what, args in commands.items():
            extra = {"MLFLOW_TRACKING_URI": uri} if what == "ls (env)" else {}
            result = run_vaelab(args, {**env, **extra}, tmp_path, timeout=900)
            outputs[what] = f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
            if what in ("run", "resume", "report", "query", "query parquet", "ls", "ls (env)"):
                assert result.returncode == 0, (what, outputs[what][-3000:])
        # `vaelab server` with a database password (its database is not there: MLflow fails to start)
        dead_db = f"postgresql+psycopg2://vaelab:{password}@127.0.0.1:{free_port()}/mlflow"
        # (MLflow keeps trying the database: stopped after a minute, its whole process group)
        server_log = tmp_path / "server-refused.log"
        proc = start_vaelab(["server", "--artifacts-destination", f"s3://{BUCKET}/x", "--port", str(free_port())],
                            {**env, "MLFLOW_BACKEND_STORE_URI": dead_db}, tmp_path, server_log)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        stop_group(proc)
        outputs["server"] = server_log.read_text()
        assert "vaelab server: MLflow tracking server on http://127.0.0.1" in outputs["server"]
        logged = everything_logged(server.uri, "sweep").encode()  # while the server is up
    finally:
        server.stop()
    places = {f"output of vaelab {what}": text.encode() for what, text in outputs.items()}
    places["MLflow params, tags, study.yaml, config.yaml"] = logged
    places["Tune's state and checkpoints in S3"] = objects_under(s3, "sweep-ray/")
    places["MLflow artifacts in S3"] = objects_under(s3, "sweep-mlflow/")
    places["the reports (Parquet, HTML, tables)"] = bytes_under(tmp_path / "reports") + bytes_under(tmp_path / "report2")
    places["query.parquet"] = (tmp_path / "query.parquet").read_bytes()
    places["Ray's logs"] = bytes_under(root / "ray")
    places["the tracking server's log"] = server.log.read_bytes()
    assert b"vaelab.trial_id" in places["MLflow params, tags, study.yaml, config.yaml"]
    assert places["Tune's state and checkpoints in S3"] and places["MLflow artifacts in S3"] and places["Ray's logs"]
    assert "trials from MLflow http://***@127.0.0.1" in outputs["claims"], outputs["claims"][-2000:]
    leaks = [(place, name) for place, data in places.items()
             for name, secret in (("tracking password", password), ("S3 secret key", s3.secret))
             if secret.encode() in data]
    sizes = {place: len(data) for place, data in places.items()}
    shutil.rmtree(root, ignore_errors=True)
    print(f"\ncredential sweep: {len(commands) + 1} commands, {len(places)} places ({sum(sizes.values())} bytes) "
          f"searched for the tracking password and the S3 secret key: {len(leaks)} found {leaks}")
    assert not leaks, leaks


def test_ray_tune_is_kept_from_copying_the_drivers_aws_keys_into_trials_runtime_env() -> None:
    """Tune would put them into every trial's runtime_env, which runtime_env_agent.log prints."""
    from ray.tune.execution import class_cache

    from vaelab.studies.cluster import TUNE_PROPAGATED_SECRETS, keep_credentials_out_of_tune

    keep_credentials_out_of_tune()
    assert not set(TUNE_PROPAGATED_SECRETS) & class_cache.ENV_VARS_TO_PROPAGATE
