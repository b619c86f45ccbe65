"""Packed trials on one CPU node: aggregate training throughput of P processes × T threads.

What a Ray node running several trials meets. vaelab gives each trial exactly its CPU
allotment (`hardware.use_cpu_threads`): 2 trials × 1 CPU on 2 cores. Without that, each torch
process starts one thread per core and 2 trials × 2 threads oversubscribe the node.

    python benchmarks/packing.py --data-dir DATA/mnist [--seconds 20]

DATA/mnist: a folder holding the four MNIST IDX files.

Prints, per layout, member-steps/s summed over the processes (5-layer LVAE+BN, batch 256,
S = 1, fp32 eager), and appends the table to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

LAYOUTS = [(1, 2), (2, 1), (2, 2)]  # (processes, threads each) on this 2-core machine

WORKER = r"""
import json, sys, time, torch
from vaelab.config import TrialConfig
from vaelab.hardware import use_cpu_threads
from vaelab.train import Trainer
threads, seconds, data_dir, precision = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4]
use_cpu_threads(threads)
cfg = TrialConfig(dataset="mnist", data_dir=data_dir, train_subset=256 * 40, epochs=1,
                  inference="lvae", batch_norm=True, depth=5, device="cpu", compile="off",
                  precision=precision)
trainer = Trainer([cfg])
perms = torch.randperm(trainer.data.train_x.shape[0]).unsqueeze(0)
beta = torch.ones(1)
for k in range(3):
    trainer.stepper(trainer.stepper.batch(perms, k), beta)
print("READY", flush=True)
sys.stdin.readline()  # all workers start timing together
steps, start = 0, time.perf_counter()
while time.perf_counter() - start < seconds:
    trainer.stepper(trainer.stepper.batch(perms, steps % 40), beta)
    steps += 1
print(json.dumps({"steps": steps, "seconds": time.perf_counter() - start}), flush=True)
"""


def run_layout(processes: int, threads: int, seconds: float, data_dir: str, precision: str) -> float:
    """Member-steps/s summed over `processes` workers of `threads` threads, timed together."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, str(threads), str(seconds), data_dir,
                                 precision], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True, env=env) for _ in range(processes)]
    for w in workers:
        assert w.stdout.readline().strip() == "READY"
    for w in workers:
        w.stdin.write("go\n")
        w.stdin.flush()
    results = [json.loads(w.stdout.readline()) for w in workers]
    for w in workers:
        w.wait()
    return sum(r["steps"] / r["seconds"] for r in results)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--results", default=str(Path(__file__).with_name("RESULTS.md")))
    args = parser.parse_args()
    lines = [f"\n### {time.strftime('%Y-%m-%d')} — packed trials, {os.cpu_count()} cores "
             f"({args.precision}, 5-layer LVAE+BN, batch 256, {args.seconds:.0f} s each)\n",
             "| layout | total member-steps/s |", "|---|---|"]
    for processes, threads in LAYOUTS:
        rate = run_layout(processes, threads, args.seconds, args.data_dir, args.precision)
        lines.append(f"| {processes} trial(s) × {threads} thread(s) | {rate:.1f} |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    with open(args.results, "a") as fh:
        fh.write(text)


if __name__ == "__main__":
    main()
