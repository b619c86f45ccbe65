"""The four ICML/NIPS paper variants at depth 5 on real MNIST, on CPU.

Trains VAE, VAE+BN, VAE+BN+WU and LVAE+BN+WU for the same number of epochs (warm-up scaled
as in the paper, N_t / epochs = 200 / 2000) and prints a markdown table of test_elbo,
test_ll_iw and active units per layer. Usage (DATA/mnist: a folder holding the four MNIST
IDX files):
    python benchmarks/mnist_variants.py --data-dir DATA/mnist --epochs 10 --eval-iw 200
"""

from __future__ import annotations

import argparse
import json
import time

from vaelab.config import TrialConfig
from vaelab.train import Trainer

VARIANTS = {
    "VAE": dict(inference="vae", batch_norm=False, warmup=False),
    "VAE+BN": dict(inference="vae", batch_norm=True, warmup=False),
    "VAE+BN+WU": dict(inference="vae", batch_norm=True, warmup=True),
    "LVAE+BN+WU": dict(inference="lvae", batch_norm=True, warmup=True),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--eval-iw", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    args = parser.parse_args()
    rows = []
    for label, v in VARIANTS.items():
        cfg = TrialConfig(dataset="mnist", data_dir=args.data_dir, depth=5, inference=v["inference"],
                          batch_norm=v["batch_norm"], epochs=args.epochs, eval_iw=args.eval_iw,
                          eval_every=max(1, args.epochs // 2), seed=args.seed,
                          warmup_epochs=0.1 * args.epochs if v["warmup"] else 0)
        started = time.time()
        final = list(Trainer([cfg]).run())[-1].metrics[0]
        final.update(variant=label, seconds=time.time() - started)
        rows.append(final)
        print(json.dumps({k: final[k] for k in ("variant", "test_elbo", "test_ll_iw", "active_units", "seconds")}),
              flush=True)
    print("\n| variant | test_elbo | test_ll_iw (K=%d) | active units L1..L5 | total |" % args.eval_iw)
    print("|---|---|---|---|---|")
    for r in rows:
        layers = " / ".join(str(int(r[f"active_units_layer_{i}"])) for i in range(1, 6))
        print(f"| {r['variant']} | {r['test_elbo']:.2f} | {r['test_ll_iw']:.2f} | {layers} | {int(r['active_units'])} |")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
