"""The training core: `Trainer` runs one trial — a cohort of S >= 1 members of one
architecture trained in one set of kernels — and yields one `EpochReport` per epoch.

This module is the contract (docs/ARCHITECTURE.md, "Trainer API"): set-up, the epoch
loop, the bf16 fallback, checkpoints. The work lives beside it, one job per module:
`step.py` (one optimiser step), `evaluator.py` (what an evaluation epoch measures),
`artifacts.py` (a member's exported files), `hardware.py` (device, threads, bf16).
No Ray and no MLflow here: the caller logs, reports and checkpoints.
The whole dataset lives on the device; per-step losses stay there and are read once per
epoch (one host sync per epoch).
"""

from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import torch

from .artifacts import export_member, member_state_dict
from .config import COHORT_VARYING, PAPER_LEAKY_SLOPE, TrialConfig
from .data import Dataset, dataset_for
from .evaluator import Evaluator
from .hardware import resolve_device, resolve_precision
from .model import HierarchicalVAE, InitScheme
from .step import CohortStep

DEFAULT_ACTIVATION = {"bernoulli": "leaky_relu", "gaussian": "tanh"}  # ICML §3


@dataclass
class EpochReport:
    epoch: int
    metrics: list[dict[str, float]]  # one dict per member, metric names of docs/ARCHITECTURE.md
    status: list[str]  # "running" | "diverged" per member
    is_last: bool
    evaluated: bool


def check_cohort(configs: Sequence[TrialConfig]) -> None:
    """Members may differ only in COHORT_VARYING settings."""
    if not configs:
        raise ValueError("a trial needs at least one configuration")
    first = configs[0].model_dump()
    for other in configs[1:]:
        diff = {k for k, v in other.model_dump().items() if first[k] != v} - COHORT_VARYING
        if diff:
            raise ValueError(f"cohort members differ in {sorted(diff)}; only "
                             f"{sorted(COHORT_VARYING)} may differ")


def build_model(config: TrialConfig, x_dim: int, likelihood: str, members: int
                ) -> HierarchicalVAE:
    activation = config.activation or DEFAULT_ACTIVATION[likelihood]
    if activation != "leaky_relu" and config.leaky_slope != PAPER_LEAKY_SLOPE:
        # TrialConfig catches this where it knows the activation; here the dataset chose it
        raise ValueError(f"leaky_slope={config.leaky_slope} is the slope of activation "
                         f"'leaky_relu', but {config.dataset!r} trains with {activation!r}")
    return HierarchicalVAE(
        x_dim=x_dim, z_dims=config.z_dims, mlp_dims=config.mlp_dims,
        inference=config.inference, likelihood=likelihood, batch_norm=config.batch_norm,
        activation=activation, members=members,
        var_floor=config.var_floor, bn_heads=config.bn_heads,
        init=InitScheme(config.init, config.var_bias_init),
        leaky_slope=config.leaky_slope, generative_widths=config.generative_mlp_dims,
    )


def init_from(model: HierarchicalVAE, path: str) -> None:
    """Fine-tuning (ICML Table 1): every member starts from one exported model.pt."""
    device = next(model.parameters()).device
    saved = torch.load(path, map_location=device, weights_only=True)
    state = model.state_dict()
    for key, value in saved["state_dict"].items():
        if key not in state or state[key].shape[1:] != value.shape[1:]:
            raise ValueError(f"init_from={path}: {key} does not fit this architecture")
        state[key].copy_(value.expand_as(state[key]))


class Trainer:
    """Trains a cohort; see docs/ARCHITECTURE.md for the contract."""

    def __init__(self, configs: Sequence[TrialConfig], dataset: Optional[Dataset] = None) -> None:
        check_cohort(configs)
        self.configs = list(configs)
        cfg = self.config = configs[0]
        self.device = resolve_device(cfg.device)
        self.data = dataset.to(self.device) if dataset else dataset_for(cfg, self.device)
        self.likelihood = cfg.likelihood or self.data.likelihood
        self.members = len(configs)
        self.model = build_model(cfg, self.data.train_x.shape[1], self.likelihood, self.members)
        self.model.to(self.device)
        self.model.reset_parameters([c.seed for c in configs])
        self.model.set_bn_eval_stats(cfg.bn_eval)
        if cfg.init_from:
            init_from(self.model, cfg.init_from)
        # bf16 stays on only while its ELBO agrees with fp32 (checked at each evaluation)
        self.precision = resolve_precision(cfg.precision, self.device)
        self.stepper = CohortStep(self.model, self.data.train_x, configs, self.likelihood,
                                  bf16=self.precision == "bf16")
        self.evaluator = Evaluator(self.model, self.data, configs, self.likelihood,
                                   check_bf16=self.precision == "bf16")
        self.epoch, self.step, self.wall_time = 0, 0, 0.0
        self.status = ["running"] * self.members
        self.unit_kl_history: list[list[dict]] = [[] for _ in configs]

    @property
    def steps_per_epoch(self) -> int:
        return self.stepper.steps_per_epoch

    @property
    def bf16(self) -> bool:
        """Whether the step's matmuls still run in bf16 (False after a fallback to fp32)."""
        return self.stepper.bf16

    @property
    def on_final_eval(self) -> Optional[Callable[[int, int, int], None]]:
        """Called as on_final_eval(epoch, K, n_test) before the final L_K (minutes at K = 5000)."""
        return self.evaluator.on_final_eval

    @on_final_eval.setter
    def on_final_eval(self, hook: Optional[Callable[[int, int, int], None]]) -> None:
        self.evaluator.on_final_eval = hook

    # ------------------------------------------------------------------ the loop

    def run(self) -> Iterator[EpochReport]:
        """Train from epoch self.epoch + 1 to the configured number of epochs."""
        cfg = self.config
        for epoch in range(self.epoch + 1, cfg.epochs + 1):
            started = time.perf_counter()
            losses, seconds = self._train_epoch(epoch)
            self._mark_diverged(losses)
            is_last = epoch == cfg.epochs or all(s == "diverged" for s in self.status)
            evaluated = is_last or epoch % cfg.eval_every == 0
            metrics = [self._epoch_metrics(epoch, float(losses[s]), seconds, s)
                       for s in range(self.members)]
            if evaluated:
                for m, extra in zip(metrics, self._evaluate(epoch, final=is_last)):
                    m.update(extra)
            self.epoch = epoch
            self.wall_time += time.perf_counter() - started
            for m in metrics:
                m["wall_time_s"] = self.wall_time
            yield EpochReport(epoch, metrics, list(self.status), is_last, evaluated)
            if is_last:
                return

    def _train_epoch(self, epoch: int) -> tuple[torch.Tensor, float]:
        """One pass over every member's own permutation; returns mean losses (S,) and seconds."""
        cfg, stepper = self.config, self.stepper
        stepper.set_lr(cfg.lr * cfg.lr_decay ** ((epoch - 1) // max(cfg.lr_decay_every, 1))
                       if cfg.lr_decay_every else cfg.lr)
        self.model.train()
        perms = stepper.permutations()
        loss_sum = torch.zeros(self.members, device=self.device)
        # β for every step of the epoch, (steps, S), copied once: a host→device copy per
        # step would synchronise the CUDA stream and stall the launch queue every step
        betas = torch.tensor([stepper.schedule.betas(self.step + k, self.steps_per_epoch)
                              for k in range(self.steps_per_epoch)], device=self.device)
        start = time.perf_counter()
        for k in range(self.steps_per_epoch):
            loss_sum += stepper(stepper.batch(perms, k), betas[k])
            self.step += 1
        losses = loss_sum.cpu()  # the one host sync of the epoch
        return losses / self.steps_per_epoch, time.perf_counter() - start

    def _evaluate(self, epoch: int, final: bool) -> list[dict[str, float]]:
        result = self.evaluator(epoch, final, bf16=self.stepper.bf16)
        if result.bf16_gaps is not None and self.stepper.bf16 \
                and max(result.bf16_gaps) > self.config.precision_tolerance:
            # mixed precision is kept only while every member is within tolerance
            warnings.warn(f"epoch {epoch}: the bf16 ELBO differs from fp32 by "
                          f"{max(result.bf16_gaps):.3g} nats > precision_tolerance="
                          f"{self.config.precision_tolerance}; training on in fp32")
            self.stepper.bf16 = False
        for s in range(self.members):
            for i, kl in enumerate(result.unit_kl, start=1):
                self.unit_kl_history[s].append(
                    {"epoch": epoch, "layer": i, "kl": [float(v) for v in kl[s].cpu()]})
        return result.metrics

    def _mark_diverged(self, losses: torch.Tensor) -> None:
        for s, value in enumerate(losses.tolist()):
            if not math.isfinite(value):
                self.status[s] = "diverged"

    def _epoch_metrics(self, epoch: int, loss: float, seconds: float, s: int) -> dict[str, float]:
        beta = self.stepper.schedule.betas(max(self.step - 1, 0), self.steps_per_epoch)[s]
        return {"epoch": float(epoch), "beta": beta,
                "lr": self.stepper.optimizer.param_groups[0]["lr"], "train_loss": loss,
                "steps_per_s": self.steps_per_epoch / max(seconds, 1e-9)}

    # ------------------------------------------------------------------ checkpoints

    def state(self) -> dict:
        return {"model": self.model.state_dict(), **self.stepper.state(),
                "epoch": self.epoch, "step": self.step, "wall_time": self.wall_time,
                "status": list(self.status), "unit_kl": self.unit_kl_history}

    def save(self, path: str | Path) -> Path:
        """Atomic checkpoint of everything needed to continue as if never stopped."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save(self.state(), tmp)
        os.replace(tmp, path)
        return path

    def load(self, path: str | Path) -> None:
        state = torch.load(path, map_location=self.device, weights_only=True)
        self.model.load_state_dict(state["model"])
        self.stepper.load_state(state)
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.wall_time = float(state["wall_time"])
        self.status = list(state["status"])
        self.unit_kl_history = state["unit_kl"]

    # ------------------------------------------------------------------ artifacts

    def member_state_dict(self, member: int) -> dict[str, torch.Tensor]:
        return member_state_dict(self.model, member)

    def export_artifacts(self, member: int, out_dir: str | Path, n_latents: int = 2000,
                         n_prior: int = 64) -> list[Path]:
        """model.pt, unit_kl.json, latents.npz, prior_samples.npz (docs/ARCHITECTURE.md)."""
        return export_member(self.evaluator, member, self.configs[member],
                             self.unit_kl_history[member], self.status[member] == "diverged",
                             self.epoch, out_dir, n_latents, n_prior)
