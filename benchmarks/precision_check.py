"""The fast path must not move the likelihood: fp32 training vs the fast path, same budget.

Trains the same model (same seed, same data, same noise streams) under two settings — the
plain fp32 path (`precision=fp32`, `compile=off`) and vaelab's fast path (`precision=bf16`,
the step's matmuls under bfloat16 autocast, with `--fast-compile`, by default the loss
compiled by torch.compile) — for every seed given, and compares what a user reads off the
trial: test ELBO, test L_K, the trainer's own per-evaluation check `bf16_elbo_gap`
(|ELBO in bf16 - ELBO in fp32| on the test set, same weights, same noise) and steps/s.
Two fp32 seeds give the run-to-run spread the fast path's difference is read against.
Appends a table to benchmarks/RESULTS.md with the device and versions.

    python benchmarks/precision_check.py --data-dir DATA/mnist --epochs 10 --seeds 0,1

DATA/mnist: a folder holding the four MNIST IDX files.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import device_name, publish  # noqa: E402

from vaelab.config import TrialConfig  # noqa: E402
from vaelab.hardware import available_cpus, resolve_device, use_cpu_threads  # noqa: E402
from vaelab.train import Trainer  # noqa: E402


def train(args, precision: str, compile_mode: str, seed: int) -> dict[str, float | bool]:
    cfg = TrialConfig(dataset="mnist" if args.data_dir else "digits", data_dir=args.data_dir,
                      train_subset=args.train_subset, inference="lvae", batch_norm=True, depth=5,
                      warmup_epochs=args.epochs / 2, epochs=args.epochs, eval_every=args.eval_every,
                      eval_iw=args.k, device=args.device, compile=compile_mode, precision=precision,
                      seed=seed)
    trainer = Trainer([cfg])
    gaps, steps = [], []
    for report in trainer.run():
        m = report.metrics[0]
        steps.append(m["steps_per_s"])
        if "bf16_elbo_gap" in m:
            gaps.append(m["bf16_elbo_gap"])
    print(f"{precision}/{compile_mode} seed {seed}: test ELBO {m['test_elbo']:.3f}, "
          f"L_{args.k} {m['test_ll_iw']:.3f}", flush=True)
    return {"test_elbo": m["test_elbo"], "test_ll_iw": m["test_ll_iw"], "train_elbo": m["train_elbo"],
            "max_gap": max(gaps) if gaps else float("nan"), "steps_per_s": statistics.median(steps),
            "kept_bf16": trainer.bf16}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--fast-compile", default="compile", help="compile mode of the fast path")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--train-subset", type=int, default=10000)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--threads", type=int, default=available_cpus(),
                        help="CPU threads (default: every CPU this process may use)")
    parser.add_argument("--results", default=str(Path(__file__).with_name("RESULTS.md")))
    args = parser.parse_args()
    use_cpu_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    settings = {"fp32": ("fp32", "off"), "fast path": ("bf16", args.fast_compile)}
    runs = {(name, seed): train(args, precision, mode, seed)
            for seed in seeds for name, (precision, mode) in settings.items()}
    device = resolve_device(args.device)
    tolerance = TrialConfig.model_fields["precision_tolerance"].default
    lines = [f"\n### {dt.date.today()} — precision check, {device_name(device)}",
             f"torch {torch.__version__}; 5-layer LVAE+BN+WU, {args.train_subset} "
             f"{'MNIST' if args.data_dir else 'digits'} training images, {args.epochs} epochs, "
             f"{args.threads} thread(s); "
             f"fp32 = precision fp32, compile off; fast path = precision bf16, compile "
             f"{args.fast_compile}; test metrics always computed in fp32; bf16 check tolerance "
             f"{tolerance} nats\n",
             f"| seed | setting | test ELBO | test L_{args.k} | train ELBO | max bf16_elbo_gap | kept bf16 | median steps/s |",
             "|---|---|---|---|---|---|---|---|"]
    for (name, seed), r in runs.items():
        lines.append(f"| {seed} | {name} | {r['test_elbo']:.3f} | {r['test_ll_iw']:.3f} | {r['train_elbo']:.3f} | "
                     f"{r['max_gap']:.4f} | {'' if name == 'fp32' else ('yes' if r['kept_bf16'] else 'no')} | "
                     f"{r['steps_per_s']:.1f} |")
    diffs = [runs["fast path", s]["test_ll_iw"] - runs["fp32", s]["test_ll_iw"] for s in seeds]
    lines.append(f"\nL_{args.k}(fast path) − L_{args.k}(fp32), same seed: "
                 + ", ".join(f"seed {s} {d:+.3f}" for s, d in zip(seeds, diffs)) + " nats.")
    if len(seeds) > 1:
        fp32 = [runs["fp32", s]["test_ll_iw"] for s in seeds]
        lines.append(f"Seed-to-seed spread of fp32 itself: {max(fp32) - min(fp32):.3f} nats "
                     f"(L_{args.k} over seeds {args.seeds}).")
    publish(lines, args.results)


if __name__ == "__main__":
    main()
