"""What a trial measures at an evaluation epoch: test (and train) ELBO, per-layer and
per-unit KL, active units, the bf16-vs-fp32 ELBO gap, and on the last epoch the test L_K.

Wraps the math of evaluate.py with the trial's own evaluation noise: generators that are
independent of the training stream (so evaluating never changes training), one shared
binarization of the evaluation data for every member, and BN population statistics.
Imports torch and the model math only.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from .config import TrialConfig
from .data import Dataset, binarize
from .evaluate import ElboStats, evaluate_elbo, evaluate_iw, population_statistics
from .model import HierarchicalVAE

SHARED_EVAL_SEED = 987_654_321  # evaluation data binarization: the same for every member


@dataclass
class Evaluation:
    """One evaluation of a cohort. `metrics`: one dict per member
    (metric names as in docs/ARCHITECTURE.md);
    `unit_kl`: per layer, (S, z_i) per-unit KL on the test set; `bf16_gaps`: per member,
    |test ELBO under bf16 autocast − fp32| (None when the trial runs in fp32)."""

    metrics: list[dict[str, float]]
    unit_kl: list[torch.Tensor]
    bf16_gaps: Optional[list[float]]


class Evaluator:
    def __init__(self, model: HierarchicalVAE, data: Dataset, configs: Sequence[TrialConfig],
                 likelihood: str, check_bf16: bool) -> None:
        self.model, self.data, self.configs = model, data, list(configs)
        self.config = configs[0]
        self.likelihood = likelihood
        self.check_bf16 = check_bf16  # the trial's precision is bf16: compare with fp32 each time
        self.device = data.train_x.device
        # called as on_final_eval(epoch, K, n_test) before the final L_K (minutes at K = 5000)
        self.on_final_eval: Optional[Callable[[int, int, int], None]] = None

    # ------------------------------------------------------------------ evaluation noise

    def generators(self, epoch: int, salt: int = 0) -> list[torch.Generator]:
        """One generator per member, seeded by (seed, epoch, salt): independent of the
        training stream, so evaluation never changes training."""
        return [torch.Generator(device=self.device).manual_seed(
            (c.seed * 1_000_003 + epoch * 7919 + salt) % (2 ** 63)) for c in self.configs]

    def _binarizer(self, epoch: int):
        if self.likelihood != "bernoulli":
            return None
        generator = torch.Generator(device=self.device).manual_seed(SHARED_EVAL_SEED + epoch)
        return lambda x: binarize(x, generator)

    @torch.no_grad()
    def prepare(self, epoch: int) -> None:
        """Eval mode, and BN population statistics over the training set where configured."""
        self.model.eval()
        if self.config.batch_norm and self.config.bn_eval == "population":
            population_statistics(self.model, self.data.train_x, self._binarizer(epoch),
                                  self.generators(epoch, salt=1), self.config.eval_batch_size)

    # ------------------------------------------------------------------ one evaluation

    def __call__(self, epoch: int, final: bool, bf16: bool) -> Evaluation:
        """Everything measured at `epoch`; `bf16`: whether the trial still trains in bf16
        (then the final L_K runs its matmuls in bf16 too)."""
        cfg = self.config
        self.prepare(epoch)
        test = self._test_elbo(epoch)
        metrics = [self._elbo_metrics(test, s) for s in range(len(self.configs))]
        gaps = self._bf16_gaps(epoch, test) if self.check_bf16 else None
        for m, gap in zip(metrics, gaps or []):
            m["bf16_elbo_gap"] = gap
        if cfg.train_eval_size > 0:
            for m, value in zip(metrics, self._train_elbo(epoch)):
                m["train_elbo"] = value
        if final:
            for m, value in zip(metrics, self._test_ll_iw(epoch, bf16)):
                m["test_ll_iw"] = value
        for m in metrics:
            m["peak_mem_mb"] = self._peak_memory_mb()
        return Evaluation(metrics, test.unit_kl, gaps)

    def _test_elbo(self, epoch: int) -> ElboStats:
        cfg = self.config
        return evaluate_elbo(self.model, self.data.test_x, self.generators(epoch, 2),
                             cfg.eval_batch_size, cfg.kl_estimator, self._kl_eval_samples())

    def _train_elbo(self, epoch: int) -> list[float]:
        cfg = self.config
        x_train = self.data.train_x[:cfg.train_eval_size]
        binarizer = self._binarizer(epoch)
        x_train = binarizer(x_train) if binarizer else x_train
        train = evaluate_elbo(self.model, x_train, self.generators(epoch, 3),
                              cfg.eval_batch_size, cfg.kl_estimator)
        return [float(v) for v in train.elbo]

    def _test_ll_iw(self, epoch: int, bf16: bool) -> list[float]:
        cfg = self.config
        if self.on_final_eval is not None:
            self.on_final_eval(epoch, cfg.eval_iw, int(self.data.test_x.shape[0]))
        # bf16 matmuls while the trial's bf16 ELBO check holds: on a trained 5-layer ladder
        # L_5000 moved by 0.011 nats against fp32 (benchmarks/RESULTS.md); log-weights,
        # logsumexp and the mean stay fp32 / fp64
        ll = evaluate_iw(self.model, self.data.test_x, cfg.eval_iw, self.generators(epoch, 4),
                         cfg.eval_batch_size,
                         max_rows=(1 << 20) if self.device.type == "cuda" else (1 << 14), bf16=bf16)
        return [float(v) for v in ll]

    def _kl_eval_samples(self) -> int:
        """Draws per test image: several where some layer's KL is Monte Carlo, else one."""
        cfg = self.config
        monte_carlo = cfg.kl_estimator == "mc" or (cfg.inference == "vae" and cfg.depth > 1)
        return cfg.kl_eval_samples if monte_carlo else 1

    def _bf16_gaps(self, epoch: int, fp32: ElboStats) -> list[float]:
        """|ELBO under bf16 autocast - ELBO in fp32| per member (nats per example), on the
        same test images with the same noise."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            low = self._test_elbo(epoch)
        return (low.elbo - fp32.elbo).abs().tolist()

    @staticmethod
    def _elbo_metrics(stats: ElboStats, s: int) -> dict[str, float]:
        active = stats.active_units()
        m = {"test_elbo": float(stats.elbo[s]),
             "kl_total": float(sum(kl[s] for kl in stats.kl_layers)),
             "active_units": float(sum(a[s] for a in active))}
        for i in range(len(stats.kl_layers)):
            m[f"kl_layer_{i + 1}"] = float(stats.kl_layers[i][s])
            m[f"active_units_layer_{i + 1}"] = float(active[i][s])
            m[f"kl_std_normal_layer_{i + 1}"] = float(stats.kl_std_normal_layers[i][s])
        return m

    def _peak_memory_mb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2 ** 20
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process RSS (KiB)
