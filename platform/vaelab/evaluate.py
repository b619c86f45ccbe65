"""Evaluation of a (cohort of) trained model(s): L_1, batched L_K, per-unit KL, active units,
BN population statistics, latents and prior samples.

Every evaluation uses the unsmoothed model (HVAE §2) in eval mode. Data rows are shared by
all S members: x (B, D) is broadcast to (S, B, D).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from .model import HierarchicalVAE, NoiseTape
from .objectives import iw_bound, kl_std_normal, log_weights, unit_kl

ACTIVE_UNIT_THRESHOLD = 0.01  # ICML Table 2: active if KL(q_{i,k} ‖ p_{i,k}) > 0.01


@dataclass
class ElboStats:
    """Per-member test-set means, each (S,) unless said otherwise."""

    elbo: Tensor
    kl_layers: list[Tensor]
    kl_std_normal_layers: list[Tensor]
    # per layer (S, z_i): mean per-unit KL by the layer's own estimator (sums to kl_layers)
    unit_kl: list[Tensor]

    def active_units(self) -> list[Tensor]:
        """Active units per layer, each (S,)."""
        return [(kl > ACTIVE_UNIT_THRESHOLD).sum(-1) for kl in self.unit_kl]


def _expand(x: Tensor, members: int) -> Tensor:
    return x.unsqueeze(0).expand(members, *x.shape)


@torch.no_grad()
def evaluate_elbo(model: HierarchicalVAE, x: Tensor, generators: Sequence[torch.Generator],
                  batch_size: int, estimator: str = "analytic", n_samples: int = 1) -> ElboStats:
    """L_1 (ICML eq 11) and KL diagnostics over x (M, D), averaged over n_samples draws of z
    per example: the same expectations, with less Monte Carlo noise. Layers whose KL is a
    Monte Carlo estimate (the bottom-up VAE below the top) need it: with one draw per test
    image the per-unit KL of a trained 5-layer VAE+BN+WU moves by up to 0.015 nats between
    noise seeds, enough to flip ~12 units across the 0.01 threshold (docs/OPTIONS.md)."""
    members, depth = model.members, model.depth
    elbo = torch.zeros(members, device=x.device)
    kl = [torch.zeros(members, device=x.device) for _ in range(depth)]
    kl_std = [torch.zeros(members, device=x.device) for _ in range(depth)]
    units = [torch.zeros(members, d, device=x.device, dtype=torch.float64) for d in model.z_dims]
    tape = NoiseTape.live(generators)
    images = max(1, batch_size // n_samples)  # rows per pass stay batch_size: memory as for one draw
    for start in range(0, x.shape[0], images):
        terms = model(_expand(x[start:start + images], members), tape, n_samples=n_samples)
        unit_kls = [unit_kl(layer, estimator).double() for layer in terms.layers]  # (S, B, z_i)
        layer_kls = [u.sum(-1) for u in unit_kls]  # each (S, B): the layer KL is their sum
        elbo += (terms.log_px - sum(layer_kls)).sum(-1).float()
        for i, layer in enumerate(terms.layers):
            kl[i] += layer_kls[i].sum(-1).float()
            kl_std[i] += kl_std_normal(layer.q_mu, layer.q_logvar).sum(dim=(1, 2))
            units[i] += unit_kls[i].sum(dim=1)
    n = x.shape[0] * n_samples  # rows evaluated
    return ElboStats(elbo / n, [v / n for v in kl], [v / n for v in kl_std],
                     [(u / n).float() for u in units])


@torch.no_grad()
def evaluate_iw(model: HierarchicalVAE, x: Tensor, k: int, generators: Sequence[torch.Generator],
                batch_size: int, max_rows: int = 1 << 17, bf16: bool = False) -> Tensor:
    """Mean L_K over x (M, D) -> (S,).

    bf16: the passes' matmuls under bfloat16 autocast; log-weights, logsumexp and the sum
    stay fp32/fp64 (MemberLinear hands back fp32).

    The K samples of a batch of b examples are tiled along the row axis in chunks of
    k_chunk samples (S * k_chunk * b <= max_rows rows per pass, so memory stays bounded
    whatever the cohort size); each chunk's log-weights are
    reduced by logsumexp in fp32 and the chunks combined by a second logsumexp, so no
    Python loop runs over K single-sample passes.
    """
    members = model.members
    total = torch.zeros(members, device=x.device, dtype=torch.float64)
    tape = NoiseTape.live(generators)
    for start in range(0, x.shape[0], batch_size):
        xb = _expand(x[start:start + batch_size], members)  # (S, b, D)
        b = xb.shape[1]
        k_chunk = max(1, min(k, max_rows // (b * members)))  # max_rows counts all members
        chunk_lse = []
        for done in range(0, k, k_chunk):
            kc = min(k_chunk, k - done)
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
                terms = model(xb, tape, n_samples=kc)
            log_w = log_weights(terms).view(members, kc, b)
            chunk_lse.append(torch.logsumexp(log_w, dim=1))  # (S, b)
        bound = torch.logsumexp(torch.stack(chunk_lse), dim=0) - math.log(k)
        total += bound.double().sum(-1)
    return (total / x.shape[0]).float()


@torch.no_grad()
def iw_bound_loop(model: HierarchicalVAE, x: Tensor, k: int, generators: Sequence[torch.Generator]
                  ) -> Tensor:
    """Reference L_K by a Python loop over K single-sample passes (benchmarks and tests only)."""
    members = model.members
    xb = _expand(x, members)
    tape = NoiseTape.live(generators)
    log_w = torch.stack([log_weights(model(xb, tape, n_samples=1)) for _ in range(k)], dim=1)
    return iw_bound(log_w.reshape(members, -1), k).mean(-1)


@torch.no_grad()
def population_statistics(model: HierarchicalVAE, x: Tensor,
                          binarize: Optional[Callable[[Tensor], Tensor]],
                          generators: Sequence[torch.Generator], batch_size: int) -> None:
    """Recompute every BN layer's statistics over the whole training set x (N, D), as the
    original LVAE code does before each evaluation (trial parameter `bn_eval: population`)."""
    norms = model.batch_norms()
    if not norms:
        return
    for bn in norms:
        bn.start_population()
    tape = NoiseTape.live(generators)
    for start in range(0, x.shape[0], batch_size):
        xb = x[start:start + batch_size]
        xb = binarize(xb) if binarize is not None else xb
        model(_expand(xb, model.members), tape, n_samples=1)
    for bn in norms:
        bn.finish_population()


@torch.no_grad()
def posterior_means(model: HierarchicalVAE, x: Tensor, generators: Sequence[torch.Generator]
                    ) -> list[Tensor]:
    """q(z_i|·) means per layer for x (n, D): list of (S, n, z_i) (ICML Fig 7)."""
    terms = model(_expand(x, model.members), NoiseTape.live(generators), n_samples=1)
    return [layer.q_mu for layer in terms.layers]
