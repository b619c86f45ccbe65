"""GPU evidence in one command: the gpu tests, steps/s, L_5000 timing, the ICML paper
budget with a resumable checkpoint, and the projected ICML Fig 3 grid hours.

    python3 benchmarks/gpu_check.py --out DIR [--budget-min 9] [--resume DIR] [--smoke]

Sections, each run even if an earlier one failed, inside a wall-clock budget this script
keeps itself (later sections get what is left):
  1. tests  — `pytest -m gpu` on the test files that hold gpu tests;
  2. speed  — steps/s of the eager baseline and of vaelab (compile off / compile /
              cudagraphs × fp32 / bf16 × cohort S = 1, 4, 16) for the 5-layer LVAE+BN and
              the 1-layer VAE at batch 256, with peak memory (most important first);
  3. iw     — L_5000 on the whole MNIST test set, batched: seconds and samples/s;
  4. paper  — the ICML budget (2000 epochs, N_t = 200, batch 256, lr 1e-3) for the 5-layer
              LADDER+BN+WU and VAE+BN+WU: as many epochs as fit, test ELBO and L_K reached,
              projected time for 2000, and `paper_<model>.pt` (< 16 MiB) in DIR, which
              `--resume DIR` continues in a later call;
  5. grid   — projected hours for the ICML Fig 3 grid (20 cells; 60 models with 3 seeds).
Writes DIR/summary.md, DIR/results.json, DIR/gpu_tests.log, DIR/worker.log and prints
the summary. `--smoke` runs every code path with tiny sizes in seconds (CPU too); without
CUDA the GPU-only parts say "skipped: no CUDA".

Runs under a bare Python with torch (the GPU machine's): whatever the core needs beyond
it (pydantic) comes from the wheels `make gpu-bundle` puts in .gpu-wheels/, unpacked and
put on the path here; MNIST from .gpu-data/mnist when that exists. This file imports no
torch: the sections run in worker processes (benchmarks/gpu_sections.py), so a hung or
crashed section is killed at its deadline and the next starts in a fresh process.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import importlib
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]
WHEEL_LIST = REPO / "benchmarks" / "gpu_wheels.txt"
DEFAULT_WHEELS = REPO / ".gpu-wheels"
DEFAULT_DATA = REPO / ".gpu-data" / "mnist"
SECTIONS = ("tests", "speed", "iw", "paper", "grid")
WORKER_SECTIONS = ("speed", "iw", "paper")
# Expected in the GPU machine's Python (a CUDA torch environment has them); never bundled.
DEVICE_PACKAGES = ("torch", "numpy", "scipy", "pandas", "pyarrow", "matplotlib", "typer",
                   "pytest", "scikit-learn")
DEVICE_LACKS = ("pydantic", "ray", "mlflow", "optuna")  # not expected there (its typer may lack pydantic)
BUNDLED_MODULES = ("pydantic", "yaml")  # what the wheels in gpu_wheels.txt provide
TESTS_SHARE = 0.28  # of the budget: the three gpu tests compile twice (about 150 s of 9 min)
GRACE_S = 20.0  # past a section's deadline before its worker is killed
ICML_GRID_CELLS = 20  # 4 variants × depth 1-5 (ICML Fig 3)
ICML_SEEDS = 3


class UsageError(Exception):
    """Bad input: printed as one paragraph, exit status 2."""


# ----------------------------------------------------------------------------- bundle

def unpack_wheels(wheels: list[Path], site: Path) -> Path:
    """Install = unzip: a wheel is a zip of its importable tree (no scripts needed here)."""
    stamp = site / ".unpacked"
    names = "\n".join(sorted(w.name for w in wheels))
    if stamp.exists() and stamp.read_text() == names:
        return site
    site.mkdir(parents=True, exist_ok=True)
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(site)
    stamp.write_text(names)
    return site


def activate_bundle(wheel_dir: Path) -> str:
    """Put the bundled wheels on sys.path and PYTHONPATH when this Python lacks a module
    the core needs; returns what was done (for the summary)."""
    missing = [m for m in BUNDLED_MODULES if importlib.util.find_spec(m) is None]
    if not missing:
        return "not needed: " + ", ".join(BUNDLED_MODULES) + " importable"
    wheels = sorted(wheel_dir.glob("*.whl"))
    if not wheels:
        raise UsageError(f"this Python ({sys.executable}) has no {', '.join(missing)} and "
                         f"{wheel_dir} holds no wheels: run `make gpu-bundle` on a machine with "
                         f"network access and carry {wheel_dir.name} with the repository")
    # unpacked outside the repository: only the wheels travel to the GPU machine
    key = hashlib.sha1("\n".join(w.name for w in wheels).encode()).hexdigest()[:12]
    site = unpack_wheels(wheels, Path(tempfile.gettempdir()) / f"vaelab-gpu-site-{key}")
    sys.path.insert(0, str(site))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    importlib.invalidate_caches()
    try:
        for module in missing:
            importlib.import_module(module)
    except ImportError as err:
        raise UsageError(f"the wheels in {wheel_dir} do not import under Python "
                         f"{sys.version.split()[0]} ({err}); `make gpu-bundle` downloads them for "
                         f"CPython 3.12 (GPU_PYTHON_VERSION=3.x to change)") from err
    return f"{len(wheels)} wheels from {wheel_dir.name} unpacked to {site}"


# ----------------------------------------------------------------------------- section 1

def gpu_test_files() -> list[Path]:
    """Only files that hold gpu tests: the rest may import ray or mlflow at the top, which
    the GPU machine lacks."""
    return sorted(p for p in (REPO / "tests").glob("test_*.py")
                  if "pytest.mark.gpu" in p.read_text())


def tests_section(out: Path, deadline: float) -> dict[str, Any]:
    files = gpu_test_files()
    cmd = [sys.executable, "-m", "pytest", "-q", "-rA", "-m", "gpu", "-p", "no:cacheprovider",
           *[str(f.relative_to(REPO)) for f in files]]
    log = out / "gpu_tests.log"
    started = time.time()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
        timed_out = wait_or_kill(proc, lambda: deadline)
    text = log.read_text()
    print(text[-4000:], flush=True)
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error|errors)", text.splitlines()[-1] if text else "")}
    if timed_out:
        status = f"failed: timed out after {time.time() - started:.0f} s"
    elif proc.returncode == 0 and counts.get("passed", 0) == 0 and counts.get("skipped", 0) > 0:
        status = "skipped: no CUDA" if "CUDA" in text else "skipped"
    else:
        status = "ok" if proc.returncode == 0 else f"failed: pytest exit status {proc.returncode}"
    return {"status": status, "files": [f.name for f in files], "counts": counts,
            "command": " ".join(cmd[1:]), "seconds": time.time() - started,
            "summary_line": text.strip().splitlines()[-1] if text.strip() else ""}


# ----------------------------------------------------------------------------- workers

def wait_or_kill(proc: subprocess.Popen, deadline_of) -> bool:
    """Wait for proc; kill its process group once `deadline_of()` + grace has passed."""
    while proc.poll() is None:
        if time.time() > deadline_of() + GRACE_S:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.5)
    return False


def current_deadline(work: Path, fallback: float) -> float:
    try:
        return json.loads((work / "current.json").read_text())["deadline"]
    except (OSError, KeyError, ValueError):
        return fallback


def run_workers(plan: dict[str, Any], out: Path) -> dict[str, dict[str, Any]]:
    """Run the worker sections; after a crash, a kill or a failed section, a fresh worker
    takes the sections left."""
    work, results = Path(plan["work"]), {}
    todo = list(plan["sections"])
    with open(out / "worker.log", "a") as log:
        while todo:
            (work / "current.json").unlink(missing_ok=True)
            plan_file = work / "plan.json"
            plan_file.write_text(json.dumps(plan | {"sections": todo}))
            proc = subprocess.Popen([sys.executable, str(REPO / "benchmarks" / "gpu_sections.py"),
                                     "--plan", str(plan_file)], cwd=REPO, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, start_new_session=True)
            copier = threading.Thread(target=_copy_lines, args=(proc.stdout, log), daemon=True)
            copier.start()
            timed_out = wait_or_kill(proc, lambda: current_deadline(work, plan["end"]))
            copier.join(timeout=5)
            todo = _collect(work, todo, results, proc.returncode, timed_out, log)
    return results


def _copy_lines(stream, log) -> None:
    for line in stream:
        sys.stdout.write(line)
        sys.stdout.flush()
        log.write(line)
        log.flush()


def _collect(work: Path, todo: list[str], results: dict, returncode: int, timed_out: bool,
             log) -> list[str]:
    """Take the finished sections' JSON; the first unfinished one failed; return the rest."""
    for i, name in enumerate(todo):
        path = work / f"{name}.json"
        record = json.loads(path.read_text()) if path.exists() else {}
        if record.get("status", "running") != "running":
            results[name] = record
            if record["status"].startswith("failed"):
                return todo[i + 1:]
            continue
        why = "killed at its deadline" if timed_out else f"worker exit status {returncode}"
        tail = log_tail(log)
        results[name] = record | {"status": f"failed: {why}", "log_tail": tail}
        return todo[i + 1:]
    return []


def log_tail(log, lines: int = 30) -> str:
    log.flush()
    return "\n".join(Path(log.name).read_text().splitlines()[-lines:])


# ----------------------------------------------------------------------------- section 5

def best_rate(rows: list[dict], model: str, members: int) -> Optional[dict]:
    """The fastest fp32 vaelab measurement of `model` with cohort size `members`."""
    found = [r for r in rows if r.get("model") == model and r.get("impl") == "vaelab"
             and r.get("members") == members and r.get("precision") == "fp32"
             and r.get("status") == "ok"]
    return max(found, key=lambda r: r["steps_per_s"], default=None)


def grid_section(speed: dict[str, Any], paper: dict[str, Any]) -> dict[str, Any]:
    """ICML Fig 3: 4 variants × depths 1-5 = 20 cells (60 models with 3 seeds), 2000
    epochs each. Per model: the paper section's measured 5-layer hours (evaluations
    included) when it ran, else 2000 × 234 steps at the best measured steps/s."""
    rows = speed.get("rows", [])
    per_model_h, source = None, ""
    measured = [v["projected_h"] for v in paper.values() if isinstance(v, dict) and "projected_h" in v]
    if measured:
        per_model_h, source = max(measured), "paper section: 5-layer epochs and evaluations measured"
    else:
        deep = best_rate(rows, "LVAE+BN d5", 1)
        if deep is None:
            return {"status": "skipped: no 5-layer rate was measured"}
        per_model_h = 2000 * 234 / deep["steps_per_s"] / 3600
        source = f"speed section: LVAE+BN d5 {deep['compile']} steps/s, evaluations excluded"
    result = {"status": "ok", "per_model_h": per_model_h, "source": source,
              "grid_20_h": ICML_GRID_CELLS * per_model_h,
              "grid_60_h": ICML_GRID_CELLS * ICML_SEEDS * per_model_h,
              "bound": "upper: every cell costed as a 5-layer model, one model at a time"}
    result |= depth_scaled(rows, per_model_h) | seed_cohorts(rows, per_model_h)
    return result


def depth_scaled(rows: list[dict], per_model_h: float) -> dict[str, Any]:
    """Step time interpolated linearly in depth between the 1-layer VAE and the 5-layer
    LVAE+BN (on a GPU the step is launch-bound: kernels grow with depth)."""
    deep, shallow = best_rate(rows, "LVAE+BN d5", 1), best_rate(rows, "VAE d1", 1)
    if deep is None or shallow is None:
        return {}
    t5, t1 = 1 / deep["steps_per_s"], 1 / shallow["steps_per_s"]
    scale = sum((t1 + (t5 - t1) * (d - 1) / 4) / t5 for d in range(1, 6)) / 5
    return {"grid_20_h_depth_scaled": ICML_GRID_CELLS * per_model_h * scale,
            "grid_60_h_depth_scaled": ICML_GRID_CELLS * ICML_SEEDS * per_model_h * scale}


def seed_cohorts(rows: list[dict], per_model_h: float) -> dict[str, Any]:
    """Three seeds of a cell trained as one cohort: a trial of S = 4 members bounds the
    cost of S = 3 (seed is a cohort-varying setting)."""
    one, four = best_rate(rows, "LVAE+BN d5", 1), best_rate(rows, "LVAE+BN d5", 4)
    if one is None or four is None:
        return {}
    cost = one["steps_per_s"] / four["steps_per_s"]  # a 4-member step in 1-member steps
    return {"grid_60_h_seed_cohorts": ICML_GRID_CELLS * per_model_h * cost,
            "cohort_cost_vs_one": cost}


# ----------------------------------------------------------------------------- summary

def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def summary_lines(results: dict[str, Any]) -> list[str]:
    meta, sec = results["meta"], results["sections"]
    lines = [f"# gpu_check — {meta['date']}", "",
             f"device: {meta.get('device', '?')}; torch {meta.get('torch', '?')}; "
             f"python {meta['python']}; mode: {'smoke (tiny sizes, numbers meaningless)' if meta['smoke'] else 'full'}; "
             f"data: {meta['dataset']} ({meta['data_dir'] or 'default location'}); "
             f"budget {meta['budget_s']:.0f} s, used {meta['used_s']:.0f} s; bundle: {meta['bundle']}", ""]
    for name in SECTIONS:
        record = sec.get(name, {"status": "not requested"})
        lines.append(f"## {SECTIONS.index(name) + 1}. {name} — {record.get('status')} "
                     f"({fmt(record.get('seconds'), 0)} s)")
        shown = record.get("status") == "ok" or (name in ("tests", "speed", "paper") and len(record) > 2)
        lines += SECTION_LINES[name](record) if shown else []
        if "log_tail" in record or "traceback" in record:
            lines += ["```", (record.get("traceback") or record.get("log_tail"))[-1500:], "```"]
        lines.append("")
    return lines + target_lines(results["targets"], meta["smoke"])


def tests_lines(r: dict) -> list[str]:
    return [f"`{r['command']}` → {r['summary_line']}"]


def speed_lines(r: dict) -> list[str]:
    rows = r.get("rows", [])
    if not rows:
        return []
    eager = {x["model"]: x["steps_per_s"] for x in rows if x.get("impl") == "eager" and x.get("status") == "ok"}
    out = [f"batch {r.get('batch')}, {r.get('steps')} timed steps per measurement (the Trainer's "
           "second epoch; the first compiles / captures). peak MB: training, CUDA allocator.", "",
           "| model | impl | compile | precision | S | steps/s | member-steps/s | ÷ eager | warm-up s | peak MB | status |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for x in rows:
        ratio = (x["member_steps_per_s"] / eager[x["model"]]
                 if x.get("status") == "ok" and x["model"] in eager else None)
        out.append(f"| {x['model']} | {x['impl']} | {x.get('compile', '-')} | {x.get('precision', 'fp32')} "
                   f"| {x['members']} | {fmt(x.get('steps_per_s'))} | {fmt(x.get('member_steps_per_s'))} "
                   f"| {fmt(ratio, 2)} | {fmt(x.get('warmup_s'))} | {fmt(x.get('peak_mb'), 0)} | {x['status']} |")
    return out


def iw_lines(r: dict) -> list[str]:
    out = [f"L_{r['k']} on {r['images']} test images, untrained 5-layer LVAE+BN (times the "
           "evaluation; the value is no likelihood):", "",
           "| rows per pass | seconds | samples/s | peak MB |", "|---|---|---|---|"]
    out += [f"| {x['max_rows']:,} | {fmt(x['seconds'], 2)} | {fmt(x['samples_per_s'], 0)} "
            f"| {fmt(x['peak_mb'], 0)} |" for x in r["runs"]]
    return out


def paper_lines(r: dict) -> list[str]:
    out = ["| model | epochs (this call) | test ELBO | L_K (K) | paper L_5000 | s/epoch | "
           "eval extra s | projected h for 2000 | checkpoint |", "|---|---|---|---|---|---|---|---|---|"]
    for name, x in r.items():
        if not isinstance(x, dict) or "label" not in x:
            continue
        lk = f"{fmt(x.get('l_k'), 2)} ({x.get('k', '–')})"
        out.append(f"| {x['label']} | {x['epoch']} ({x['start_epoch']}→{x['epoch']}) "
                   f"| {fmt(x.get('test_elbo'), 2)} | {lk} | {x['paper_l5000']} | {fmt(x.get('epoch_s'), 2)} "
                   f"| {fmt(x.get('eval_extra_s'), 2)}{' (est.)' if x.get('eval_extra_estimated') else ''} "
                   f"| {fmt(x.get('projected_h'), 2)} | {x['checkpoint']} ({fmt(x.get('mb'), 1)} MiB) |")
    notes = [f"- {x['label']}: {x['note']}" for x in r.values()
             if isinstance(x, dict) and x.get("note")]
    return out + ([""] + notes if notes else [])


def grid_lines(r: dict) -> list[str]:
    out = [f"per model (2000 epochs): {fmt(r['per_model_h'], 2)} h — {r['source']}",
           f"- {ICML_GRID_CELLS} cells: {fmt(r['grid_20_h'], 1)} h; {ICML_GRID_CELLS * ICML_SEEDS} "
           f"models (3 seeds): {fmt(r['grid_60_h'], 1)} h ({r['bound']})"]
    if "grid_20_h_depth_scaled" in r:
        out.append(f"- depth-scaled step time: {fmt(r['grid_20_h_depth_scaled'], 1)} h / "
                   f"{fmt(r['grid_60_h_depth_scaled'], 1)} h")
    if "grid_60_h_seed_cohorts" in r:
        out.append(f"- 3 seeds per cell as one cohort (cost of S=4 = {fmt(r['cohort_cost_vs_one'], 2)}× S=1): "
                   f"{fmt(r['grid_60_h_seed_cohorts'], 1)} h for 60 models")
    return out


def targets(sections: dict[str, Any], smoke: bool) -> list[dict[str, Any]]:
    """The speed targets listed below (benchmarks, not tests) against what this call measured; a
    smoke run's tiny sizes are not compared."""
    rows = sections.get("speed", {}).get("rows", [])
    ok = [r for r in rows if r.get("status") == "ok" and r.get("model") == "LVAE+BN d5"]
    eager = next((r["steps_per_s"] for r in ok if r["impl"] == "eager"), None)
    one = max((r["steps_per_s"] for r in ok if r["impl"] == "vaelab" and r["members"] == 1), default=None)
    sixteen = max((r["member_steps_per_s"] for r in ok if r["members"] == 16), default=None)
    iw = sections.get("iw", {})
    iw_s = iw.get("seconds") if iw.get("images") == 10000 and iw.get("k") == 5000 else None
    grid = sections.get("grid", {})
    grid_h = min((v for k, v in grid.items() if k.startswith("grid_60_h")), default=None)
    found = [("5-layer LVAE+BN, S=1: vaelab ÷ eager steps/s", one / eager if one and eager else None, ">=", 10.0),
             ("5-layer LVAE+BN, S=16: member-steps/s", sixteen, ">=", 30000.0),
             ("L_5000 on 10,000 test images: seconds", iw_s, "<=", 10.0),
             ("ICML Fig 3 grid, 60 models × 2000 epochs: hours (best projection)", grid_h, "<=", 1.0)]
    return [{"target": name, "value": value, "goal": f"{op} {goal:g}",
             "met": None if value is None or smoke else (value >= goal if op == ">=" else value <= goal)}
            for name, value, op, goal in found]


def target_lines(found: list[dict[str, Any]], smoke: bool) -> list[str]:
    lines = ["## Targets" + (" (smoke: sizes tiny, not comparable)" if smoke else ""), "",
             "| target | goal | measured | met |", "|---|---|---|---|"]
    for t in found:
        met = "–" if t["met"] is None else ("yes" if t["met"] else "no")
        lines.append(f"| {t['target']} | {t['goal']} | {fmt(t['value'], 2)} | {met} |")
    return lines + [""]


SECTION_LINES = {"tests": tests_lines, "speed": speed_lines, "iw": iw_lines,
                 "paper": paper_lines, "grid": grid_lines}


# ----------------------------------------------------------------------------- main

def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "gpu-check-out")
    parser.add_argument("--budget-min", type=float, default=9.0,
                        help="wall-clock budget for everything (default 9 minutes)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--resume", type=Path, default=None,
                        help="a folder holding paper_*.pt from an earlier call: continue that run")
    parser.add_argument("--data-dir", default=None,
                        help="MNIST IDX files (default .gpu-data/mnist when present, else vaelab's)")
    parser.add_argument("--wheels", type=Path, default=DEFAULT_WHEELS)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: every code path in seconds")
    args = parser.parse_args(argv)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown or not args.sections:
        raise UsageError(f"--sections {','.join(args.sections)}: unknown {unknown}; "
                         f"choose from {','.join(SECTIONS)}")
    if args.budget_min <= 0:
        raise UsageError(f"--budget-min {args.budget_min}: the budget must be positive minutes")
    if args.resume is not None and not sorted(args.resume.glob("paper_*.pt")):
        raise UsageError(f"--resume {args.resume}: no paper_*.pt checkpoint there (copy the "
                         "files an earlier call wrote to its --out folder into it)")
    if args.data_dir is None and DEFAULT_DATA.is_dir():
        args.data_dir = str(DEFAULT_DATA)
    # --smoke without MNIST files uses the bundled 8x8 digits (no files needed)
    args.dataset = "digits" if args.smoke and args.data_dir is None else "mnist"
    return args


def main(argv: Optional[list[str]] = None) -> int:
    started = time.time()
    try:
        args = parse_args(argv)
        bundle = activate_bundle(args.wheels)
    except UsageError as err:
        print(f"gpu_check: {err}", file=sys.stderr)
        return 2
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "platform"), os.environ.get("PYTHONPATH")]))
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    end = started + 60 * args.budget_min
    sections: dict[str, Any] = {}
    if "tests" in args.sections:
        sections["tests"] = tests_section(out, time.time() + TESTS_SHARE * (end - time.time()))
    worker = [s for s in WORKER_SECTIONS if s in args.sections]
    if worker:
        with tempfile.TemporaryDirectory(prefix="gpu_check_") as work:
            plan = {"sections": worker, "end": end, "smoke": args.smoke, "dataset": args.dataset,
                    "data_dir": args.data_dir, "out": str(out), "work": work,
                    "resume": str(args.resume.resolve()) if args.resume else None}
            sections |= run_workers(plan, out)
    if "grid" in args.sections:
        sections["grid"] = grid_section(sections.get("speed", {}), sections.get("paper", {})) | {"seconds": 0.0}
    device = next((s["device"] for s in sections.values() if isinstance(s.get("device"), dict)), {})
    results = {"meta": device | {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                                 "python": sys.version.split()[0], "smoke": args.smoke,
                                 "dataset": args.dataset, "data_dir": args.data_dir,
                                 "budget_s": end - started, "used_s": time.time() - started,
                                 "bundle": bundle, "argv": sys.argv[1:]},
               "sections": sections, "targets": targets(sections, args.smoke)}
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    text = "\n".join(summary_lines(results)) + "\n"
    (out / "summary.md").write_text(text)
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
