"""Mixed precision is allowed only where the likelihood stays within tolerance of fp32.

Trains the same model (same seed, same data, same noise streams) twice — `precision=fp32`
and `precision=bf16` (the step's matmuls under bfloat16 autocast) — and compares what a
user reads off the trial: test ELBO, test L_K, the trainer's own per-evaluation check
`bf16_elbo_gap` (|ELBO in bf16 - ELBO in fp32| on the test set, same weights, same noise)
and steps/s. Appends a table to benchmarks/RESULTS.md with the device and versions.

    python benchmarks/precision_check.py --data-dir ../shared/data/mnist --epochs 10
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import device_name, publish  # noqa: E402

from vaelab.config import TrialConfig  # noqa: E402
from vaelab.train import Trainer, resolve_device  # noqa: E402


def train(args, precision: str) -> dict[str, float | bool]:
    cfg = TrialConfig(dataset="mnist" if args.data_dir else "digits", data_dir=args.data_dir,
                      train_subset=args.train_subset, inference="lvae", batch_norm=True, depth=5,
                      warmup_epochs=args.epochs / 2, epochs=args.epochs, eval_every=args.eval_every,
                      eval_iw=args.k, device=args.device, compile=args.compile, precision=precision)
    trainer = Trainer([cfg])
    gaps, steps = [], []
    for report in trainer.run():
        m = report.metrics[0]
        steps.append(m["steps_per_s"])
        if "bf16_elbo_gap" in m:
            gaps.append(m["bf16_elbo_gap"])
    return {"test_elbo": m["test_elbo"], "test_ll_iw": m["test_ll_iw"], "train_elbo": m["train_elbo"],
            "max_gap": max(gaps) if gaps else float("nan"), "steps_per_s": sorted(steps)[len(steps) // 2],
            "kept_bf16": trainer.bf16}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", default="auto")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--eval-every", type=int, default=2)
    parser.add_argument("--train-subset", type=int, default=10000)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--results", default=str(Path(__file__).with_name("RESULTS.md")))
    args = parser.parse_args()
    runs = {p: train(args, p) for p in ("fp32", "bf16")}
    device = resolve_device(args.device)
    tolerance = TrialConfig.model_fields["precision_tolerance"].default
    lines = [f"\n### {dt.date.today()} — precision check, {device_name(device)}",
             f"torch {torch.__version__}; 5-layer LVAE+BN+WU, {args.train_subset} "
             f"{'MNIST' if args.data_dir else 'digits'} training images, "
             f"{args.epochs} epochs, seed 0, compile={args.compile}; test metrics always computed in fp32; "
             f"tolerance {tolerance} nats\n",
             "| precision | test ELBO | test L_%d | train ELBO | max bf16_elbo_gap | kept bf16 | median steps/s |" % args.k,
             "|---|---|---|---|---|---|---|"]
    for name, r in runs.items():
        lines.append(f"| {name} | {r['test_elbo']:.2f} | {r['test_ll_iw']:.2f} | {r['train_elbo']:.2f} | "
                     f"{r['max_gap']:.3f} | {'' if name == 'fp32' else ('yes' if r['kept_bf16'] else 'no')} | "
                     f"{r['steps_per_s']:.1f} |")
    diff = runs["bf16"]["test_ll_iw"] - runs["fp32"]["test_ll_iw"]
    lines.append(f"\nL_{args.k}(bf16) − L_{args.k}(fp32) after training: {diff:+.2f} nats "
                 "(two trainings whose rounding differs, so this includes run-to-run spread).")
    publish(lines, args.results)


if __name__ == "__main__":
    main()
