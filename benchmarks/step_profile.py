"""Where one cohort training step's time goes: a torch.profiler top-ops table in ms per step.

Builds a Trainer for one model (as bench_train.py does), warms the step up (compiling it
when asked), then profiles `--steps` steps and prints the ops ranked by self CPU time, in
milliseconds per step. Run it with PYTHONPATH pointing at another checkout's `platform/` to
profile that code with the same script.

    python benchmarks/step_profile.py --data-dir DATA_DIR --members 16 --precision bf16 \
        --compile compile [--model "LVAE+BN depth 5"] [--steps 10] [--rows 25]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import MODELS  # noqa: E402

from vaelab.config import TrialConfig  # noqa: E402
from vaelab.hardware import available_cpus, use_cpu_threads  # noqa: E402
from vaelab.train import Trainer  # noqa: E402


def build(args) -> Trainer:
    configs = [TrialConfig(dataset="mnist" if args.data_dir else "digits", data_dir=args.data_dir,
                           train_subset=256 * (args.steps + args.warmup), epochs=2,
                           eval_every=1000, train_eval_size=0, eval_iw=1, seed=s,
                           precision=args.precision, compile=args.compile, **MODELS[args.model])
               for s in range(args.members)]
    return Trainer(configs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--model", default="LVAE+BN depth 5", choices=list(MODELS))
    parser.add_argument("--members", type=int, default=16)
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--compile", default="compile")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--threads", type=int, default=0, help="0: all CPUs of the affinity mask")
    parser.add_argument("--where", default=None, metavar="OP",
                        help="also print where OP (e.g. aten::copy_) is called from, by input shapes")
    args = parser.parse_args()
    use_cpu_threads(args.threads or available_cpus())
    trainer = build(args)
    stepper = trainer.stepper
    perms = stepper.permutations()
    beta = torch.ones(args.members)
    for k in range(args.warmup):
        stepper(stepper.batch(perms, k), beta)
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=bool(args.where),
                 with_stack=bool(args.where)) as prof:
        for k in range(args.warmup, args.warmup + args.steps):
            stepper(stepper.batch(perms, k), beta)
    wall = (time.perf_counter() - start) / args.steps
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) / 1e3 / args.steps
    print(f"{args.model}, S={args.members}, {args.precision}, compile={args.compile}, "
          f"{torch.get_num_threads()} threads: {1e3 * wall:.1f} ms/step under the profiler "
          f"(self CPU total {total:.1f} ms/step)\n")
    print("| op | self ms/step | calls/step |\n|---|---|---|")
    for e in events[:args.rows]:
        print(f"| {e.key[:70]} | {e.self_cpu_time_total / 1e3 / args.steps:.2f} | "
              f"{e.count / args.steps:.0f} |")
    if args.where:
        print(f"\n{args.where} by caller and input shapes:")
        grouped = [e for e in prof.key_averages(group_by_input_shape=True, group_by_stack_n=6)
                   if e.key == args.where]
        for e in sorted(grouped, key=lambda e: e.self_cpu_time_total, reverse=True)[:args.rows]:
            print(f"{e.self_cpu_time_total / 1e3 / args.steps:8.2f} ms/step "
                  f"{e.count / args.steps:5.0f} calls/step  {e.input_shapes}")
            for frame in e.stack[:6]:
                print(f"      {frame}")


if __name__ == "__main__":
    main()

