"""Log densities, per-layer KL, the ELBO and the importance-weighted bound, β schedules.

Imports only torch. All functions take the named terms of `model.ForwardTerms`; this module
is the one place that builds a loss.

KL estimators (trial parameter `kl_estimator`). With `kl_estimator="analytic"` a layer's KL is the closed-form
KL(q(z_i|·) ‖ p(z_i|z_{i+1})) whenever both are Gaussians given parents sampled *before* z_i:
every layer of the ladder / LVAE top-down pass and the top layer of the bottom-up VAE (its
prior is N(0, I)). The bottom-up VAE's lower layers use the one-sample Monte Carlo estimate
log q(z_i) − log p(z_i|z_{i+1}), because their prior's parent z_{i+1} is drawn from
q(z_{i+1}|z_i) after z_i, so the closed form given that sample would be biased.
`kl_estimator="mc"` uses Monte Carlo for every layer (as the original LVAE code did).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .model import ForwardTerms, LayerTerms

LOG_2PI = math.log(2 * math.pi)


def gaussian_log_prob(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """Per-unit log N(z | μ, σ²): all (S, N, d) -> (S, N, d)."""
    return -0.5 * (LOG_2PI + logvar + (z - mu).square() * torch.exp(-logvar))


def kl_gaussians(q_mu: Tensor, q_logvar: Tensor, p_mu: Tensor, p_logvar: Tensor) -> Tensor:
    """Per-unit KL(N(q_mu, e^q_logvar) ‖ N(p_mu, e^p_logvar)), (S, N, d) -> (S, N, d)."""
    return 0.5 * (p_logvar - q_logvar
                  + (torch.exp(q_logvar) + (q_mu - p_mu).square()) * torch.exp(-p_logvar) - 1.0)


def kl_std_normal(q_mu: Tensor, q_logvar: Tensor) -> Tensor:
    """Per-unit KL(q ‖ N(0, I)) (ICML Fig 6a), (S, N, d) -> (S, N, d)."""
    return 0.5 * (torch.exp(q_logvar) + q_mu.square() - 1.0 - q_logvar)


def layer_log_ratio(layer: LayerTerms) -> Tensor:
    """log q(z_i|·) − log p(z_i|·) at the sample, summed over units: (S, N)."""
    return unit_log_ratio(layer).sum(-1)


def unit_log_ratio(layer: LayerTerms) -> Tensor:
    """log q(z_ik|·) − log p(z_ik|·) per unit at the sample: (S, N, d)."""
    return (gaussian_log_prob(layer.z, layer.q_mu, layer.q_logvar)
            - gaussian_log_prob(layer.z, layer.p_mu, layer.p_logvar))


def unit_kl(layer: LayerTerms, estimator: str = "analytic") -> Tensor:
    """Per-unit KL of one layer per row, (S, N, d), by the layer's own estimator.

    Closed form where q and p are Gaussians given parents sampled before z_i, else the
    one-sample Monte Carlo log-ratio (module docstring). Both are sums over units, so the
    per-unit values of a layer always add up to `layer_kl` — the active-unit count (ICML
    Table 2) and the Fig 5 heatmaps are built from the same estimate as `kl_layer_{i}`.
    """
    if estimator == "analytic" and layer.kl_analytic:
        return kl_gaussians(layer.q_mu, layer.q_logvar, layer.p_mu, layer.p_logvar)
    return unit_log_ratio(layer)


def layer_kl(layer: LayerTerms, estimator: str = "analytic") -> Tensor:
    """KL of one layer per row, (S, N): analytic where valid, else Monte Carlo (see above)."""
    return unit_kl(layer, estimator).sum(-1)


def log_weights(terms: ForwardTerms, beta: Tensor | None = None) -> Tensor:
    """log w = log p(x|z_1) + β Σ_i [log p(z_i|·) − log q(z_i|·)], (S, N), fp32.

    The IWAE log-weights (ICML eq 12): always the sampled densities, never an analytic KL.
    """
    log_ratio = sum(layer_log_ratio(layer) for layer in terms.layers)
    if beta is not None:
        log_ratio = beta.view(-1, 1) * log_ratio
    return terms.log_px.float() - log_ratio.float()


def log_mean_exp(values: Tensor, dim: int) -> Tensor:
    """log (1/K) Σ_k exp(values_k), max-subtracted (logsumexp) so nothing underflows."""
    return torch.logsumexp(values, dim=dim) - math.log(values.shape[dim])


def iw_bound(log_w: Tensor, k: int) -> Tensor:
    """L_K per example (ICML eq 12): log_w (S, K*B) with samples sample-major -> (S, B)."""
    members, rows = log_w.shape
    return log_mean_exp(log_w.view(members, k, rows // k), dim=1)


@dataclass
class ObjectiveTerms:
    """Per-member results of one training batch, each (S,)."""

    loss: Tensor  # what is minimised (β-weighted, free bits clamped, smoothed if ρ < 1)
    log_px: Tensor  # mean reconstruction term
    kl_layers: list[Tensor]  # mean KL per layer, unclamped


def training_objective(terms: ForwardTerms, batch: int, iw_samples: int, beta: Tensor,
                       free_bits: Tensor, estimator: str = "analytic") -> ObjectiveTerms:
    """−(β-weighted ELBO) with per-layer free bits, or −(β-weighted L_K) when iw_samples > 1.

    terms: ForwardTerms over N = mc_samples * iw_samples * B rows (sample-major).
    beta, free_bits: (S,). Free bits (Kingma et al. 2016, per layer as in HVAE §5.1): the
    layer's KL averaged over the batch is clamped, max(λ, KL_i), before β scales it — never
    per example and never after rescaling.
    """
    kl_layers = [layer_kl(layer, estimator).mean(-1) for layer in terms.layers]
    log_px = terms.log_px.mean(-1)
    if iw_samples > 1:
        log_w = log_weights(terms, beta)  # (S, M*K*B)
        members = log_w.shape[0]
        log_w = log_w.view(members, -1, iw_samples, batch)  # (S, M, K, B)
        loss = -log_mean_exp(log_w, dim=2).mean(dim=(1, 2))
    else:
        clamped = [torch.maximum(kl, free_bits) for kl in kl_layers]
        loss = -(log_px - beta * sum(clamped))
    return ObjectiveTerms(loss, log_px, kl_layers)


def warmup_beta(step: int, steps_per_epoch: int, warmup_epochs: float) -> float:
    """β rising linearly 0 → 1 over the first N_t epochs, updated every step (ICML eq 22)."""
    if warmup_epochs <= 0:
        return 1.0
    return min(1.0, step / (warmup_epochs * steps_per_epoch))


def kl_anneal_beta(step: int, hold_steps: int, anneal_steps: int) -> float:
    """β = 0 for `hold_steps`, then linear to 1 over `anneal_steps` (HVAE §5.1: 10k, 500k)."""
    if step < hold_steps:
        return 0.0
    if anneal_steps <= 0:
        return 1.0
    return min(1.0, (step - hold_steps) / anneal_steps)


def beta_at(step: int, steps_per_epoch: int, warmup_epochs: float, hold_steps: int,
            anneal_steps: int) -> float:
    """The β of step `step` (0-based count of steps taken before this one)."""
    if hold_steps or anneal_steps:
        return kl_anneal_beta(step, hold_steps, anneal_steps)
    return warmup_beta(step, steps_per_epoch, warmup_epochs)
