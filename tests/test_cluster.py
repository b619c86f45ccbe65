"""Scale-out, proven on one machine with real parts: a multi-node Ray cluster on 127.0.0.1
(head with the job server + worker nodes, tests/ray_cluster_controller.py), a throwaway
PostgreSQL behind a real `mlflow server` started by `vaelab server`, real tiny trials.

Default run (short): the tracking server check before any trial, `vaelab server`'s command
line, credentials kept out of URIs MLflow prints, a submitted job's env and paths,
loopback-only local Ray, a multi-node cluster refusing a local --storage, checkpoints and
YAML loaded safely. `-m slow` (PostgreSQL + `mlflow server`): a server whose database is
down, `ray job submit`, Ray Client, a worker node lost mid-study, the driver killed and
resumed, the tracking server restarted mid-study, and 32 concurrent trials logging to one
SQLite file and to the server.

Nothing here stops a Ray it did not start: clusters, servers and databases are torn down
through their own process groups (never `ray stop`).
"""

from __future__ import annotations

import json
import os
import re
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
    VENV_BIN,
    Postgres,
    RayCluster,
    TrackingServer,
    free_port,
    is_loopback,
    postgres_missing_reason,
    short_tmpdir,
    stop_group,
    tool_env,
    vaelab_command,
    wait_until,
)
from conftest import study_yaml  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
SECRET = "s3cr3t-do-not-log"  # the password of every tracking URI with credentials here
PASSWORD_ENV_SECRET = "env-pw-do-not-log"

# --------------------------------------------------------------------------- studies


def grid_body(n_trials: int, epochs: int, *, cpu: float = 1, max_concurrent: int = 4,
              max_failures: int = 3) -> str:
    """A grid of n_trials tiny digits trials (lr varies), checkpoint every epoch."""
    lrs = ", ".join(f"{1e-3 * (1 + 0.01 * i):.6g}" for i in range(n_trials))
    return f"""
  axes:
    lr: {{grid: [{lrs}]}}
budgets:
  test: {{epochs: {epochs}}}
seeds: [0]
search: {{mode: grid, max_concurrent: {max_concurrent}}}
resources: {{cpu: {cpu}, gpu: 0}}
failure: {{max_failures: {max_failures}}}
checkpoint_every: 1
"""


def write_study(directory: Path, name: str, n_trials: int, epochs: int, **kw: Any) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    return study_yaml(directory, name, grid_body(n_trials, epochs, **kw))


# --------------------------------------------------------------------------- MLflow reads


def client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def study_runs(uri: str, study: str, role: str = "trial") -> list[Any]:
    c = client(uri)
    exp = c.get_experiment_by_name(study)
    if exp is None:
        return []
    return c.search_runs([exp.experiment_id], f"tags.`vaelab.role` = '{role}'", max_results=1000)


def epoch_steps(uri: str, run_id: str, key: str = "epoch") -> list[int]:
    return sorted(m.step for m in client(uri).get_metric_history(run_id, key))


def assert_every_epoch_once(uri: str, runs: list[Any], epochs: int) -> None:
    """Each run holds epochs 1..epochs exactly once, for every per-epoch metric."""
    for run in runs:
        for key in ("epoch", "train_loss", "test_elbo", "kl_total"):
            assert epoch_steps(uri, run.info.run_id, key) == list(range(1, epochs + 1)), (
                run.data.tags.get("vaelab.trial_key"), key)


def logged_epochs(uri: str, study: str) -> dict[str, int]:
    """trial_id -> last epoch logged so far (tolerates a store that is not there yet)."""
    try:
        return {r.data.tags["vaelab.trial_id"]: int(r.data.metrics.get("epoch", 0)) for r in study_runs(uri, study)}
    except Exception:  # noqa: BLE001 - polled while the study starts
        return {}


def everything_logged(uri: str, study: str) -> str:
    """Every param, tag and text artifact of every run of the study, as one string."""
    c = client(uri)
    parts = []
    for role in ("study", "trial"):
        for run in study_runs(uri, study, role):
            parts.append(json.dumps({"params": run.data.params, "tags": run.data.tags}))
            names = {a.path for a in c.list_artifacts(run.info.run_id)}
            for name in sorted(names & {"study.yaml", "config.yaml"}):
                parts.append(Path(c.download_artifacts(run.info.run_id, name)).read_text())
    return "\n".join(p for p in parts if p)


def text_files_under(root: Path) -> str:
    out = []
    for path in root.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".csv", ".txt", ".yaml", ".log", ".pkl", ""):
            try:
                out.append(path.read_bytes().decode(errors="replace"))
            except OSError:
                pass
    return "\n".join(out)


# --------------------------------------------------------------------------- processes


def run_vaelab(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*vaelab_command(), *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def start_vaelab(args: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen:
    handle = open(log, "w")
    proc = subprocess.Popen([*vaelab_command(), *args], env=env, cwd=cwd, stdout=handle,
                            stderr=subprocess.STDOUT, start_new_session=True)
    handle.close()
    return proc


def finish(proc: subprocess.Popen, log: Path, timeout: float = 600) -> str:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_group(proc)
        raise AssertionError(f"vaelab did not finish in {timeout:.0f} s:\n{log.read_text()[-4000:]}")
    text = log.read_text()
    assert proc.returncode == 0, f"vaelab exited {proc.returncode}:\n{text[-4000:]}"
    return text


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cluster() -> Iterator[RayCluster]:
    """Head (0 CPUs: the job server and drivers only) + two 2-CPU worker nodes, all on 127.0.0.1."""
    root = short_tmpdir("vlc-")
    ray_cluster = RayCluster(root, head_cpus=0)
    try:
        ray_cluster.start()
        ray_cluster.add_worker(2)
        ray_cluster.add_worker(2)
        yield ray_cluster
    finally:
        ray_cluster.shutdown()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def two_workers(cluster: RayCluster) -> RayCluster:
    """The cluster with exactly two live worker nodes (a test before may have killed one)."""
    while len(cluster.workers) < 2:
        cluster.add_worker(2)
    return cluster


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    reason = postgres_missing_reason()
    if reason:
        pytest.skip(reason)
    db = Postgres(short_tmpdir("vpg-"))
    try:
        yield db.start()
    finally:
        db.stop("immediate")
        shutil.rmtree(db.root, ignore_errors=True)


@pytest.fixture(scope="module")
def server(postgres: Postgres) -> Iterator[TrackingServer]:
    """`vaelab server` on 127.0.0.1 in front of PostgreSQL, artifacts in a local directory."""
    srv = TrackingServer(postgres.uri, postgres.root / "artifacts", postgres.root / "server.log", workers=2)
    try:
        yield srv.start()
    finally:
        srv.stop()


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    """A directory every node of the (one-machine) cluster sees: stands for NFS."""
    path = tmp_path / "shared"
    path.mkdir()
    return path


# =========================================================================== default: fast


def test_unreachable_tracking_server_fails_before_any_trial(tmp_path: Path) -> None:
    study = write_study(tmp_path, "unreachable", 2, 2)
    port = free_port()  # nothing listens here
    started = time.monotonic()
    result = run_vaelab(["run", str(study), "--tracking-uri", f"http://vaelab:{SECRET}@127.0.0.1:{port}",
                         "--storage", str(tmp_path / "ray_results")], tool_env(), tmp_path, timeout=120)
    seconds = time.monotonic() - started
    assert result.returncode == 2, result.stdout + result.stderr
    assert "unreachable" in result.stderr and f"127.0.0.1:{port}" in result.stderr
    assert SECRET not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "ray_results").exists()  # no Ray started, no trial, no experiment
    print(f"unreachable tracking server refused in {seconds:.1f} s (process start included)")


def test_server_command_binds_loopback_and_keeps_the_password_off_the_command_line(tmp_path: Path) -> None:
    from vaelab.cli import mlflow_server_command
    from vaelab.errors import VaelabError

    uri = f"postgresql+psycopg2://vaelab:{SECRET}@db.internal:5432/mlflow"
    argv, env = mlflow_server_command(uri, str(tmp_path / "art"))
    assert argv[argv.index("--host") + 1] == "127.0.0.1" and argv[argv.index("--port") + 1] == "5000"
    assert argv[1:4] == ["-m", "mlflow", "server"]
    assert argv[argv.index("--artifacts-destination") + 1] == str(tmp_path / "art")
    assert not any(SECRET in a for a in argv)
    assert env["MLFLOW_BACKEND_STORE_URI"] == uri
    argv, _ = mlflow_server_command(uri, "s3://bucket/mlflow", host="10.0.0.5", port=5001, workers=2)
    assert argv[argv.index("--host") + 1] == "10.0.0.5" and "s3://bucket/mlflow" in argv
    with pytest.raises(VaelabError, match="required"):
        mlflow_server_command(None, str(tmp_path))
    with pytest.raises(VaelabError, match="plain path"):
        mlflow_server_command(str(tmp_path / "mlruns"), str(tmp_path))


def test_credentials_in_the_tracking_uri_go_to_mlflow_through_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from vaelab.tracking.connection import client_for
    from vaelab.tracking.uri import scrub

    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    c = client_for(f"http://vaelab:{SECRET}@127.0.0.1:5000/prefix")
    assert c.tracking_uri == "http://127.0.0.1:5000/prefix"
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "vaelab" and os.environ["MLFLOW_TRACKING_PASSWORD"] == SECRET
    assert client_for("sqlite:////tmp/x.db").tracking_uri == "sqlite:////tmp/x.db"
    text = f"API request to http://vaelab:{SECRET}@127.0.0.1:5000/api/2.0/x failed; postgresql://u:{SECRET}@db/m"
    assert SECRET not in scrub(text) and "http://***@127.0.0.1:5000/api" in scrub(text)
    assert os.environ.get("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT") == "true"  # no "View run at <URI>"


def test_a_submitted_job_keeps_its_own_env_and_refuses_paths_in_its_temporary_working_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vaelab.studies.cluster import JOB_CONFIG_ENV, _without_job_env_vars, check_job_paths
    from vaelab.errors import RunnerError

    job = {"runtime_env": {"working_dir": "gcs://_ray_pkg_x.zip",
                           "env_vars": {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"}}}
    monkeypatch.setenv(JOB_CONFIG_ENV, json.dumps(job))
    monkeypatch.chdir(tmp_path)
    # Ray refuses to merge two values of one variable: the job's own are left to it
    env = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000", "VAELAB_DATA_DIR": "/data"}
    assert _without_job_env_vars(env) == {"VAELAB_DATA_DIR": "/data"}
    with pytest.raises(RunnerError, match="differs"):
        _without_job_env_vars({"MLFLOW_TRACKING_URI": "http://127.0.0.1:6000"})
    with pytest.raises(RunnerError, match="temporary working directory"):
        check_job_paths(str(tmp_path / "ray_results"), "http://127.0.0.1:5000")
    with pytest.raises(RunnerError, match="SQLite"):
        check_job_paths("s3://bucket/x", f"sqlite:///{tmp_path / 'mlflow.db'}")
    check_job_paths("/shared/ray_results", "http://127.0.0.1:5000")
    check_job_paths("s3://bucket/x", "sqlite:////shared/mlflow.db")
    monkeypatch.delenv(JOB_CONFIG_ENV)
    check_job_paths(str(tmp_path / "ray_results"), f"sqlite:///{tmp_path / 'mlflow.db'}")  # not a job


def test_yaml_is_parsed_with_safe_loading_only() -> None:
    unsafe = re.compile(r"yaml\.(load|load_all|full_load|full_load_all|unsafe_load|unsafe_load_all)\(|"
                        r"Loader\s*=\s*yaml\.(Loader|FullLoader|UnsafeLoader)")
    offenders = [f"{path.relative_to(REPO)}:{n}: {line.strip()}"
                 for folder in ("platform", "benchmarks")
                 for path in (REPO / folder).rglob("*.py")
                 for n, line in enumerate(path.read_text().splitlines(), 1) if unsafe.search(line)]
    assert not offenders, offenders


class _Payload:
    """Unpickling this runs code: what a malicious checkpoint would carry."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "pwned"))


def test_checkpoints_load_with_weights_only(tmp_path: Path) -> None:
    import pickle

    import torch

    from conftest import TINY_TRIAL
    from vaelab.config import trial_config
    from vaelab.train import Trainer

    trainer = Trainer([trial_config({**TINY_TRIAL, "epochs": 1})])
    good = trainer.save(tmp_path / "good.pt")
    trainer.load(good)  # a real checkpoint is plain tensors and containers
    marker = tmp_path / "pwned.txt"
    state = torch.load(good, weights_only=True)
    state["extra"] = _Payload(str(marker))
    torch.save(state, tmp_path / "evil.pt")
    with pytest.raises(pickle.UnpicklingError):
        trainer.load(tmp_path / "evil.pt")
    with pytest.raises(pickle.UnpicklingError):
        Trainer([trial_config({**TINY_TRIAL, "epochs": 1, "init_from": str(tmp_path / "evil.pt")})])
    assert not marker.exists()
    source = "\n".join(p.read_text() for p in (REPO / "platform").rglob("*.py"))
    assert "weights_only=False" not in source
    assert all("weights_only=True" in call for call in re.findall(r"torch\.load\([^)]*\)", source))


LOCAL_RAY_PROBE = """
import json, os, sys, urllib.request
sys.path.insert(0, {platform!r})
sys.path.insert(0, {tests!r})
from vaelab.studies.cluster import connect_ray, shutdown_ray
from cluster_helpers import descendants, listening_sockets
connect_ray(None, "sqlite:///" + {db!r}, num_cpus=1)
import ray
ray.get(ray.remote(lambda: 1).remote())  # a worker process too
info = ray._private.worker.global_worker.node.address_info
print(json.dumps({{"node_ip": info["node_ip_address"], "webui": info.get("webui_url"),
                  "sockets": listening_sockets(descendants(os.getpid()))}}))
shutdown_ray()
"""


def test_local_ray_started_by_vaelab_listens_on_loopback_only(tmp_path: Path) -> None:
    env = tool_env()
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)  # connect_ray must set it itself
    code = LOCAL_RAY_PROBE.format(platform=str(REPO / "platform"), tests=str(REPO / "tests"),
                                  db=str(tmp_path / "m.db"))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    data = json.loads(out.stdout.strip().splitlines()[-1])
    assert data["node_ip"] == "127.0.0.1"
    assert not data["webui"] or data["webui"].startswith("127.0.0.1")
    assert data["sockets"], "found no listening socket at all: the probe is broken"
    exposed = [s for s in data["sockets"] if not is_loopback(s[1])]
    assert not exposed, exposed
    print(f"local Ray: {len(data['sockets'])} listening sockets, all on loopback")


CREDENTIALED_URI_PROBE = """
import json, os, sys
sys.path.insert(0, {platform!r})
from vaelab.studies.cluster import connect_ray, shutdown_ray
from vaelab.errors import RunnerError
os.environ.pop("MLFLOW_TRACKING_URI", None)
uri = "http://vaelab:{secret}@127.0.0.1:5999"
try:
    connect_ray("ray://127.0.0.1:1", uri)
except RunnerError as err:
    refused = str(err)
connect_ray(None, uri, num_cpus=1)
import ray
seen = ray.get(ray.remote(lambda: os.environ.get("MLFLOW_TRACKING_URI")).remote())
job_env = ray.get_runtime_context().runtime_env
print(json.dumps({{"refused": refused, "seen": seen, "runtime_env": json.dumps(job_env)}}))
shutdown_ray()
"""


def test_a_tracking_uri_with_credentials_never_enters_rays_runtime_env() -> None:
    code = CREDENTIALED_URI_PROBE.format(platform=str(REPO / "platform"), secret=SECRET)
    out = subprocess.run([sys.executable, "-c", code], env=tool_env(), capture_output=True, text=True,
                         timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    data = json.loads(out.stdout.strip().splitlines()[-1])
    # a local Ray: the workers inherit the URI from the driver's environment ...
    assert data["seen"] == f"http://vaelab:{SECRET}@127.0.0.1:5999"
    # ... and Ray's job metadata (shown on its dashboard) never holds it
    assert SECRET not in data["runtime_env"]
    # a cluster: refused before connecting, with the ways that keep it out, and no secret
    assert "carries credentials" in data["refused"] and "ray job submit" in data["refused"]
    assert SECRET not in data["refused"] and "http://***@127.0.0.1:5999" in data["refused"]


def test_multi_node_cluster_refuses_a_local_storage_path_before_trials_start(
    tmp_path: Path, two_workers: RayCluster
) -> None:
    cluster = two_workers
    study = write_study(tmp_path, "refused", 2, 2)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    storage = tmp_path / "ray_results"
    started = time.monotonic()
    result = run_vaelab(["run", str(study), "--address", cluster.address, "--storage", str(storage),
                         "--tracking-uri", uri, "--name", "refused-run"], cluster.env(), tmp_path, timeout=300)
    seconds = time.monotonic() - started
    assert result.returncode == 2, result.stdout + result.stderr
    assert "local path" in result.stderr and "3-node cluster" in result.stderr
    assert "--shared-storage" in result.stderr and "s3://" in result.stderr
    assert not (storage / "refused-run").exists()
    assert study_runs(uri, "refused", "study") == [] and study_runs(uri, "refused") == []  # nothing started
    print(f"local storage refused on a {len(cluster.alive_node_ids())}-node cluster in {seconds:.1f} s")


# =========================================================================== slow: the cluster at work


@pytest.mark.slow
def test_server_whose_database_is_down_fails_the_run_in_seconds(
    tmp_path: Path, postgres: Postgres, server: TrackingServer
) -> None:
    study = write_study(tmp_path, "dbdown", 2, 2)
    postgres.stop("immediate")  # the server still answers /health, every query fails
    try:
        started = time.monotonic()
        result = run_vaelab(["run", str(study), "--tracking-uri", server.uri, "--storage", str(tmp_path / "rr")],
                            tool_env(), tmp_path, timeout=600)
        seconds = time.monotonic() - started
    finally:
        postgres.pg_ctl_start()
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    # refused by vaelab's own check before Ray started (no timing threshold: the time is printed)
    assert "not usable" in result.stderr and not (tmp_path / "rr").exists()
    wait_until(lambda: client(server.uri).search_experiments(max_results=1) is not None, 60, 1, "the database back")
    print(f"tracking server up, database down: refused in {seconds:.1f} s")


@pytest.mark.slow
def test_ray_job_submit_runs_a_study_across_nodes_with_credentials_only_in_the_job_env(
    tmp_path: Path, two_workers: RayCluster, server: TrackingServer, shared: Path
) -> None:
    cluster = two_workers
    workdir = tmp_path / "job"
    write_study(workdir, "jobstudy", 4, 4)
    tracking = f"http://vaelab:{SECRET}@127.0.0.1:{server.port}"
    runtime_env = {"env_vars": {"MLFLOW_TRACKING_URI": tracking, "MLFLOW_TRACKING_USERNAME": "vaelab",
                                "MLFLOW_TRACKING_PASSWORD": PASSWORD_ENV_SECRET}}
    storage = shared / "ray_results"
    started = time.monotonic()
    submit = subprocess.run(
        [str(VENV_BIN / "ray"), "job", "submit", "--address", cluster.dashboard_url,
         "--submission-id", "vaelab-jobstudy", "--working-dir", str(workdir),
         "--runtime-env-json", json.dumps(runtime_env), "--",
         "vaelab", "run", "jobstudy.yaml", "--budget", "test", "--address", "auto", "--storage", str(storage),
         "--shared-storage", "--name", "jobrun", "--no-report"],
        env=cluster.env(), cwd=tmp_path, capture_output=True, text=True, timeout=900,
    )
    seconds = time.monotonic() - started
    logs = submit.stdout + submit.stderr
    assert submit.returncode == 0 and "succeeded" in logs.lower(), logs[-5000:]
    assert "study jobstudy" in logs and "4 trials" in logs
    runs = study_runs(server.uri, "jobstudy")
    assert len(runs) == 4 and {r.data.tags["vaelab.status"] for r in runs} == {"finished"}
    assert_every_epoch_once(server.uri, runs, 4)
    parents = study_runs(server.uri, "jobstudy", "study")
    assert len(parents) == 1 and parents[0].data.tags["vaelab.status"] == "finished"
    # placement: every trial on a worker node (the head has no CPU for them), both workers used
    nodes = {r.data.tags["vaelab.ray_node_id"] for r in runs}
    assert nodes <= set(cluster.workers) and len(nodes) == 2, (nodes, cluster.workers)
    assert all(r.data.tags["vaelab.node"].endswith("/127.0.0.1") for r in runs)
    # artifacts went through the server into its artifact root
    assert {"model.pt", "config.yaml"} <= {a.path for a in client(server.uri).list_artifacts(runs[0].info.run_id)}
    assert list((server.artifacts).rglob("model.pt"))
    # the credentials reached the trials through the job's environment only
    logged = everything_logged(server.uri, "jobstudy")
    assert "vaelab.trial_id" in logged
    for secret in (SECRET, PASSWORD_ENV_SECRET):
        assert secret not in logged and secret not in text_files_under(storage)
        assert secret not in logs  # the job's output: vaelab's lines, MLflow's, Tune's
    assert parents[0].data.tags["vaelab.storage"] == str(storage / "jobrun")
    print(f"ray job submit: 4 trials on {len(nodes)} worker nodes in {seconds:.0f} s")


@pytest.mark.slow
def test_ray_client_address_runs_a_study_with_shared_storage(
    tmp_path: Path, two_workers: RayCluster, server: TrackingServer, shared: Path
) -> None:
    cluster = two_workers
    study = write_study(tmp_path, "clientstudy", 2, 3)
    env = cluster.env(MLFLOW_TRACKING_URI=server.uri)
    # without --shared-storage a local path is refused: the client machine's disk is not the cluster's
    refused = run_vaelab(["run", str(study), "--budget", "test", "--address", cluster.client_address, "--storage",
                          str(shared / "ray_results"), "--name", "clientrun"], env, tmp_path, timeout=600)
    assert refused.returncode == 2, refused.stdout[-3000:] + refused.stderr[-3000:]
    assert "through Ray Client" in refused.stderr and "local path" in refused.stderr
    assert study_runs(server.uri, "clientstudy", "study") == []
    started = time.monotonic()
    result = run_vaelab(["run", str(study), "--budget", "test", "--address", cluster.client_address, "--storage",
                         str(shared / "ray_results"), "--shared-storage", "--name", "clientrun", "--no-report"],
                        env, tmp_path, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    runs = study_runs(server.uri, "clientstudy")
    assert len(runs) == 2 and {r.data.tags["vaelab.status"] for r in runs} == {"finished"}
    assert_every_epoch_once(server.uri, runs, 3)
    assert {r.data.tags["vaelab.ray_node_id"] for r in runs} <= set(cluster.workers)
    print(f"ray:// client: 2 trials in {time.monotonic() - started:.0f} s")


@pytest.mark.slow
def test_worker_node_lost_mid_study_trials_resume_elsewhere_in_the_same_runs(
    tmp_path: Path, two_workers: RayCluster, server: TrackingServer, shared: Path
) -> None:
    cluster = two_workers
    epochs = 30  # tiny epochs take ~0.1 s: a trial picked mid-way must still be running at the kill
    study = write_study(tmp_path, "nodeloss", 4, epochs)
    log = tmp_path / "driver.log"
    env = cluster.env(MLFLOW_TRACKING_URI=server.uri, TUNE_GLOBAL_CHECKPOINT_S="1")
    started = time.monotonic()
    proc = start_vaelab(["run", str(study), "--budget", "test", "--address", cluster.address,
                         "--storage", str(shared / "ray_results"), "--shared-storage", "--name", "nodeloss",
                         "--no-report"], env, tmp_path, log)
    try:
        def trial_on_a_worker_mid_way() -> Any:
            for run in study_runs(server.uri, "nodeloss") if logged_epochs(server.uri, "nodeloss") else []:
                epoch = int(run.data.metrics.get("epoch", 0))
                node = run.data.tags.get("vaelab.ray_node_id")
                if 3 <= epoch <= epochs // 4 and node in cluster.workers:
                    return node, run.data.tags["vaelab.trial_id"], epoch
            assert proc.poll() is None, log.read_text()[-3000:]
            return None

        victim, trial, epoch = wait_until(trial_on_a_worker_mid_way, 600, 0.3, "a trial mid-way on a worker")
        on_victim = {r.data.tags["vaelab.trial_id"]: int(r.data.metrics.get("epoch", 0))
                     for r in study_runs(server.uri, "nodeloss")
                     if r.data.tags.get("vaelab.ray_node_id") == victim and r.data.tags.get("vaelab.status") == "running"
                     and int(r.data.metrics.get("epoch", 0)) <= epochs // 2}
        killed_at = time.monotonic() - started
        cluster.kill_worker(victim)
        replacement = cluster.add_worker(2)
        finish(proc, log)
    finally:
        stop_group(proc)
    runs = study_runs(server.uri, "nodeloss")
    assert len(runs) == 4 and len({r.data.tags["vaelab.trial_id"] for r in runs}) == 4  # one run per trial
    assert {r.data.tags["vaelab.status"] for r in runs} == {"finished"}
    assert_every_epoch_once(server.uri, runs, epochs)  # no gap, no repeat
    moved = [r for r in runs if r.data.tags["vaelab.trial_id"] in on_victim]
    assert moved and all(int(r.data.tags["vaelab.attempt"]) >= 2 for r in moved)
    for run in moved:
        assert run.data.tags["vaelab.ray_node_id"] != victim
        # resumed from its checkpoint, not from scratch, wherever one had been written (every
        # epoch): a trial that had logged no epoch yet on the victim rightly starts again at 0
        if on_victim[run.data.tags["vaelab.trial_id"]] >= 2:
            assert int(run.data.tags["vaelab.resumed_from_epoch"]) >= 1, run.data.tags
    assert on_victim.get(trial, 0) >= 2  # the trial picked mid-way is among those checked
    print(f"worker node {victim[:8]} killed at {killed_at:.0f} s while trial {trial} was at epoch {epoch}; "
          f"{len(on_victim)} trial(s) on it {on_victim} continued on "
          f"{sorted({r.data.tags['vaelab.ray_node_id'][:8] for r in moved})} (replacement {replacement[:8]}); "
          f"4 trials, {len(runs)} MLflow runs, epochs per run "
          f"{[len(epoch_steps(server.uri, r.info.run_id)) for r in runs]}, resumed from epochs "
          f"{[r.data.tags['vaelab.resumed_from_epoch'] for r in moved]}, {time.monotonic() - started:.0f} s")


@pytest.mark.slow
def test_driver_killed_on_the_head_is_finished_by_vaelab_resume(
    tmp_path: Path, two_workers: RayCluster, server: TrackingServer, shared: Path
) -> None:
    cluster = two_workers
    epochs, n = 40, 6  # long enough that a trial mid-way is still mid-way 1.5 s later
    study = write_study(tmp_path, "driverkill", n, epochs, max_concurrent=2)
    env = cluster.env(MLFLOW_TRACKING_URI=server.uri, TUNE_GLOBAL_CHECKPOINT_S="1")
    common = ["--address", cluster.address, "--storage", str(shared / "ray_results"), "--shared-storage",
              "--no-report"]
    log = tmp_path / "driver.log"
    started = time.monotonic()
    proc = start_vaelab(["run", str(study), "--budget", "test", "--name", "driverkill", *common], env, tmp_path, log)
    try:
        def two_finished_one_mid_way() -> bool:
            assert proc.poll() is None, "the study ended before the kill: " + log.read_text()[-3000:]
            runs = study_runs(server.uri, "driverkill") if logged_epochs(server.uri, "driverkill") else []
            finished = sum(r.data.tags.get("vaelab.status") == "finished" for r in runs)
            mid_way = [r for r in runs if r.data.tags.get("vaelab.status") == "running"
                       and 2 <= r.data.metrics.get("epoch", 0) <= epochs // 4]
            return finished >= 2 and bool(mid_way)

        wait_until(two_finished_one_mid_way, 600, 0.2, "two finished trials and one mid-way")
        time.sleep(1.5)  # Tune saves its experiment state every second here
        killed_at = time.monotonic() - started
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        stop_group(proc)
    before = {r.data.tags["vaelab.trial_id"]: r for r in study_runs(server.uri, "driverkill")}
    done_before = {t for t, r in before.items() if r.data.tags["vaelab.status"] == "finished"}
    assert 2 <= len(done_before) < n
    resumed = run_vaelab(["resume", "driverkill", *common], env, tmp_path, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    runs = study_runs(server.uri, "driverkill")
    assert len(runs) == n and len({r.data.tags["vaelab.trial_id"] for r in runs}) == n  # no duplicates
    assert len(study_runs(server.uri, "driverkill", "study")) == 1
    assert {r.data.tags["vaelab.status"] for r in runs} == {"finished"}
    assert_every_epoch_once(server.uri, runs, epochs)
    interrupted = {t for t, r in before.items() if r.data.tags["vaelab.status"] == "running"}
    assert interrupted, "no trial was mid-way when the driver died"
    for run in runs:
        trial = run.data.tags["vaelab.trial_id"]
        if trial in done_before:  # not rerun
            assert run.data.tags["vaelab.attempt"] == "1"
            assert run.info.end_time == before[trial].info.end_time
        if trial in interrupted:  # continued its own run from its checkpoint
            assert int(run.data.tags["vaelab.attempt"]) >= 2
            assert int(run.data.tags["vaelab.resumed_from_epoch"]) >= 1
    assert study_runs(server.uri, "driverkill", "study")[0].data.tags["vaelab.status"] == "finished"
    print(f"driver killed at {killed_at:.0f} s with {len(done_before)}/{n} trials finished and "
          f"{len(interrupted)} mid-way (epochs {[int(before[t].data.metrics.get('epoch', 0)) for t in interrupted]}); "
          f"`vaelab resume` "
          f"finished the rest: {n} trials, {len(runs)} MLflow runs, epochs per run "
          f"{[len(epoch_steps(server.uri, r.info.run_id)) for r in runs]}, attempts "
          f"{sorted(r.data.tags['vaelab.attempt'] for r in runs)}, checkpoints re-created on resume "
          f"{resumed.stdout.count('re-created from')}, {time.monotonic() - started:.0f} s")


@pytest.mark.slow
def test_tracking_server_restarted_mid_study_loses_no_metric(
    tmp_path: Path, two_workers: RayCluster, server: TrackingServer, shared: Path
) -> None:
    cluster = two_workers
    epochs = 12
    study = write_study(tmp_path, "restart", 4, epochs)
    env = cluster.env(MLFLOW_TRACKING_URI=server.uri)
    log = tmp_path / "driver.log"
    started = time.monotonic()
    proc = start_vaelab(["run", str(study), "--budget", "test", "--address", cluster.address, "--storage",
                         str(shared / "ray_results"), "--shared-storage", "--name", "restart", "--no-report"],
                        env, tmp_path, log)
    outages = []
    try:
        for threshold in (2, 6):
            def running_at(threshold: int = threshold) -> bool:
                assert proc.poll() is None, "the study ended before the outage: " + log.read_text()[-3000:]
                epochs_now = logged_epochs(server.uri, "restart")
                return any(threshold <= e < epochs for e in epochs_now.values())

            wait_until(running_at, 600, 0.3, f"a trial past epoch {threshold}")
            snapshot = logged_epochs(server.uri, "restart")
            down = time.monotonic()
            server.kill()  # SIGKILL: requests in flight are cut
            time.sleep(5)
            server.start()
            outages.append((round(down - started), round(time.monotonic() - down, 1), snapshot))
        finish(proc, log)
    finally:
        stop_group(proc)
        if server.proc is None:
            server.start()
    runs = study_runs(server.uri, "restart")
    assert len(runs) == 4 and {r.data.tags["vaelab.status"] for r in runs} == {"finished"}
    assert_every_epoch_once(server.uri, runs, epochs)
    for run in runs:  # every metric the trainer reports, at every epoch
        for key in ("beta", "lr", "steps_per_s", "wall_time_s", "active_units", "kl_layer_1", "kl_layer_2"):
            assert epoch_steps(server.uri, run.info.run_id, key) == list(range(1, epochs + 1)), key
    print(f"tracking server killed and restarted {len(outages)} times (at s, down for s, epochs logged then): "
          f"{outages}; 4 trials, {len(runs)} runs, epochs per run "
          f"{[len(epoch_steps(server.uri, r.info.run_id)) for r in runs]}, {time.monotonic() - started:.0f} s")


# =========================================================================== slow: load


LOAD_TRIALS = int(os.environ.get("VAELAB_LOAD_TRIALS", "32"))
LOAD_EPOCHS = int(os.environ.get("VAELAB_LOAD_EPOCHS", "40"))
TRIAL_MEMORY_GB = 0.45  # one tiny trial process (torch + ray + mlflow), measured on CPU


def mem_available_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return 0.0


def peak_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    now = peak = 0
    for _, delta in events:
        now += delta
        peak = max(peak, now)
    return peak


@pytest.mark.slow
@pytest.mark.parametrize("store", ["sqlite", "server"])
def test_many_concurrent_trials_log_every_metric_exactly_once(tmp_path: Path, store: str, request: Any) -> None:
    need = LOAD_TRIALS * TRIAL_MEMORY_GB + 2
    if mem_available_gb() < need:
        pytest.skip(f"{LOAD_TRIALS} concurrent trials need about {need:.0f} GB free; "
                    f"{mem_available_gb():.1f} GB available (VAELAB_LOAD_TRIALS sets the count)")
    if store == "sqlite":
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    else:
        uri = request.getfixturevalue("server").uri
    name = f"load_{store}"
    cpus = os.cpu_count() or 1
    study = write_study(tmp_path, name, LOAD_TRIALS, LOAD_EPOCHS, cpu=round(cpus / LOAD_TRIALS, 4),
                        max_concurrent=LOAD_TRIALS, max_failures=0)
    env = tool_env(TUNE_MAX_PENDING_TRIALS_PG=str(LOAD_TRIALS), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    storage = tmp_path / "ray_results"
    started = time.monotonic()
    result = run_vaelab(["run", str(study), "--budget", "test", "--storage", str(storage), "--tracking-uri", uri,
                         "--name", name, "--no-report"], env, tmp_path, timeout=1800)
    wall = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # sent: what each trial reported having logged, epoch by epoch (Tune's result.json)
    sent = 0
    results = list((storage / name).glob("*/result.json"))
    assert len(results) == LOAD_TRIALS
    for path in results:
        sent += sum(json.loads(line).get("vaelab_metrics_sent", 0) for line in path.read_text().splitlines() if line)
    # found: every metric history of every run
    runs = study_runs(uri, name)
    assert len(runs) == LOAD_TRIALS and {r.data.tags["vaelab.status"] for r in runs} == {"finished"}
    found, duplicates = 0, []
    c = client(uri)
    for run in runs:
        for key in run.data.metrics:
            steps = [m.step for m in c.get_metric_history(run.info.run_id, key)]
            found += len(steps)
            if len(steps) != len(set(steps)):
                duplicates.append((run.info.run_name, key))
        assert epoch_steps(uri, run.info.run_id) == list(range(1, LOAD_EPOCHS + 1))
    concurrency = peak_overlap([(r.info.start_time, r.info.end_time) for r in runs])
    print(f"\nload [{store}]: trials {LOAD_TRIALS} (peak {concurrency} running at once), epochs {LOAD_EPOCHS}, "
          f"metrics sent {sent}, metrics found {found}, duplicates {len(duplicates)}, wall time {wall:.0f} s")
    assert not duplicates, duplicates[:5]
    assert sent > 0 and found == sent
    assert concurrency >= min(LOAD_TRIALS, 32), concurrency
