"""Speed benchmarks: vaelab's training core against a plain eager implementation, in one run.

Measures:
  1. training steps/s at batch 256 — vaelab (cohorts of S members: per-trial steps/s and
     member-steps/s) and the eager baseline (benchmarks/eager_baseline.py) — for the 5-layer
     LVAE+BN, the 5-layer VAE and the 1-layer VAE;
  2. IW evaluation samples/s: vaelab's batched L_K against a Python loop over K;
  3. grid throughput: trials per hour for a small grid trained one trial at a time vs packed
     into cohorts;
  4. peak memory per trial;
  5. the fast path (--fast: precision / compile) beside vaelab fp32, and the step's ceiling:
     its own matmuls timed alone in fp32 and bf16 (benchmarks/ceiling.py), so every figure
     reads as a fraction of the machine's limit; whether the fast path's likelihood stays
     within tolerance of fp32 is benchmarks/precision_check.py's job;
  6. the roofline (CPU): the bf16 matmul time plus the optimiser's unavoidable memory traffic
     at this machine's measured bandwidth (benchmarks/ceiling.py), and each fast-path row as a
     fraction of it; the CPU model and whether it has AMX head the table and mark every row.
Prints a markdown table and appends it to benchmarks/RESULTS.md with the device, library
versions and date. Data: real MNIST (--data-dir) or the bundled digits when absent.

    python benchmarks/bench_train.py --data-dir DATA_DIR [--quick]

Before/after comparisons run this script twice or more, alternating, with PYTHONPATH set to
the other checkout's `platform/` for the old code (`--fast-only --no-append`: only the fast
path, nothing appended); the header names the vaelab it imported.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ceiling import Ceiling, cpu_description, has_amx, measure_ceiling, memory_bandwidth  # noqa: E402
from eager_baseline import EagerHVAE, train_steps  # noqa: E402

import vaelab  # noqa: E402
from vaelab.config import TrialConfig  # noqa: E402
from vaelab.data import dataset_for  # noqa: E402
from vaelab.evaluate import evaluate_iw, iw_bound_loop  # noqa: E402
from vaelab.hardware import (available_cpus, has_fast_bf16, resolve_device,  # noqa: E402
                             use_cpu_threads)
from vaelab.train import Trainer  # noqa: E402

MODELS = {
    "LVAE+BN depth 5": dict(inference="lvae", batch_norm=True, depth=5),
    "VAE depth 5": dict(inference="vae", batch_norm=False, depth=5),
    "VAE depth 1": dict(inference="vae", batch_norm=False, depth=1),
}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {cpu_description()} × {torch.get_num_threads()} threads"


def publish(lines: list[str], results: str | None) -> None:
    """Print the section and append it to RESULTS.md (unless results is None)."""
    text = "\n".join(lines) + "\n"
    print(text)
    if results is None:
        return
    with open(results, "a") as fh:
        fh.write(text)


def base_config(args, **overrides) -> TrialConfig:
    values = dict(dataset=args.dataset, data_dir=args.data_dir, train_subset=256 * args.steps,
                  epochs=2, eval_every=1000, train_eval_size=0, eval_iw=1, eval_batch_size=1000,
                  device=args.device, compile=args.compile)
    return TrialConfig(**(values | overrides))


def vaelab_trainer(args, model: dict, members: int, precision: str = "fp32",
                   compile_mode: str | None = None) -> Trainer:
    configs = [base_config(args, seed=s, precision=precision,
                           compile=compile_mode or args.compile, **model) for s in range(members)]
    return Trainer(configs)


def vaelab_steps_per_s(args, model: dict, members: int, precision: str = "fp32",
                       compile_mode: str | None = None) -> tuple[float, float]:
    """Steps/s of one cohort trial (second epoch: after compilation / warm-up) and peak MB."""
    torch._dynamo.reset()  # each row compiles afresh: never the recompile limit of earlier rows
    trainer = vaelab_trainer(args, model, members, precision, compile_mode)
    if trainer.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for report in trainer.run():
        steps = report.metrics[0]["steps_per_s"]
    return steps, report.metrics[0].get("peak_mem_mb", float("nan"))


def step_ceiling(args, model: dict, members: int, bandwidth: float, bf16: bool) -> Ceiling:
    """The matmul-only limit and the roofline of this cohort's step on this machine
    (benchmarks/ceiling.py)."""
    trainer = vaelab_trainer(args, model, members, compile_mode="off")
    perms = torch.stack([torch.randperm(trainer.data.train_x.shape[0]) for _ in range(members)])
    batch = trainer.stepper.batch(perms, 0)
    parameters = sum(p.numel() for p in trainer.model.parameters())
    return measure_ceiling(lambda: trainer.stepper(batch, torch.ones(members)),
                           parameters=parameters, bandwidth=bandwidth, bf16=bf16)


def eager_steps_per_s(args, model: dict, train_x: torch.Tensor) -> float:
    z = [64, 32, 16, 8, 4][: model["depth"]]
    w = [512, 256, 128, 64, 32][: model["depth"]]
    net = EagerHVAE(train_x.shape[1], z, w, model["inference"], model["batch_norm"]).to(train_x.device)
    train_steps(net, train_x, min(10, args.steps))  # warm-up
    return train_steps(net, train_x, args.steps)


def iw_speed(args) -> dict[str, float]:
    """Samples/s of batched L_K and of a Python loop over K on the same trained-for-0 model."""
    cfg = base_config(args, inference="lvae", batch_norm=True, depth=5)
    trainer = Trainer([cfg])
    trainer.evaluator.prepare(0)
    x = trainer.data.test_x[: args.iw_images]
    gens = trainer.evaluator.generators(0)
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
    start = time.perf_counter()
    batched = evaluate_iw(trainer.model, x, args.iw_k, gens, batch_size=min(len(x), 1000),
                          max_rows=(1 << 20) if trainer.device.type == "cuda" else (1 << 16))
    sync()
    t_batched = time.perf_counter() - start
    start = time.perf_counter()
    loop = iw_bound_loop(trainer.model, x, args.iw_k_loop, gens)
    sync()
    t_loop = time.perf_counter() - start
    return {"batched_s": t_batched, "batched_samples_per_s": len(x) * args.iw_k / t_batched,
            "batched_value": float(batched[0]), "loop_s_for_K": t_loop * args.iw_k / args.iw_k_loop,
            "loop_samples_per_s": len(x) * args.iw_k_loop / t_loop, "loop_value": float(loop[0])}


def grid_throughput(args) -> dict[str, float]:
    """Trials/hour for a 4-seed × 2-warm-up grid of small VAEs: one by one vs one cohort."""
    grid = [base_config(args, inference="vae", depth=2, seed=s, warmup_epochs=w, epochs=2,
                        train_subset=256 * 20)
            for s in range(4) for w in (0.0, 1.0)]
    start = time.perf_counter()
    for cfg in grid:
        list(Trainer([cfg]).run())
    solo = time.perf_counter() - start
    start = time.perf_counter()
    list(Trainer(grid).run())
    cohort = time.perf_counter() - start
    return {"trials": len(grid), "solo_trials_per_h": len(grid) * 3600 / solo,
            "cohort_trials_per_h": len(grid) * 3600 / cohort}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", default="auto")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--cohorts", default="1,4,16")
    parser.add_argument("--iw-images", type=int, default=1000)
    parser.add_argument("--iw-k", type=int, default=5000)
    parser.add_argument("--iw-k-loop", type=int, default=200, help="loop iterations timed (scaled to K)")
    parser.add_argument("--results", default=str(Path(__file__).with_name("RESULTS.md")))
    parser.add_argument("--fast", default="precision=bf16,compile=off",
                        help="the fast path's settings: precision=..,compile=..")
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"comma-separated, of: {', '.join(MODELS)}")
    parser.add_argument("--skip-iw", action="store_true")
    parser.add_argument("--skip-grid", action="store_true")
    parser.add_argument("--quick", action="store_true", help="smaller everything (smoke mode)")
    parser.add_argument("--fast-only", action="store_true",
                        help="time only the fast path (no eager baseline, no vaelab fp32)")
    parser.add_argument("--no-append", action="store_true", help="print only; RESULTS.md untouched")
    args = parser.parse_args()
    unknown = set(args.models.split(",")) - set(MODELS)
    if unknown:
        parser.error(f"--models: unknown {', '.join(sorted(unknown))}; choose from {', '.join(MODELS)}")
    args.dataset = "mnist" if args.data_dir else "digits"
    if args.quick:
        args.steps, args.iw_images, args.iw_k, args.iw_k_loop = 5, 100, 100, 20
    use_cpu_threads(available_cpus())
    device = resolve_device(args.device)
    data = dataset_for(base_config(args), device)

    fast = dict(kv.split("=") for kv in args.fast.split(","))
    bandwidth = memory_bandwidth() if device.type == "cpu" else None
    amx = ("yes" if has_amx() else "no") if device.type == "cpu" else "–"
    # bf16 matmuls are timed where the fast path runs them or the CPU has bf16 units
    time_bf16 = fast["precision"] == "bf16" or has_fast_bf16(device)
    lines = [f"\n## {dt.date.today()} — {device_name(device)}",
             f"torch {torch.__version__}, python {sys.version.split()[0]}, data {args.dataset}, "
             f"batch 256, vaelab from {Path(vaelab.__file__).parent.parent}; vaelab fp32 = "
             f"compile {args.compile}, fp32; fast path = {args.fast}; ceiling = the step's own "
             "matmuls timed alone (benchmarks/ceiling.py), in member-steps/s; roofline = the "
             "fast path's matmul time (its precision) + the optimiser's traffic (read and write parameters, gradients, both "
             "Adam moments: 32 bytes per parameter) at the measured memory bandwidth"
             + (f" ({bandwidth / 1e9:.1f} GB/s)" if bandwidth else "")
             + "; % = fast path / roofline\n",
             "| model | S | AMX | eager baseline | vaelab fp32 | vaelab fast path | fast / eager | "
             "ceiling fp32 | ceiling bf16 | optimiser MB/step | roofline | % of roofline | "
             "GFLOP/step | peak MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in args.models.split(","):
        model = MODELS[name]
        eager = float("nan") if args.fast_only else eager_steps_per_s(args, model, data.train_x)
        for s in (int(v) for v in args.cohorts.split(",")):
            plain, peak = ((float("nan"), float("nan")) if args.fast_only
                           else vaelab_steps_per_s(args, model, s))
            quick, fast_peak = vaelab_steps_per_s(args, model, s, fast["precision"], fast["compile"])
            peak = fast_peak if args.fast_only else peak
            ceiling = (step_ceiling(args, model, s, bandwidth, time_bf16) if device.type == "cpu"
                       else None)
            cells = [f"{plain * s:.1f}", f"{quick * s:.1f}", f"{quick * s / eager:.2f}×"]
            if ceiling:
                roofline = ceiling.roofline_steps_per_s(fast["precision"])
                bf16 = f"{ceiling.bf16_steps_per_s * s:.0f}" if time_bf16 else "–"  # not timed
                cells += [f"{ceiling.fp32_steps_per_s * s:.0f}", bf16,
                          f"{ceiling.optimizer_mb:.0f}", f"{roofline * s:.0f}", f"{100 * quick / roofline:.0f}%",
                          f"{ceiling.gflop_per_step:.2f}"]
            else:
                cells += ["–"] * 6
            lines.append(f"| {name} | {s} | {amx} | {eager:.1f} | "
                         + " | ".join(cells) + f" | {peak:.0f} |")
            print(lines[-1], flush=True)
    if not args.skip_iw:
        iw = iw_speed(args)
        lines.append(f"\nIW evaluation, K={args.iw_k} on {args.iw_images} test images (LVAE+BN depth 5): "
                     f"batched {iw['batched_s']:.1f} s ({iw['batched_samples_per_s']:.0f} samples/s, "
                     f"L_K={iw['batched_value']:.2f}); Python loop over K {iw['loop_samples_per_s']:.0f} "
                     f"samples/s → {iw['loop_s_for_K']:.1f} s projected for K={args.iw_k} "
                     f"(L_{args.iw_k_loop}={iw['loop_value']:.2f}).")
    if not args.skip_grid:
        grid = grid_throughput(args)
        lines.append(f"\nGrid throughput ({grid['trials']} small trials, 2 epochs each): one by one "
                     f"{grid['solo_trials_per_h']:.0f} trials/h, one cohort "
                     f"{grid['cohort_trials_per_h']:.0f} trials/h.")
    publish(lines, None if args.no_append else args.results)


if __name__ == "__main__":
    main()
