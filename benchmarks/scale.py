"""How vaelab's reads scale with the size of a study: report, query, claims and ls at N trials.

A store of N trials is built from a real small study run (`vaelab run ablations/smoke.yaml`
into a SQLite store), whose trial runs are replicated — params, tags, every metric history,
latest metrics and the artifact files — under one study run, with seed = the replica index,
so every trial looks exactly like one vaelab wrote. Replication is done in SQL and with
hard links: building 10,000 trials takes seconds, not the hours training them would.

    # a real base run (about 3 minutes on 2 cores)
    vaelab run ablations/smoke.yaml --budget smoke --name base --no-report \\
        --tracking-uri sqlite:////tmp/scale/base/mlflow.db --storage /tmp/scale/base/ray_results
    python benchmarks/scale.py build --base /tmp/scale/base --n 1000 --out /tmp/scale/n1000
    python benchmarks/scale.py time --store /tmp/scale/n1000
    python benchmarks/scale.py sweep --base /tmp/scale/base --n 100,1000,10000 --root /tmp/scale

`server` does the same through a tracking server: the store's rows are copied into a fresh
PostgreSQL (a throwaway cluster on 127.0.0.1) behind `vaelab server`, which serves the
artifacts from the store's folder (mlflow-artifacts:/ URIs, downloaded over HTTP):

    python benchmarks/scale.py server --store /tmp/scale/n1000

`time` runs each command as its own process (as a user would) and reads the child's
resource usage: wall seconds, CPU seconds (user + system: the steadier figure on a shared
machine) and peak resident memory. `sweep` builds and times each N and fits the per-trial
cost (the slope of a least-squares line through CPU seconds against N).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from vaelab.tracking.tags import ROLE_STUDY, ROLE_TRIAL, TAG_PARENT, TAG_ROLE, TAG_TRIAL_ID, TAG_TRIAL_KEY

VAELAB = Path(sys.executable).with_name("vaelab")
TABLES_BY_RUN = ("tags", "params", "metrics", "latest_metrics")


# --------------------------------------------------------------------------- building


def build_store(base: Path, n: int, out: Path) -> Path:
    """A copy of `base`'s SQLite store whose study run has `n` trial runs (replicas of its own).

    Replica k of base trial t gets a fresh run id, trial id `<t>~k`, run name `<name>~k`,
    param seed = k and its own artifact folder of hard links to t's files.
    """
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    db = out / "mlflow.db"
    shutil.copyfile(base / "mlflow.db", db)
    con = sqlite3.connect(db)
    parent, trials = _base_runs(con)
    copies = -(-n // len(trials))  # ceil
    mapping = [(t, uuid.uuid4().hex, k) for k in range(copies) for t in trials][:n]
    _replicate_rows(con, mapping)
    _drop_base_trials(con, trials)
    _relink_artifacts(con, base, out, mapping)
    con.commit()
    con.execute("VACUUM")
    con.close()
    print(f"built {out}: {n} trial runs of study run {parent} ({db.stat().st_size / 1e6:.1f} MB)")
    return out


def _base_runs(con: sqlite3.Connection) -> tuple[str, list[str]]:
    parent = con.execute(  # the newest study run: a store may hold older ones, left as they are
        "SELECT r.run_uuid FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid"
        " WHERE t.key = ? AND t.value = ? ORDER BY r.start_time DESC", (TAG_ROLE, ROLE_STUDY)).fetchone()[0]
    trials = [r for (r,) in con.execute(
        "SELECT run_uuid FROM tags WHERE key = ? AND value = ? ORDER BY run_uuid", (TAG_PARENT, parent))]
    return parent, trials


def _replicate_rows(con: sqlite3.Connection, mapping: list[tuple[str, str, int]]) -> None:
    con.execute("CREATE TEMP TABLE replica (old TEXT, new TEXT, k INTEGER)")
    con.executemany("INSERT INTO replica VALUES (?, ?, ?)", mapping)
    con.execute(
        "INSERT INTO runs SELECT r.new, runs.name || '~' || r.k, source_type, source_name, entry_point_name,"
        " user_id, status, start_time + r.k, end_time + r.k, source_version, lifecycle_stage,"
        " replace(artifact_uri, r.old, r.new), experiment_id, deleted_time"
        " FROM runs JOIN replica r ON runs.run_uuid = r.old")
    con.execute(  # a replica's trial id, key and run name get its index: every trial stays unique
        "INSERT INTO tags SELECT key, CASE WHEN key IN (?, ?, 'mlflow.runName') THEN value || '~' || r.k"
        " ELSE value END, r.new FROM tags JOIN replica r ON tags.run_uuid = r.old", (TAG_TRIAL_ID, TAG_TRIAL_KEY))
    con.execute(
        "INSERT INTO params SELECT key, CASE key WHEN 'seed' THEN CAST(r.k AS TEXT) ELSE value END, r.new"
        " FROM params JOIN replica r ON params.run_uuid = r.old")
    con.execute(
        "INSERT INTO metrics SELECT key, value, timestamp + r.k, r.new, step, is_nan"
        " FROM metrics JOIN replica r ON metrics.run_uuid = r.old")
    con.execute(
        "INSERT INTO latest_metrics SELECT key, value, timestamp + r.k, step, is_nan, r.new"
        " FROM latest_metrics JOIN replica r ON latest_metrics.run_uuid = r.old")


def _drop_base_trials(con: sqlite3.Connection, trials: list[str]) -> None:
    marks = ",".join("?" * len(trials))
    for table in (*TABLES_BY_RUN, "runs"):
        con.execute(f"DELETE FROM {table} WHERE run_uuid IN ({marks})", trials)


def _relink_artifacts(con: sqlite3.Connection, base: Path, out: Path, mapping: list[tuple[str, str, int]]) -> None:
    """Every replica's artifact folder: hard links to its original's files, under `out`."""
    uris = dict(con.execute("SELECT run_uuid, artifact_uri FROM runs"))
    base_root, out_root = str(base.resolve()), str(out.resolve())
    for table_uri in list(uris.items()):
        run_id, uri = table_uri
        con.execute("UPDATE runs SET artifact_uri = ? WHERE run_uuid = ?", (uri.replace(base_root, out_root), run_id))
    for old, new, _ in mapping:
        src = Path(urlsplit(uris[new]).path.replace(new, old))
        dest = Path(urlsplit(uris[new].replace(base_root, out_root)).path)
        if not src.is_dir():  # a trial that failed before exporting anything
            continue
        dest.mkdir(parents=True)
        for f in src.iterdir():
            os.link(f, dest / f.name)
    for parent_uri in (u for r, u in uris.items() if r not in {m[1] for m in mapping}):
        src = Path(urlsplit(parent_uri).path)
        if src.is_dir():
            shutil.copytree(src, Path(urlsplit(parent_uri.replace(base_root, out_root)).path), dirs_exist_ok=True)


# --------------------------------------------------------------------------- timing


@dataclass(frozen=True)
class Timing:
    command: str
    wall_s: float
    cpu_s: float
    peak_mb: float
    rc: int
    tail: str


def timed(name: str, argv: list[str], cwd: Path) -> Timing:
    """Run `argv` as a child process; its wall time, CPU time and peak RSS from wait4."""
    env = {**os.environ, "VAELAB_CACHE_DIR": str(cwd / "artifact-cache")}
    start = time.perf_counter()
    with open(cwd / f"{name}.log", "w") as log:
        proc = subprocess.Popen(argv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    tail = (cwd / f"{name}.log").read_text(errors="replace").strip().splitlines()[-1:] or [""]
    return Timing(name, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024,
                  os.waitstatus_to_exitcode(status), tail[0][:160])


def time_commands(store: Path, uri: str = "", prefix: str = "") -> list[Timing]:
    uri = uri or f"sqlite:///{(store / 'mlflow.db').resolve()}"
    out = store / f"{prefix}report"
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(store / "artifact-cache", ignore_errors=True)  # cold: nothing downloaded yet
    commands = {
        "report": [str(VAELAB), "report", "smoke", "--tracking-uri", uri, "--out", str(out)],
        "query": [str(VAELAB), "query", "--study", "smoke", "--tracking-uri", uri, "--format", "csv",
                  "--out", str(store / "query.csv")],
        "claims": [str(VAELAB), "claims", "smoke", "--tracking-uri", uri],
        "ls": [str(VAELAB), "ls", "--tracking-uri", uri, "--ablations", str(store)],
    }
    return [timed(prefix + name, argv, store) for name, argv in commands.items()]


# --------------------------------------------------------------------------- through a server

_COPIED_TABLES = ("runs", "tags", "params", "metrics", "latest_metrics")


def copy_to_postgres(store: Path, pg_uri: str) -> None:
    """The SQLite store's experiments and runs, row for row, into an MLflow schema on PostgreSQL;
    artifact roots become the server's mlflow-artifacts:/ URIs."""
    import psycopg2
    import sqlalchemy

    subprocess.run([str(VAELAB.with_name("mlflow")), "db", "upgrade", pg_uri], check=True, capture_output=True)
    src = sqlite3.connect(store / "mlflow.db")
    root = f"file://{(store / 'mlartifacts').resolve()}"
    dst = psycopg2.connect(sqlalchemy.engine.make_url(pg_uri).render_as_string(hide_password=False)
                           .replace("postgresql+psycopg2", "postgresql"))
    with dst, dst.cursor() as cur:
        exps = src.execute("SELECT experiment_id, name, artifact_location, lifecycle_stage, creation_time,"
                           " last_update_time FROM experiments WHERE name != 'Default'").fetchall()
        cur.executemany("INSERT INTO experiments (experiment_id, name, artifact_location, lifecycle_stage,"
                        " creation_time, last_update_time) VALUES (%s, %s, %s, %s, %s, %s)",
                        [(e[0], e[1], e[2].replace(root, "mlflow-artifacts:"), *e[3:]) for e in exps])
        for table in _COPIED_TABLES:
            cursor = src.execute(f"SELECT * FROM {table}")
            columns = [d[0] for d in cursor.description]
            while rows := cursor.fetchmany(50_000):
                if table == "runs":
                    at = columns.index("artifact_uri")
                    rows = [(*r[:at], r[at].replace(root, "mlflow-artifacts:"), *r[at + 1:]) for r in rows]
                if table in ("metrics", "latest_metrics"):  # SQLite keeps booleans as 0/1
                    at = columns.index("is_nan")
                    rows = [(*r[:at], bool(r[at]), *r[at + 1:]) for r in rows]
                marks = ", ".join(["%s"] * len(columns))
                psycopg2.extras.execute_values(cur, f"INSERT INTO {table} ({', '.join(columns)}) VALUES %s", rows,
                                               template=f"({marks})", page_size=5000)
        cur.execute("ANALYZE")


def time_through_server(store: Path) -> list[Timing]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import psycopg2.extras  # noqa: F401 - execute_values
    from cluster_helpers import Postgres, TrackingServer

    pg_root = store / "pg"
    shutil.rmtree(pg_root, ignore_errors=True)
    pg_root.mkdir()
    postgres = Postgres(pg_root).start()
    server = None
    try:
        copy_to_postgres(store, postgres.uri)
        server = TrackingServer(postgres.uri, store / "mlartifacts", store / "server.log", workers=2).start()
        return time_commands(store, server.uri, prefix="server-")
    finally:
        if server is not None:
            server.stop()
        postgres.stop()


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _trials_in(store: Path) -> int:
    with sqlite3.connect(store / "mlflow.db") as con:
        return con.execute("SELECT COUNT(*) FROM tags WHERE key = ? AND value = ?", (TAG_ROLE, ROLE_TRIAL)).fetchone()[0]


def print_rows(n: int, rows: list[Timing]) -> None:
    for t in rows:
        print(f"| {n} | {t.command} | {t.wall_s:.1f} | {t.cpu_s:.1f} | {t.peak_mb:.0f} | {t.rc} | {t.tail} |",
              flush=True)


def fit_slope(points: list[tuple[int, float]]) -> float:
    """Least-squares slope of seconds against trials: the cost per added trial."""
    mean_n = sum(n for n, _ in points) / len(points)
    mean_s = sum(s for _, s in points) / len(points)
    num = sum((n - mean_n) * (s - mean_s) for n, s in points)
    den = sum((n - mean_n) ** 2 for n, _ in points)
    return num / den if den else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--base", type=Path, required=True)
    b.add_argument("--n", type=int, required=True)
    b.add_argument("--out", type=Path, required=True)
    t = sub.add_parser("time")
    t.add_argument("--store", type=Path, required=True)
    v = sub.add_parser("server")
    v.add_argument("--store", type=Path, required=True)
    s = sub.add_parser("sweep")
    s.add_argument("--base", type=Path, required=True)
    s.add_argument("--n", default="100,1000,10000")
    s.add_argument("--root", type=Path, required=True)
    args = parser.parse_args()
    if args.cmd == "build":
        build_store(args.base, args.n, args.out)
        return
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; python {platform.python_version()}")
    print("| trials | command | wall s | CPU s | peak MB | rc | last line |")
    print("|---|---|---|---|---|---|---|")
    if args.cmd in ("time", "server"):
        n = _trials_in(args.store)
        print_rows(n, time_commands(args.store) if args.cmd == "time" else time_through_server(args.store))
        return
    cpu_by_command: dict[str, list[tuple[int, float]]] = {}
    for n in (int(x) for x in args.n.split(",")):
        store = build_store(args.base, n, args.root / f"n{n}")
        rows = time_commands(store)
        print_rows(n, rows)
        for r in rows:
            cpu_by_command.setdefault(r.command, []).append((n, r.cpu_s))
    for command, points in cpu_by_command.items():
        per_trial = [f"{s / n * 1000:.2f}" for n, s in points]
        print(f"{command}: CPU ms per trial at each N {per_trial}; fitted slope "
              f"{fit_slope(points) * 1000:.2f} ms/trial")


if __name__ == "__main__":
    main()
