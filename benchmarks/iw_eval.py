"""IW evaluation on a trained model: batched L_K in fp32 and bf16 against a Python loop over K.

Loads an exported `model.pt` (a trial's MLflow artifact or `vaelab train --out DIR`), takes
the first N MNIST test images and computes L_K with each method, timing each, beside the
matmul ceiling of the same passes (benchmarks/ceiling.py: the passes' own matmul shapes timed
alone). The estimates use independent noise; the per-example spread of L_K over sqrt(N) is
the yardstick for their differences.

    python benchmarks/iw_eval.py --model PATH/model.pt --data-dir DATA/mnist \
        --images 10000 --k 5000 --methods fp32,bf16 [--max-rows 16384] [--loop-k 200]

DATA/mnist: a folder holding the four MNIST IDX files.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ceiling import matmul_seconds, record_matmuls, step_flops  # noqa: E402

from vaelab.config import TrialConfig  # noqa: E402
from vaelab.evaluate import evaluate_iw, iw_bound_loop  # noqa: E402
from vaelab.hardware import available_cpus, use_cpu_threads  # noqa: E402
from vaelab.train import Trainer  # noqa: E402


def ceiling_seconds(model, x: torch.Tensor, k: int, rows: int, dtype: torch.dtype) -> float:
    """Seconds the matmuls of the whole L_K evaluation take alone (one chunk recorded, scaled)."""
    b = min(len(x), 1000)
    k_chunk = max(1, min(k, rows // b))
    calls = record_matmuls(lambda: evaluate_iw(model, x[:b], k_chunk, [torch.Generator().manual_seed(0)],
                                               b, max_rows=rows))
    chunks = (len(x) / b) * (k / k_chunk)
    return matmul_seconds(calls, dtype, repeats=3) * chunks, step_flops(calls) * chunks


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--k", type=int, default=5000)
    parser.add_argument("--methods", default="fp32,bf16", help="comma list of fp32 | bf16 | loop")
    parser.add_argument("--max-rows", type=int, default=1 << 16, help="rows per batched pass")
    parser.add_argument("--loop-k", type=int, default=200, help="loop: K timed, scaled to --k")
    args = parser.parse_args()
    use_cpu_threads(available_cpus())
    saved = torch.load(args.model, map_location="cpu", weights_only=True)
    values = saved["config"] | {"data_dir": args.data_dir, "init_from": args.model, "train_subset": 0}
    trainer = Trainer([TrialConfig(**values)])
    trainer.evaluator.prepare(0)  # BN population statistics, eval mode
    model, x = trainer.model, trainer.data.test_x[: args.images]
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
    out: dict = {"device": str(trainer.device), "threads": torch.get_num_threads(),
                 "images": len(x), "K": args.k, "max_rows": args.max_rows}
    if trainer.device.type == "cpu":
        fp32_s, flops = ceiling_seconds(model, x, args.k, args.max_rows, torch.float32)
        bf16_s, _ = ceiling_seconds(model, x, args.k, args.max_rows, torch.bfloat16)
        out["ceiling"] = {"gflop": round(flops / 1e9), "fp32_seconds": round(fp32_s, 1),
                          "bf16_seconds": round(bf16_s, 1)}
    for seed, method in enumerate(args.methods.split(","), start=1):
        gens = [torch.Generator(trainer.device).manual_seed(seed)]
        start = time.perf_counter()
        if method == "loop":
            value = iw_bound_loop(model, x, args.loop_k, gens)
        else:
            value = evaluate_iw(model, x, args.k, gens, batch_size=min(len(x), 1000),
                                max_rows=args.max_rows, bf16=method == "bf16")
        sync()
        seconds = time.perf_counter() - start
        k = args.loop_k if method == "loop" else args.k
        out[method] = {"L_K": round(float(value[0]), 3), "K": k,
                       "seconds": round(seconds * args.k / k, 1),
                       "samples_per_s": round(len(x) * k / seconds)}
        print(method, out[method], flush=True)
    if "fp32" in out and "bf16" in out:
        out["bf16_minus_fp32"] = round(out["bf16"]["L_K"] - out["fp32"]["L_K"], 4)
    # yardstick: the spread of per-example L_K estimates at K = 50
    per_example = torch.stack([evaluate_iw(model, x[i:i + 1], 50, [torch.Generator().manual_seed(i)], 1)
                               for i in range(min(200, len(x)))])
    out["per_example_sd_K50"] = round(float(per_example.std()), 2)
    out["mc_se_of_mean"] = round(float(per_example.std()) / len(x) ** 0.5, 4)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
