"""One optimiser step of a cohort: its batch and noise, the loss (eager or compiled), the
gradient clipping of the original code, and Adam.

Imports torch and the model math only (no Ray, no MLflow). Speed (SPEC §6): binarization
and all noise are drawn on the device, per member, once per step; the loss comes back on
the device (no host sync inside the step); Adam is fused on CUDA and CPU (one kernel per
parameter: on CPU `foreach` falls back to a dozen small ops per parameter); the loss can be
compiled (torch.compile) because the forward pass itself draws no random numbers
(model.NoiseTape).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from .config import TrialConfig
from .model import HierarchicalVAE, NoiseTape, draw_normal
from .objectives import ObjectiveTerms, beta_at, training_objective
from .smoothing import OUSmoother

OU_SEED = 0x5EED_0000  # offset of the per-member OU-noise generator seeds
# `compile: auto` on CPU compiles only trials long enough to repay the compile (~10-60 s of
# C++ builds for a 5-layer model, saved back at ~1.4× per step: benchmarks/RESULTS.md)
CPU_COMPILE_MIN_STEPS = 5000


@dataclass
class CohortSchedule:
    """Per-member settings that may differ inside a cohort (config.COHORT_VARYING)."""

    warmup_epochs: list[float]
    hold_steps: list[int]
    anneal_steps: list[int]
    free_bits: torch.Tensor  # (S,)
    rho: torch.Tensor  # (S,)

    @classmethod
    def of(cls, configs: Sequence[TrialConfig], device: torch.device) -> "CohortSchedule":
        return cls(warmup_epochs=[c.warmup_epochs for c in configs],
                   hold_steps=[c.kl_anneal_hold_steps for c in configs],
                   anneal_steps=[c.kl_anneal_steps for c in configs],
                   free_bits=torch.tensor([c.free_bits for c in configs], device=device),
                   rho=torch.tensor([c.rho for c in configs], device=device))

    def betas(self, step: int, steps_per_epoch: int) -> list[float]:
        return [beta_at(step, steps_per_epoch, w, h, a)
                for w, h, a in zip(self.warmup_epochs, self.hold_steps, self.anneal_steps)]


class CohortStep:
    """`step(batch, beta)` trains every member of the cohort by one optimiser step.

    `bf16` says whether the step's matmuls run under bfloat16 autocast; the Trainer turns
    it off for good when its per-evaluation check says bf16 moved the ELBO too far.
    """

    def __init__(self, model: HierarchicalVAE, train_x: torch.Tensor, configs: Sequence[TrialConfig],
                 likelihood: str, bf16: bool) -> None:
        cfg = self.config = configs[0]
        self.model, self.train_x, self.likelihood, self.bf16 = model, train_x, likelihood, bf16
        self.device = train_x.device
        self.members = len(configs)
        self.optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, eps=cfg.adam_eps, fused=True)
        self.generators = [torch.Generator(device=self.device).manual_seed(c.seed) for c in configs]
        # a separate stream for OU noise: a member with ρ = 1 inside a smoothing cohort
        # sees the same latent noise as when trained alone
        self.ou_generators = [torch.Generator(device=self.device).manual_seed(c.seed + OU_SEED)
                              for c in configs]
        self.schedule = CohortSchedule.of(configs, self.device)
        smoothing = any(c.rho < 1.0 for c in configs)
        self.smoother = OUSmoother(self.schedule.rho, cfg.ou_samples, cfg.ou_target) if smoothing else None
        n_train = train_x.shape[0]
        self.batch_size = min(cfg.batch_size, n_train)
        self.steps_per_epoch = max(1, n_train // self.batch_size)
        self.samples_per_step = cfg.mc_samples * cfg.iw_samples
        self.latent_numel = model.latent_noise_numel(self.batch_size, self.samples_per_step)
        self.ou_numel = model.ou_noise_numel(self.batch_size, self.samples_per_step,
                                             cfg.ou_samples) if smoothing else 0
        self.loss_fn = self._compiled_loss(cfg.compile)

    # ------------------------------------------------------------------ compilation

    def _compile_auto(self) -> bool:
        """`compile: auto`: always on CUDA (CUDA graphs); on CPU for long trials only."""
        if self.device.type == "cuda":
            return True
        return self.config.epochs * self.steps_per_epoch >= CPU_COMPILE_MIN_STEPS

    def _compiled_loss(self, mode: str):
        use = mode in ("compile", "cudagraphs") or (mode == "auto" and self._compile_auto())
        if not use:
            return self.loss
        cuda_graphs = mode == "cudagraphs" or (mode == "auto" and self.device.type == "cuda")
        options = {"mode": "reduce-overhead"} if cuda_graphs else {}
        compiled = torch.compile(self.loss, dynamic=False, **options)
        if mode != "auto":
            return compiled

        def first_call(*args):
            # `auto` must never cost a user their trial: if compilation fails on this
            # machine, say so once and continue eagerly (the same math).
            try:
                out = compiled(*args)
                self.loss_fn = compiled
            except Exception as err:  # noqa: BLE001 - any compiler failure
                warnings.warn(f"torch.compile failed ({type(err).__name__}: {err}); training eagerly")
                self.loss_fn = self.loss
                out = self.loss(*args)
            return out

        return first_call

    # ------------------------------------------------------------------ the step

    def loss(self, x_real: torch.Tensor, uniform: torch.Tensor, noise: torch.Tensor,
             ou_noise: Optional[torch.Tensor], beta: torch.Tensor) -> ObjectiveTerms:
        """x_real (S, B, D) in [0,1]; uniform (S, B, D) binarization draws; noise (S, T)."""
        x = (uniform < x_real).float() if self.likelihood == "bernoulli" else x_real
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            terms = self.model(x, NoiseTape.recorded(noise, ou_noise), self.samples_per_step,
                               self.smoother)
        # fp32 from here: MemberLinear hands back fp32 activations
        return training_objective(terms, self.batch_size, self.config.iw_samples, beta,
                                  self.schedule.free_bits, self.config.kl_estimator)

    def permutations(self) -> torch.Tensor:
        """(S, N): every member's own order of the training set for one epoch."""
        n_train = self.train_x.shape[0]
        return torch.stack([torch.randperm(n_train, generator=g, device=self.device)
                            for g in self.generators])

    def batch(self, perms: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
        """Member s's k-th batch of its own permutation plus its step noise:
        x (S,B,D), uniform (S,B,D), latent noise (S,T), OU noise (S,T') or None."""
        idx = perms[:, k * self.batch_size:(k + 1) * self.batch_size]  # (S, B)
        x_real = self.train_x[idx]
        uniform = torch.stack([torch.rand(x_real.shape[1:], generator=g, device=self.device)
                               for g in self.generators])
        ou_noise = draw_normal(self.ou_generators, self.ou_numel) if self.ou_numel else None
        return x_real, uniform, draw_normal(self.generators, self.latent_numel), ou_noise

    def __call__(self, batch: tuple[torch.Tensor, ...], beta: torch.Tensor) -> torch.Tensor:
        """One optimiser step of every member; returns the losses (S,), still on the device."""
        objective = self.loss_fn(*batch, beta)
        self.optimizer.zero_grad(set_to_none=True)
        objective.loss.sum().backward()
        if self.config.grad_clip > 0:
            self.clip_gradients(self.config.grad_clip)
        if self.config.grad_clip_value > 0:  # the original code: norm clip, then elementwise
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            torch._foreach_clamp_min_(grads, -self.config.grad_clip_value)
            torch._foreach_clamp_max_(grads, self.config.grad_clip_value)
        self.optimizer.step()
        return objective.loss.detach()

    def clip_gradients(self, max_norm: float) -> None:
        """Per-member gradient-norm clipping: members must not share one global norm."""
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if self.members == 1:  # one member: the global norm, in two multi-tensor kernels
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
            torch._foreach_mul_(grads, (max_norm / (norm + 1e-6)).clamp(max=1.0))
            return
        sq = sum(g.reshape(g.shape[0], -1).square().sum(-1) for g in grads)  # (S,)
        scale = (max_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(scale.view(-1, *([1] * (g.dim() - 1))))

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    # ------------------------------------------------------------------ checkpoints

    def state(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(),
                "generators": [g.get_state() for g in self.generators],
                "ou_generators": [g.get_state() for g in self.ou_generators],
                "bf16": self.bf16}  # a trial that fell back to fp32 stays there after a restart

    def load_state(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        for g, s in zip(self.generators + self.ou_generators,
                        state["generators"] + state["ou_generators"]):
            g.set_state(s.cpu())
        self.bf16 = bool(state.get("bf16", self.bf16))
