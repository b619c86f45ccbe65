"""IW evaluation: vaelab's batched L_K against a Python loop over K, on a trained model.

Loads an exported `model.pt` (a trial's MLflow artifact or `vaelab train --out DIR`), takes
the first N MNIST test images and computes L_K both ways with independent noise, timing
each. The two estimates agree within Monte Carlo error (the per-example spread of L_K
over sqrt(N) is printed as a yardstick).

    python benchmarks/iw_eval.py --model mlartifacts/.../model.pt --data-dir ../shared/data/mnist \
        --images 1000 --k 5000
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from vaelab.config import TrialConfig
from vaelab.evaluate import evaluate_iw, iw_bound_loop
from vaelab.train import Trainer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--k", type=int, default=5000)
    args = parser.parse_args()
    saved = torch.load(args.model, map_location="cpu", weights_only=True)
    values = saved["config"] | {"data_dir": args.data_dir, "init_from": args.model, "train_subset": 0}
    trainer = Trainer([TrialConfig(**values)])
    trainer._prepare_eval(0)  # BN population statistics, eval mode
    model, x = trainer.model, trainer.data.test_x[: args.images]
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)

    start = time.perf_counter()
    batched = evaluate_iw(model, x, args.k, [torch.Generator(trainer.device).manual_seed(1)],
                          batch_size=min(len(x), 1000))
    sync()
    t_batched = time.perf_counter() - start

    start = time.perf_counter()
    loop = iw_bound_loop(model, x, args.k, [torch.Generator(trainer.device).manual_seed(2)])
    sync()
    t_loop = time.perf_counter() - start

    # yardstick: the spread of per-example L_K estimates over repeated small-K runs
    per_example = torch.stack([evaluate_iw(model, x[i:i + 1], 50, [torch.Generator().manual_seed(i)], 1)
                               for i in range(min(200, len(x)))])
    print(json.dumps({
        "device": str(trainer.device), "images": len(x), "K": args.k,
        "batched_L_K": round(float(batched[0]), 3), "batched_seconds": round(t_batched, 1),
        "batched_samples_per_s": round(len(x) * args.k / t_batched),
        "loop_L_K": round(float(loop[0]), 3), "loop_seconds": round(t_loop, 1),
        "loop_samples_per_s": round(len(x) * args.k / t_loop),
        "difference": round(float(batched[0] - loop[0]), 4),
        "speed_up": round(t_loop / t_batched, 2),
        "per_example_sd_K50": round(float(per_example.std()), 2),
    }, indent=1))


if __name__ == "__main__":
    main()
