"""The training core: `Trainer` runs one trial — a cohort of S >= 1 members of one
architecture trained in one set of kernels — and yields one `EpochReport` per epoch.

No Ray and no MLflow here (STYLE 6): the caller logs, reports and checkpoints.

Speed (SPEC §6): the whole dataset lives on the device; binarization and all noise are
drawn on the device, per member, once per step; per-step losses are accumulated on the
device and read once per epoch (no host sync inside the step); Adam is fused on CUDA and
CPU (one kernel per parameter: on CPU `foreach` falls back to a dozen small ops per
parameter); the loss can be compiled (torch.compile) because the forward pass itself draws
no random numbers (model.NoiseTape).
"""

from __future__ import annotations

import json
import math
import os
import resource
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch

from .config import COHORT_VARYING, TrialConfig
from .data import Dataset, binarize, dataset_for
from .evaluate import (ElboStats, evaluate_elbo, evaluate_iw, population_statistics,
                       posterior_means)
from .model import HierarchicalVAE, InitScheme, NoiseTape, draw_normal
from .objectives import ObjectiveTerms, beta_at, training_objective
from .smoothing import OUSmoother

DEFAULT_ACTIVATION = {"bernoulli": "leaky_relu", "gaussian": "tanh"}  # ICML §3
SHARED_EVAL_SEED = 987_654_321  # evaluation data binarization: the same for every member
OU_SEED = 0x5EED_0000  # offset of the per-member OU-noise generator seeds


class DivergedError(RuntimeError):
    """Every member of the trial produced a non-finite loss."""


@dataclass
class EpochReport:
    epoch: int
    metrics: list[dict[str, float]]  # one dict per member, SPEC §2 metric names
    status: list[str]  # "running" | "diverged" per member
    is_last: bool
    evaluated: bool


@dataclass
class _Schedule:
    """Per-member settings that may differ inside a cohort (config.COHORT_VARYING)."""

    warmup_epochs: list[float]
    hold_steps: list[int]
    anneal_steps: list[int]
    free_bits: torch.Tensor  # (S,)
    rho: torch.Tensor  # (S,)

    def betas(self, step: int, steps_per_epoch: int) -> list[float]:
        return [beta_at(step, steps_per_epoch, w, h, a)
                for w, h, a in zip(self.warmup_epochs, self.hold_steps, self.anneal_steps)]


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a container's or taskset's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def use_cpu_threads(cpus: float) -> int:
    """Give torch exactly the CPUs a trial was allotted: intra-op threads = cpus (at least 1).

    Two trials packed on one node that each spin up one thread per core oversubscribe it
    (two 2-thread torch processes on 2 cores ran 10–40× slower than one: benchmarks/
    RESULTS.md), so the caller passes its Ray CPU allotment, or all CPUs when alone.
    """
    threads = max(1, int(cpus))
    torch.set_num_threads(threads)
    return threads


# `compile: auto` on CPU compiles only trials long enough to repay the compile (~10-60 s of
# C++ builds for a 5-layer model, saved back at ~1.4× per step: benchmarks/RESULTS.md)
CPU_COMPILE_MIN_STEPS = 5000


def has_fast_bf16(device: torch.device) -> bool:
    """Whether the device's matrix units run bf16 faster than fp32: CUDA compute capability
    >= 8 (Ampere tensor cores), or a CPU with AMX-BF16 or AVX512-BF16 instructions."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: assume not
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` -> bf16 where the hardware is fast at it, else fp32; others unchanged."""
    if precision != "auto":
        return precision
    return "bf16" if has_fast_bf16(device) else "fp32"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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
    return HierarchicalVAE(
        x_dim=x_dim, z_dims=config.z_dims, mlp_dims=config.mlp_dims,
        inference=config.inference, likelihood=likelihood, batch_norm=config.batch_norm,
        activation=config.activation or DEFAULT_ACTIVATION[likelihood], members=members,
        var_floor=config.var_floor, bn_heads=config.bn_heads,
        init=InitScheme(config.init, config.var_bias_init),
    )


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
            self._init_from(cfg.init_from)
        self.optimizer = torch.optim.Adam(
            self.model.parameters(), lr=cfg.lr, eps=cfg.adam_eps,
            fused=True,
        )
        self.generators = [torch.Generator(device=self.device).manual_seed(c.seed)
                           for c in configs]
        # a separate stream for OU noise: a member with ρ = 1 inside a smoothing cohort
        # sees the same latent noise as when trained alone
        self.ou_generators = [torch.Generator(device=self.device).manual_seed(c.seed + OU_SEED)
                              for c in configs]
        self.schedule = _Schedule(
            warmup_epochs=[c.warmup_epochs for c in configs],
            hold_steps=[c.kl_anneal_hold_steps for c in configs],
            anneal_steps=[c.kl_anneal_steps for c in configs],
            free_bits=torch.tensor([c.free_bits for c in configs], device=self.device),
            rho=torch.tensor([c.rho for c in configs], device=self.device),
        )
        smoothing = any(c.rho < 1.0 for c in configs)
        self.smoother = OUSmoother(self.schedule.rho, cfg.ou_samples, cfg.ou_target) if smoothing else None
        n_train = self.data.train_x.shape[0]
        self.batch_size = min(cfg.batch_size, n_train)
        self.steps_per_epoch = max(1, n_train // self.batch_size)
        self.samples_per_step = cfg.mc_samples * cfg.iw_samples
        self.latent_numel = self.model.latent_noise_numel(self.batch_size, self.samples_per_step)
        self.ou_numel = self.model.ou_noise_numel(self.batch_size, self.samples_per_step,
                                                  cfg.ou_samples) if smoothing else 0
        # bf16 stays on only while its ELBO agrees with fp32 (checked at each evaluation)
        self.precision = resolve_precision(cfg.precision, self.device)
        self.bf16 = self.precision == "bf16"
        self.loss_fn = self._compiled_loss(cfg.compile)
        self.epoch, self.step, self.wall_time = 0, 0, 0.0
        self.status = ["running"] * self.members
        self.unit_kl_history: list[list[dict]] = [[] for _ in configs]
        # called as on_final_eval(epoch, K, n_test) before the final L_K (minutes at K = 5000)
        self.on_final_eval: Optional[Callable[[int, int, int], None]] = None

    # ------------------------------------------------------------------ set-up helpers

    def _compile_auto(self) -> bool:
        """`compile: auto`: always on CUDA (CUDA graphs); on CPU for long trials only."""
        if self.device.type == "cuda":
            return True
        return self.config.epochs * self.steps_per_epoch >= CPU_COMPILE_MIN_STEPS

    def _compiled_loss(self, mode: str):
        use = mode in ("compile", "cudagraphs") or (mode == "auto" and self._compile_auto())
        if not use:
            return self._loss
        cuda_graphs = mode == "cudagraphs" or (mode == "auto" and self.device.type == "cuda")
        options = {"mode": "reduce-overhead"} if cuda_graphs else {}
        compiled = torch.compile(self._loss, dynamic=False, **options)
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
                self.loss_fn = self._loss
                out = self._loss(*args)
            return out

        return first_call

    def _init_from(self, path: str) -> None:
        """Fine-tuning (ICML Table 1): every member starts from one exported model.pt."""
        saved = torch.load(path, map_location=self.device, weights_only=True)
        state = self.model.state_dict()
        for key, value in saved["state_dict"].items():
            if key not in state or state[key].shape[1:] != value.shape[1:]:
                raise ValueError(f"init_from={path}: {key} does not fit this architecture")
            state[key].copy_(value.expand_as(state[key]))

    # ------------------------------------------------------------------ the step

    def _loss(self, x_real: torch.Tensor, uniform: torch.Tensor, noise: torch.Tensor,
              ou_noise: Optional[torch.Tensor], beta: torch.Tensor) -> ObjectiveTerms:
        """x_real (S, B, D) in [0,1]; uniform (S, B, D) binarization draws; noise (S, T)."""
        x = (uniform < x_real).float() if self.likelihood == "bernoulli" else x_real
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            terms = self.model(x, NoiseTape.recorded(noise, ou_noise), self.samples_per_step,
                               self.smoother)
        # fp32 from here: MemberLinear hands back fp32 activations
        return training_objective(terms, self.batch_size, self.config.iw_samples, beta,
                                  self.schedule.free_bits, self.config.kl_estimator)

    def _clip_gradients(self, max_norm: float) -> None:
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

    def _batch(self, perms: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
        """Member s's k-th batch of its own permutation plus its step noise:
        x (S,B,D), uniform (S,B,D), latent noise (S,T), OU noise (S,T') or None."""
        idx = perms[:, k * self.batch_size:(k + 1) * self.batch_size]  # (S, B)
        x_real = self.data.train_x[idx]
        uniform = torch.stack([torch.rand(x_real.shape[1:], generator=g, device=self.device)
                               for g in self.generators])
        ou_noise = draw_normal(self.ou_generators, self.ou_numel) if self.ou_numel else None
        return x_real, uniform, draw_normal(self.generators, self.latent_numel), ou_noise

    def _step(self, batch: tuple[torch.Tensor, ...], beta: torch.Tensor) -> torch.Tensor:
        """One optimiser step of every member; returns the losses (S,), still on the device."""
        objective = self.loss_fn(*batch, beta)
        self.optimizer.zero_grad(set_to_none=True)
        objective.loss.sum().backward()
        if self.config.grad_clip > 0:
            self._clip_gradients(self.config.grad_clip)
        if self.config.grad_clip_value > 0:  # the original code: norm clip, then elementwise
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            torch._foreach_clamp_min_(grads, -self.config.grad_clip_value)
            torch._foreach_clamp_max_(grads, self.config.grad_clip_value)
        self.optimizer.step()
        self.step += 1
        return objective.loss.detach()

    def _train_epoch(self, epoch: int) -> tuple[torch.Tensor, float]:
        """One pass over every member's own permutation; returns summed losses (S,) and seconds."""
        cfg = self.config
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.lr * cfg.lr_decay ** ((epoch - 1) // max(cfg.lr_decay_every, 1)) \
                if cfg.lr_decay_every else cfg.lr
        self.model.train()
        n_train = self.data.train_x.shape[0]
        perms = torch.stack([torch.randperm(n_train, generator=g, device=self.device)
                             for g in self.generators])
        loss_sum = torch.zeros(self.members, device=self.device)
        # β for every step of the epoch, (steps, S), copied once: a host→device copy per
        # step would synchronise the CUDA stream and stall the launch queue every step
        betas = torch.tensor([self.schedule.betas(self.step + k, self.steps_per_epoch)
                              for k in range(self.steps_per_epoch)], device=self.device)
        start = time.perf_counter()
        for k in range(self.steps_per_epoch):
            loss_sum += self._step(self._batch(perms, k), betas[k])
        losses = loss_sum.cpu()  # the one host sync of the epoch
        return losses / self.steps_per_epoch, time.perf_counter() - start

    # ------------------------------------------------------------------ evaluation

    def _eval_generators(self, epoch: int, salt: int = 0) -> list[torch.Generator]:
        # Independent of the training stream, so evaluation never changes training.
        return [torch.Generator(device=self.device).manual_seed(
            (c.seed * 1_000_003 + epoch * 7919 + salt) % (2 ** 63)) for c in self.configs]

    def _shared_generator(self, epoch: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(SHARED_EVAL_SEED + epoch)

    def _binarizer(self, epoch: int):
        if self.likelihood != "bernoulli":
            return None
        generator = self._shared_generator(epoch)
        return lambda x: binarize(x, generator)

    @torch.no_grad()
    def _prepare_eval(self, epoch: int) -> None:
        self.model.eval()
        if self.config.batch_norm and self.config.bn_eval == "population":
            population_statistics(self.model, self.data.train_x, self._binarizer(epoch),
                                  self._eval_generators(epoch, salt=1), self.config.eval_batch_size)

    def _evaluate(self, epoch: int, final: bool) -> list[dict[str, float]]:
        cfg = self.config
        self._prepare_eval(epoch)
        test = evaluate_elbo(self.model, self.data.test_x, self._eval_generators(epoch, 2),
                             cfg.eval_batch_size, cfg.kl_estimator, self._kl_eval_samples())
        metrics = [self._elbo_metrics(test, s) for s in range(self.members)]
        if self.precision == "bf16":
            for m, gap in zip(metrics, self._check_bf16(epoch, test)):
                m["bf16_elbo_gap"] = gap
        if cfg.train_eval_size > 0:
            x_train = self.data.train_x[:cfg.train_eval_size]
            binarizer = self._binarizer(epoch)
            x_train = binarizer(x_train) if binarizer else x_train
            train = evaluate_elbo(self.model, x_train, self._eval_generators(epoch, 3),
                                  cfg.eval_batch_size, cfg.kl_estimator)
            for s, m in enumerate(metrics):
                m["train_elbo"] = float(train.elbo[s])
        if final:
            if self.on_final_eval is not None:
                self.on_final_eval(epoch, cfg.eval_iw, int(self.data.test_x.shape[0]))
            # bf16 matmuls while the trial's bf16 ELBO check holds: on a trained 5-layer ladder
            # L_5000 moved by 0.011 nats against fp32 (benchmarks/RESULTS.md); log-weights,
            # logsumexp and the mean stay fp32 / fp64
            ll = evaluate_iw(self.model, self.data.test_x, cfg.eval_iw,
                             self._eval_generators(epoch, 4), cfg.eval_batch_size,
                             max_rows=(1 << 20) if self.device.type == "cuda" else (1 << 14),
                             bf16=self.bf16)
            for s, m in enumerate(metrics):
                m["test_ll_iw"] = float(ll[s])
        for s in range(self.members):
            for i, kl in enumerate(test.unit_kl, start=1):
                self.unit_kl_history[s].append(
                    {"epoch": epoch, "layer": i, "kl": [float(v) for v in kl[s].cpu()]})
            metrics[s]["peak_mem_mb"] = self._peak_memory_mb()
        return metrics

    def _kl_eval_samples(self) -> int:
        """Draws per test image: several where some layer's KL is Monte Carlo, else one."""
        cfg = self.config
        monte_carlo = cfg.kl_estimator == "mc" or (cfg.inference == "vae" and cfg.depth > 1)
        return cfg.kl_eval_samples if monte_carlo else 1

    def _check_bf16(self, epoch: int, fp32: ElboStats) -> list[float]:
        """|ELBO under bf16 autocast - ELBO in fp32| per member (nats per example), on the
        same test images with the same noise. Mixed precision is kept only while every
        member is within `precision_tolerance`; past it the trial trains on in fp32."""
        cfg = self.config
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            low = evaluate_elbo(self.model, self.data.test_x, self._eval_generators(epoch, 2),
                                cfg.eval_batch_size, cfg.kl_estimator, self._kl_eval_samples())
        gaps = (low.elbo - fp32.elbo).abs().tolist()
        if self.bf16 and max(gaps) > cfg.precision_tolerance:
            warnings.warn(f"epoch {epoch}: the bf16 ELBO differs from fp32 by {max(gaps):.3g} nats "
                          f"> precision_tolerance={cfg.precision_tolerance}; training on in fp32")
            self.bf16 = False
        return gaps

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

    def _mark_diverged(self, losses: torch.Tensor) -> None:
        for s, value in enumerate(losses.tolist()):
            if not math.isfinite(value):
                self.status[s] = "diverged"

    def _epoch_metrics(self, epoch: int, loss: float, seconds: float, s: int) -> dict[str, float]:
        beta = self.schedule.betas(max(self.step - 1, 0), self.steps_per_epoch)[s]
        return {"epoch": float(epoch), "beta": beta,
                "lr": self.optimizer.param_groups[0]["lr"], "train_loss": loss,
                "steps_per_s": self.steps_per_epoch / max(seconds, 1e-9)}

    # ------------------------------------------------------------------ checkpoints

    def state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generators": [g.get_state() for g in self.generators],
            "ou_generators": [g.get_state() for g in self.ou_generators],
            "epoch": self.epoch, "step": self.step, "wall_time": self.wall_time,
            "status": list(self.status), "unit_kl": self.unit_kl_history,
            "bf16": self.bf16,  # a trial that fell back to fp32 stays there after a restart
        }

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
        self.optimizer.load_state_dict(state["optimizer"])
        for g, s in zip(self.generators + self.ou_generators,
                        state["generators"] + state["ou_generators"]):
            g.set_state(s.cpu())
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.wall_time = float(state["wall_time"])
        self.status = list(state["status"])
        self.unit_kl_history = state["unit_kl"]
        self.bf16 = bool(state.get("bf16", self.precision == "bf16"))

    # ------------------------------------------------------------------ artifacts

    def member_state_dict(self, member: int) -> dict[str, torch.Tensor]:
        return {k: v[member:member + 1].detach().cpu().clone()
                for k, v in self.model.state_dict().items()}

    def export_artifacts(self, member: int, out_dir: str | Path, n_latents: int = 2000,
                         n_prior: int = 64) -> list[Path]:
        """model.pt, unit_kl.json, latents.npz, prior_samples.npz (docs/ARCHITECTURE.md)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        config = self.configs[member]
        paths = [out / "model.pt", out / "unit_kl.json"]
        torch.save({"state_dict": self.member_state_dict(member),
                    "config": config.model_dump(mode="json")}, paths[0])
        paths[1].write_text(json.dumps(self.unit_kl_history[member]))
        if self.status[member] == "diverged":
            return paths
        self._prepare_eval(self.epoch)
        gens = self._eval_generators(self.epoch, 5)
        x = self.data.test_x[:n_latents]
        means = posterior_means(self.model, x, gens)
        latents = {f"layer_{i + 1}": m[member].cpu().numpy() for i, m in enumerate(means)}
        np.savez_compressed(out / "latents.npz", labels=self.data.test_y[:n_latents].cpu().numpy(),
                            **latents)
        samples = {f"layer_{i}": self.model.generate_from_layer(i, n_prior, gens)[member].cpu().numpy()
                   for i in range(1, self.model.depth + 1)}
        np.savez_compressed(out / "prior_samples.npz",
                            image_shape=np.array(self.data.image_shape), **samples)
        return paths + [out / "latents.npz", out / "prior_samples.npz"]

