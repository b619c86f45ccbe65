"""The Ornstein–Uhlenbeck operator U_ρ of the Hermite VAE (HVAE §2.1–2).

U_ρ f(z) = E_ε[f(ρ z + √(1-ρ²) ε)] for z ~ N(0, I): it keeps the mean of f and shrinks the
Hermite coefficient f̂(α) by ρ^|α| (so the variance of U_ρ f is Σ ρ^{2|α|} f̂(α)²). For a
latent z_{i+1} ~ N(μ_q, σ_q²) the same operator acts on the standardised variable, giving the
correlated inputs

    z' = ρ z + (1 - ρ) μ_q + σ_q √(1 - ρ²) ε,

and U_ρ is estimated by averaging the network over `ou_samples` such z' (HVAE §2: "5 to 10
samples suffice"). It is applied only to the generator's intermediate conditionals
p(z_i | z_{i+1}) and only when computing the training gradient; evaluation uses the
unsmoothed model. Imports only torch.

HVAE = "Variance Reduction in Hierarchical Variational Autoencoders" (the Hermite VAE paper).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .model import Conditional, NoiseTape


def correlated_inputs(z: Tensor, q_mu: Tensor, q_logvar: Tensor, rho: Tensor, eps: Tensor
                      ) -> Tensor:
    """z' for every OU sample: z, q_mu, q_logvar (S, N, d); rho (S,); eps (S, K, N, d) -> (S, K, N, d)."""
    rho = rho.view(-1, 1, 1, 1)
    q_std = torch.exp(0.5 * q_logvar)
    return (rho * z.unsqueeze(1) + (1 - rho) * q_mu.unsqueeze(1)
            + q_std.unsqueeze(1) * torch.sqrt(1 - rho.square()) * eps)


def ou_operator(f: Callable[[Tensor], Tensor], z: Tensor, rho: float, eps: Tensor) -> Tensor:
    """Monte Carlo U_ρ f(z) for standard-normal z: z (N, d), eps (K, N, d) -> mean_k f(z'_k)."""
    z_corr = rho * z + (1.0 - rho ** 2) ** 0.5 * eps
    return f(z_corr).mean(dim=0)


class OUSmoother:
    """Replaces p(z_i|z_{i+1}) = N(μ(z_{i+1}), σ²(z_{i+1})) by the smoothed Gaussian.

    target `mean_var`: N(U_ρ μ, (U_ρ σ)²) — the HVAE substitution of μ_i and σ_i.
    target `ratio`:    σ̃ = U_ρ σ and μ̃ = U_ρ(μ/σ) · σ̃ — smoothing the ratio μ/σ (HVAE §3).
    rho: (S,) one value per cohort member (ρ = 1 leaves that member unsmoothed up to
    float rounding of a mean over identical values).
    """

    def __init__(self, rho: Tensor, ou_samples: int, target: str = "mean_var") -> None:
        if target not in ("mean_var", "ratio"):
            raise ValueError(f"unknown ou_target {target!r}")
        self.rho, self.ou_samples, self.target = rho, ou_samples, target

    def __call__(self, conditional: Conditional, z: Tensor, q_mu: Tensor, q_logvar: Tensor,
                 tape: NoiseTape) -> tuple[Tensor, Tensor]:
        members, rows, dim = z.shape
        k = self.ou_samples
        eps = tape.ou_normal((k, rows, dim))  # (S, K, N, d)
        z_corr = correlated_inputs(z, q_mu, q_logvar, self.rho, eps)
        mu, logvar = conditional(z_corr.reshape(members, k * rows, dim))  # (S, K*N, z_i)
        mu = mu.view(members, k, rows, -1)
        std = torch.exp(0.5 * logvar).view(members, k, rows, -1)
        std_smooth = std.mean(dim=1)
        if self.target == "mean_var":
            mu_smooth = mu.mean(dim=1)
        else:
            mu_smooth = (mu / std).mean(dim=1) * std_smooth
        return mu_smooth, 2.0 * torch.log(std_smooth)
