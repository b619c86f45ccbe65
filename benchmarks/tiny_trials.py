"""Platform overhead per trial: a real study of many tiny digits trials, and the trial-start lookup.

    python benchmarks/tiny_trials.py study -n 80 [--cpu 0.5] [--concurrent 4] [--epochs 1]
    python benchmarks/tiny_trials.py lookup --runs 100 5000 [--store-dir /tmp/vaelab-lookup]

`study` runs a random search of N one-trial cohorts on scikit-learn's 8x8 digits through the
real runner (`runner.run_study`: local Ray, its own SQLite store in a temporary folder) and
prints trials, wall time, summed training time (each trial's final MLflow `wall_time_s`:
epochs plus evaluations), the platform overhead per trial, distinct worker PIDs (Tune's `pid`
of each trial) and the CPU seconds of the whole process tree (driver, Ray, workers).

Overhead per trial = (fit wall × slots − Σ training) / N, in slot-seconds: the time a Tune
slot held by a trial was not spent training it (process start, imports, store and data
set-up, Tune's bookkeeping). `fit wall` is run_study without Ray's start; `slots` the
trials that run at once. Training time is measured under the same contention as the rest.

`lookup` fills one SQLite store with K ended trial runs of one study run (45 params, 14
tags each; nothing trained) and times what a starting trial asks MLflow: which of its
members already ended (`ended_trial_runs`), and the find-by-trial-id of `TrialRun.open`.

Run another commit's code with PYTHONPATH (the Ray workers inherit it):

    git worktree add /tmp/before <commit>
    PYTHONPATH=/tmp/before/platform python benchmarks/tiny_trials.py study -n 80
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PR_SET_CHILD_SUBREAPER = 36  # Linux prctl: orphaned descendants are re-parented to us

STUDY = """\
name: tinytrials
search_space:
  fixed:
    dataset: digits
    depth: 2
    latent_dims: 8-4
    hidden_dims: 32-16
    activation: leaky_relu
    batch_size: 64
    train_subset: 256
    train_eval_size: 128
    eval_batch_size: 500
    eval_iw: 10
    eval_every: 1
    device: cpu
    compile: "off"
    epochs: {epochs}
  axes:
    lr: {{loguniform: [1.0e-4, 1.0e-2]}}
seeds: [0]
search: {{mode: random, num_samples: {n}, max_concurrent: {concurrent}, seed: 1}}
resources: {{cpu: {cpu}, gpu: 0}}
failure: {{max_failures: 1}}
checkpoint_every: {epochs}
"""


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


# --------------------------------------------------------------------------- study


def run_study_child(args: argparse.Namespace) -> dict[str, Any]:
    """Inside the child process: run the study, return its figures."""
    import ray

    import vaelab
    from vaelab.studies import cluster, load_study, runner
    from vaelab.studies.storage import read_sidecar
    from vaelab.tracking.queries import list_trial_runs
    from vaelab.tracking.runs import StudyRunInfo

    root = Path(tempfile.mkdtemp(prefix="vaelab-tiny-"))
    path = root / "tinytrials.yaml"
    path.write_text(STUDY.format(epochs=args.epochs, n=args.n, concurrent=args.concurrent, cpu=args.cpu))
    uri = f"sqlite:///{root / 'mlflow.db'}"
    started = time.monotonic()
    cluster.connect_ray(None, uri)
    ray_start = time.monotonic() - started
    worker_code = ray.get(ray.remote(lambda: __import__("vaelab").__file__).remote())
    try:
        began = time.monotonic()
        result = runner.run_study(load_study(path), storage=str(root / "ray_results"), tracking_uri=uri,
                                  name="tiny", report=False, progress=False, echo=lambda _: None)
        fit_wall = time.monotonic() - began
    finally:
        ray.shutdown()
    meta = read_sidecar(result.experiment_path)
    rows = list_trial_runs(StudyRunInfo(uri, meta["experiment_id"], meta["parent_run_id"], meta["study"]))
    training = sum(r["metrics"].get("wall_time_s", 0.0) for r in rows)
    return {"code": str(Path(vaelab.__file__).parent), "worker_code": str(Path(worker_code).parent),
            "trials": len(rows), "finished": sum(r["status"] == "finished" for r in rows),
            "ray_start_s": ray_start, "fit_wall_s": fit_wall, "training_s": training,
            "pids": len(tune_pids(Path(result.experiment_path))), "root": str(root)}


def tune_pids(experiment: Path) -> set[int]:
    """The worker process ids Tune recorded in the trials' results."""
    pids = set()
    for result in experiment.glob("*/result.json"):
        for line in result.read_text().splitlines():
            if line.strip():
                pids.add(int(json.loads(line)["pid"]))
    return pids


class TreeCpu:
    """CPU seconds of every process below this one, read from /proc every `period_s`.

    Exit accounting cannot do it: Ray's raylet ignores SIGCHLD, so its workers' CPU time
    never reaches a parent's RUSAGE_CHILDREN. Each process counts as last seen alive, so
    the total misses at most `period_s` of CPU per process (reported as a lower bound)."""

    def __init__(self, period_s: float = 0.1) -> None:
        self.period_s = period_s
        self.ticks: dict[tuple[int, str], int] = {}  # (pid, start time) -> utime + stime
        self.tick_s = 1.0 / os.sysconf("SC_CLK_TCK")

    def sample(self) -> int:
        """Read every descendant once; returns how many there are (zombies included)."""
        stats = {}
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
                except (OSError, IndexError):
                    continue
                stats[int(proc.name)] = fields
        parents = {pid: int(f[1]) for pid, f in stats.items()}
        mine = [pid for pid in stats if _descends(pid, parents, os.getpid())]
        for pid in mine:
            f = stats[pid]
            self.ticks[(pid, f[19])] = int(f[11]) + int(f[12])  # utime, stime; f[19]: start time
        return len(mine)

    @property
    def seconds(self) -> float:
        return sum(self.ticks.values()) * self.tick_s


def _descends(pid: int, parents: dict[int, int], root: int) -> bool:
    while pid > 1:
        pid = parents.get(pid, 0)
        if pid == root:
            return True
    return False


def watch(child: subprocess.Popen, cpu: TreeCpu, linger_s: float) -> int:
    """Sample until `child` exits and its descendants are gone (Ray's daemons outlive the
    driver briefly); reaps what is re-parented here. Returns how many were left at the end."""
    deadline = None
    while True:
        alive = cpu.sample()
        if deadline is None and child.poll() is not None:
            deadline = time.monotonic() + linger_s
        if deadline is not None:
            _reap()
            if alive == 0 or time.monotonic() > deadline:
                return alive
        time.sleep(cpu.period_s)


def _reap() -> None:
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass


def study(args: argparse.Namespace) -> None:
    """Run the study in a child process and count the CPU time of its whole process tree."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # orphans come here, so they stay counted
    started = time.monotonic()
    argv = [sys.executable, __file__, "_child", "-n", str(args.n), "--cpu", str(args.cpu),
            "--concurrent", str(args.concurrent), "--epochs", str(args.epochs)]
    with tempfile.TemporaryFile("w+") as out:
        child = subprocess.Popen(argv, stdout=out, text=True)
        cpu = TreeCpu()
        left = watch(child, cpu, linger_s=30.0)
        wall = time.monotonic() - started
        if child.returncode:
            raise SystemExit(f"the study failed (exit status {child.returncode})")
        out.seek(0)
        figures = json.loads(out.read().strip().splitlines()[-1])
    print_study(figures, args, wall, cpu.seconds, left)


def print_study(f: dict[str, Any], args: argparse.Namespace, wall: float, cpu: float, left: int) -> None:
    slots = args.concurrent
    n = max(f["trials"], 1)
    overhead = (f["fit_wall_s"] * slots - f["training_s"]) / n
    print(f"code {f['code']} (workers: {f['worker_code']})")
    print(f"CPU {cpu_model()}, {os.cpu_count()} cores; {f['trials']} trials ({f['finished']} finished), "
          f"cpu {args.cpu} each, {slots} at a time, {args.epochs} epoch(s)")
    print(f"wall {wall:.1f} s (Ray start {f['ray_start_s']:.1f} s, run_study {f['fit_wall_s']:.1f} s); "
          f"CPU >= {cpu:.1f} s for the whole process tree ({cpu / n:.2f} s per trial)"
          + (f"; {left} process(es) still alive, not counted" if left else ""))
    print(f"training {f['training_s']:.1f} s summed; overhead per trial {overhead:.2f} slot-s; "
          f"{f['pids']} distinct worker PIDs")
    print(json.dumps({**f, "wall_s": wall, "cpu_s": cpu, "overhead_per_trial_s": overhead}))


# --------------------------------------------------------------------------- lookup


def fill_store(uri: str, runs: int) -> dict[str, str]:
    """A study run with `runs` ended trial runs; returns its ids (reused when already filled)."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    from vaelab.tracking import tags as t

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("lookup")
    if exp is not None:
        parent = client.search_runs([exp.experiment_id], f"tags.`{t.TAG_ROLE}` = '{t.ROLE_STUDY}'")[0]
        return {"experiment_id": exp.experiment_id, "parent_run_id": parent.info.run_id}
    exp_id = client.create_experiment("lookup")
    parent = client.create_run(exp_id, tags={t.TAG_ROLE: t.ROLE_STUDY, t.TAG_STUDY: "lookup"}).info.run_id
    params = [Param(f"param_{k:02d}", str(k * 0.1)) for k in range(45)]
    for i in range(runs):
        tags = {t.TAG_ROLE: t.ROLE_TRIAL, t.TAG_STUDY: "lookup", t.TAG_TRIAL_ID: f"t{i:06d}",
                t.TAG_PARENT: parent, t.TAG_STATUS: "finished", t.TAG_VARIANT: "VAE",
                t.TAG_TRIAL_KEY: f"seed={i}", t.TAG_COHORT: f"c{i}", t.TAG_RUN_NAME: "lookup-run",
                t.TAG_NODE: "host/127.0.0.1", t.TAG_ATTEMPT: "1", t.TAG_RESUMED_FROM_EPOCH: "0",
                t.TAG_RAY_NODE: "n", "mlflow.runName": f"seed={i}"}
        run_id = client.create_run(exp_id, tags=tags).info.run_id
        metrics = [Metric(k, 1.0, 0, 1) for k in ("epoch", "test_elbo", "test_ll_iw", "wall_time_s")]
        # the tag a trial sets once it has trained, like vaelab's own runs after a start
        client.log_batch(run_id, metrics=metrics, params=params, tags=[RunTag(t.TAG_CPU_THREADS, "1")])
        client.set_terminated(run_id, "FINISHED")
    return {"experiment_id": exp_id, "parent_run_id": parent}


def median_ms(call: Any, repeats: int) -> float:
    call()  # the first call pays for the connection
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def lookup(args: argparse.Namespace) -> None:
    """Time a starting trial's MLflow lookups against stores of each size."""
    from vaelab.tracking.connection import client_for
    from vaelab.tracking.queries import StudyRunInfo, ended_trial_runs, find_runs, trial_run_match

    print(f"CPU {cpu_model()}; median of {args.repeats} calls")
    for runs in args.runs:
        store = Path(args.store_dir) / f"runs{runs}"
        store.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{store / 'mlflow.db'}"
        filled = time.monotonic()
        ids = fill_store(uri, runs)
        filled = time.monotonic() - filled
        info = StudyRunInfo(uri, ids["experiment_id"], ids["parent_run_id"], "lookup")
        wanted = [f"t{runs // 2:06d}"]
        assert len(ended_trial_runs(info, wanted)) == 1
        ended = median_ms(lambda: ended_trial_runs(info, wanted), args.repeats)
        match = trial_run_match(ids["parent_run_id"], wanted[0])
        client = client_for(uri)
        found = median_ms(lambda: find_runs(client, ids["experiment_id"], match), args.repeats)
        print(f"{runs} trial runs (store ready in {filled:.0f} s): "
              f"ended_trial_runs {ended:.1f} ms, TrialRun.open's find {found:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("study", "_child"):
        p = sub.add_parser(name)
        p.add_argument("-n", type=int, default=80, help="trials")
        p.add_argument("--cpu", type=float, default=0.5, help="Ray CPUs per trial")
        p.add_argument("--concurrent", type=int, default=4, help="trials at once")
        p.add_argument("--epochs", type=int, default=1)
    p = sub.add_parser("lookup")
    p.add_argument("--runs", type=int, nargs="+", default=[100, 5000])
    p.add_argument("--store-dir", default=str(Path(tempfile.gettempdir()) / "vaelab-lookup"))
    p.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    if args.command == "_child":
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        print(json.dumps(run_study_child(args)))
    else:
        {"study": study, "lookup": lookup}[args.command](args)


if __name__ == "__main__":
    main()
