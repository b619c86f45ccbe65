"""How far Monte Carlo noise moves per-unit KL across the active-unit threshold (0.01 nats).

Loads a trained model.pt, evaluates the per-unit KL on the test set with several noise seeds
at each number of draws per image, and prints the active-unit counts per seed, the largest
noise standard deviation of a unit's estimate, and how many units' estimates fall on both
sides of 0.01. A bottom-up VAE's layers below the top use a Monte Carlo KL (objectives.py),
so their counts move with the noise unless enough draws are averaged (`kl_eval_samples`).

    python benchmarks/unit_kl_noise.py --model PATH/model.pt --data-dir DATA/mnist \
        --draws 1,8,32 --seeds 6

DATA/mnist: a folder holding the four MNIST IDX files.
"""

from __future__ import annotations

import argparse

import torch

from vaelab.config import TrialConfig
from vaelab.evaluate import ACTIVE_UNIT_THRESHOLD, evaluate_elbo
from vaelab.train import Trainer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--draws", default="1,8,32")
    parser.add_argument("--seeds", type=int, default=6)
    args = parser.parse_args()
    saved = torch.load(args.model, map_location="cpu", weights_only=True)
    cfg = TrialConfig(**(saved["config"] | {"data_dir": args.data_dir, "init_from": args.model}))
    trainer = Trainer([cfg])
    trainer.evaluator.prepare(0)  # BN population statistics, eval mode
    for draws in (int(d) for d in args.draws.split(",")):
        runs = torch.stack([
            torch.cat([u[0] for u in evaluate_elbo(
                trainer.model, trainer.data.test_x, [torch.Generator().manual_seed(seed)],
                1000, cfg.kl_estimator, n_samples=draws).unit_kl])
            for seed in range(args.seeds)])  # (seeds, units)
        active = runs > ACTIVE_UNIT_THRESHOLD
        straddle = int((active.any(0) & (~active).any(0)).sum())
        print(f"draws/image {draws}: active units per noise seed {active.sum(1).tolist()}; "
              f"largest noise sd of a unit {runs.std(0).max():.4f} nats; "
              f"units on both sides of {ACTIVE_UNIT_THRESHOLD}: {straddle}", flush=True)


if __name__ == "__main__":
    main()
