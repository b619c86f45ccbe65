"""One optimiser step of a cohort: its batch and noise, the loss (eager or compiled), the
gradient clipping of the original code, and Adam.

Imports torch and the model math only (no Ray, no MLflow). Speed: binarization and all
noise are drawn on the device, per member, once per step, straight into one (S, ...) tensor
per stream; the loss comes back on the device (no host sync inside the step); the loss can
be compiled (torch.compile) because the forward pass itself draws no random numbers
(model.NoiseTape).

The optimiser update (per-member norm clip, elementwise clip, Adam) has two forms over the
same state (`torch.optim.Adam`'s `exp_avg`, `exp_avg_sq`, `step`, so checkpoints and a
fallback move freely between them):
- eager: the clips in a few multi-tensor ops, then Adam fused (one kernel per parameter;
  on CPU `foreach` falls back to a dozen small ops per parameter);
- compiled (CPU, when the loss is compiled): `clip_and_adam` as one torch.compile'd graph,
  which reads every gradient once for the norms and then reads gradient, parameter and both
  moments once and writes parameter and moments once: the clipped gradient is never
  materialised, so `p.grad` keeps the unclipped gradient after such a step.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

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
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.params, lr=cfg.lr, eps=cfg.adam_eps, fused=True)
        # the compiled update reads lr as a 0-dim tensor: a float would be a guard, and every
        # learning-rate decay a recompile
        self.lr = torch.tensor(cfg.lr, dtype=torch.float32, device=self.device)
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
        self.update_fn = self._compiled_update(cfg.compile)

    # ------------------------------------------------------------------ compilation

    def _compile_auto(self) -> bool:
        """`compile: auto`: always on CUDA (CUDA graphs); on CPU for long trials only."""
        if self.device.type == "cuda":
            return True
        return self.config.epochs * self.steps_per_epoch >= CPU_COMPILE_MIN_STEPS

    def _uses_compile(self, mode: str) -> bool:
        return mode in ("compile", "cudagraphs") or (mode == "auto" and self._compile_auto())

    def _compiled_loss(self, mode: str):
        if not self._uses_compile(mode):
            return self.loss
        cuda_graphs = mode == "cudagraphs" or (mode == "auto" and self.device.type == "cuda")
        options = {"mode": "reduce-overhead"} if cuda_graphs else {}
        compiled = torch.compile(self.loss, dynamic=False, **options)
        return compiled if mode != "auto" else self._first_call(compiled, self.loss, "loss_fn")

    def _compiled_update(self, mode: str):
        """The optimiser update: compiled with the loss on CPU, where it replaces ~10 passes
        over every gradient (clips, then Adam) by 2; on CUDA the fused Adam and multi-tensor
        clips stay (the compiled update is not measured there)."""
        if not self._uses_compile(mode) or self.device.type != "cpu":
            return self.eager_update
        # only the math is compiled: the state lookups stay eager, so the graph neither
        # guards on the optimiser's dicts nor retraces when Adam's state appears
        kernel = torch.compile(clip_and_adam, dynamic=False)
        compiled = functools.partial(self.compiled_update, kernel)
        return compiled if mode != "auto" else self._first_call(compiled, self.eager_update,
                                                                "update_fn")

    def _first_call(self, compiled: Callable, eager: Callable, attribute: str) -> Callable:
        """`auto` must never cost a user their trial: if compilation fails on this machine,
        say so once and continue eagerly (the same math)."""

        def first_call(*args):
            try:
                out = compiled(*args)
                setattr(self, attribute, compiled)
            except Exception as err:  # noqa: BLE001 - any compiler failure
                warnings.warn(f"torch.compile failed ({type(err).__name__}: {err}); "
                              "training eagerly")
                setattr(self, attribute, eager)
                out = eager(*args)
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
        uniform = torch.empty_like(x_real)
        for s, g in enumerate(self.generators):  # each member's draws from its own stream
            torch.rand(x_real.shape[1:], generator=g, device=self.device, out=uniform[s])
        ou_noise = draw_normal(self.ou_generators, self.ou_numel) if self.ou_numel else None
        return x_real, uniform, draw_normal(self.generators, self.latent_numel), ou_noise

    def __call__(self, batch: tuple[torch.Tensor, ...], beta: torch.Tensor) -> torch.Tensor:
        """One optimiser step of every member; returns the losses (S,), still on the device."""
        objective = self.loss_fn(*batch, beta)
        self.optimizer.zero_grad(set_to_none=True)
        objective.loss.sum().backward()
        self.update_fn()
        return objective.loss.detach()

    def eager_update(self) -> None:
        """Norm clip per member, then the original code's elementwise clip, then fused Adam."""
        if self.config.grad_clip > 0:
            self.clip_gradients(self.config.grad_clip)
        if self.config.grad_clip_value > 0:
            grads = self._grads()
            torch._foreach_clamp_min_(grads, -self.config.grad_clip_value)
            torch._foreach_clamp_max_(grads, self.config.grad_clip_value)
        self.optimizer.step()

    def _grads(self) -> list[torch.Tensor]:
        return [p.grad for p in self.params if p.grad is not None]

    def clip_gradients(self, max_norm: float) -> None:
        """Per-member gradient-norm clipping: members must not share one global norm.
        Gradients are (S, ...); member s's norm runs over slice s of every gradient."""
        grads = self._grads()
        if self.members == 1:  # one member: the global norm, in two multi-tensor kernels
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
            torch._foreach_mul_(grads, (max_norm / (norm + 1e-6)).clamp(max=1.0))
            return
        if self.device.type == "cuda":  # one multi-tensor kernel over the S slices of each
            partial = torch.stack(torch._foreach_norm(
                [m for g in grads for m in g.unbind(0)])).view(len(grads), self.members)
        else:  # CPU foreach loops per tensor: one read of each gradient, (S,) out
            partial = torch.stack([torch.linalg.vector_norm(g.reshape(self.members, -1), dim=1)
                                   for g in grads])  # (P, S)
        norms = torch.linalg.vector_norm(partial, dim=0)  # (S,)
        scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        torch._foreach_mul_(grads, [scale.view(-1, *([1] * (g.dim() - 1))) for g in grads])

    # ------------------------------------------------------------------ the compiled update

    def adam_state(self, params: list[torch.Tensor]) -> tuple[list[torch.Tensor], ...]:
        """(exp_avg, exp_avg_sq, step) of every parameter, created as Adam creates them
        (zeros; a 0-dim float32 step on the parameter's device, as fused Adam keeps it)."""
        state = self.optimizer.state
        for p in params:
            if not state[p]:
                state[p]["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                state[p]["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state[p]["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return ([state[p]["exp_avg"] for p in params], [state[p]["exp_avg_sq"] for p in params],
                [state[p]["step"] for p in params])

    def compiled_update(self, kernel: Optional[Callable] = None) -> None:
        """The eager update's math as one graph: `kernel` is torch.compile(clip_and_adam)
        (see the module docstring); clip_and_adam itself, run eagerly, when not given."""
        params = [p for p in self.params if p.grad is not None]
        exp_avgs, exp_avg_sqs, steps = self.adam_state(params)
        group = self.optimizer.param_groups[0]
        beta1, beta2 = group["betas"]
        (kernel or clip_and_adam)(params, [p.grad for p in params], exp_avgs, exp_avg_sqs,
                                  steps, self.lr, members=self.members,
                                  max_norm=self.config.grad_clip,
                                  clip_value=self.config.grad_clip_value, beta1=beta1,
                                  beta2=beta2, eps=group["eps"])

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.lr.fill_(lr)

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


@torch.no_grad()
def clip_and_adam(params: list[torch.Tensor], grads: list[torch.Tensor],
                  exp_avgs: list[torch.Tensor], exp_avg_sqs: list[torch.Tensor],
                  steps: list[torch.Tensor], lr: torch.Tensor, *, members: int, max_norm: float,
                  clip_value: float, beta1: float, beta2: float, eps: float) -> None:
    """CohortStep.eager_update's math for torch.compile: every tensor (S, ...) but the 0-dim
    steps and lr. g' = clamp(g * min(1, max_norm / (‖g_s‖ + 1e-6)), ±clip_value) per member
    s, then torch.optim.Adam's update (no weight decay, no amsgrad) with g'. Compiled, each
    parameter costs one reduction kernel (its (S,) squared norms) and one update kernel."""
    if max_norm > 0:
        squares = sum(g.reshape(members, -1).square().sum(-1) for g in grads)  # (S,)
        scale = (max_norm / (squares.sqrt() + 1e-6)).clamp(max=1.0)
        grads = [g * scale.view(-1, *([1] * (g.dim() - 1))) for g in grads]
    if clip_value > 0:
        grads = [g.clamp(-clip_value, clip_value) for g in grads]
    for p, g, m, v, t in zip(params, grads, exp_avgs, exp_avg_sqs, steps):
        t += 1
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        step_size = lr / (1 - beta1 ** t)
        denom = v.sqrt() / (1 - beta2 ** t).sqrt() + eps
        p.sub_(step_size * m / denom)
