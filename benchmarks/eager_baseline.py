"""A plain eager PyTorch implementation of the same models, as a user would write it.

nn.Linear / nn.BatchNorm1d MLPs, the LVAE (NIPS eqs 13–19) or bottom-up VAE, analytic KL
given the sampled parents, torch.distributions-free but otherwise textbook: a DataLoader-style
loop over a CPU-binarized epoch tensor, `loss.item()` every step (a host sync), default Adam.
It is the baseline the benchmarks compare vaelab's core against; it is not used by vaelab.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class EagerMLP(nn.Module):
    def __init__(self, d_in: int, width: int, bn: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for d in (d_in, width):
            layers += [nn.Linear(d, width)] + ([nn.BatchNorm1d(width)] if bn else []) + [nn.LeakyReLU(0.1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class EagerGaussian(nn.Module):
    def __init__(self, d_in: int, width: int, d_out: int, bn: bool) -> None:
        super().__init__()
        self.mlp = EagerMLP(d_in, width, bn)
        self.mu, self.var = nn.Linear(width, d_out), nn.Linear(width, d_out)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.mlp(x)
        return self.mu(d), F.softplus(self.var(d)) + 1e-6


def kl(mu_q, var_q, mu_p, var_p):
    return 0.5 * (torch.log(var_p / var_q) + (var_q + (mu_q - mu_p) ** 2) / var_p - 1).sum(-1)


class EagerHVAE(nn.Module):
    """Bottom-up VAE or LVAE with batch norm, written plainly."""

    def __init__(self, x_dim: int, z_dims: list[int], widths: list[int], inference: str, bn: bool):
        super().__init__()
        self.inference, self.L = inference, len(z_dims)
        ins = [x_dim] + (z_dims[:-1] if inference == "vae" else widths[:-1])
        if inference == "vae":
            self.enc = nn.ModuleList(EagerGaussian(ins[i], widths[i], z_dims[i], bn) for i in range(self.L))
        else:
            self.up = nn.ModuleList(EagerMLP(ins[i], widths[i], bn) for i in range(self.L))
            self.up_mu = nn.ModuleList(nn.Linear(widths[i], z_dims[i]) for i in range(self.L))
            self.up_var = nn.ModuleList(nn.Linear(widths[i], z_dims[i]) for i in range(self.L))
        self.gen = nn.ModuleList(EagerGaussian(z_dims[i + 1], widths[i + 1], z_dims[i], bn) for i in range(self.L - 1))
        self.dec = nn.Sequential(EagerMLP(z_dims[0], widths[0], bn), nn.Linear(widths[0], x_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Negative ELBO, mean over the batch."""
        if self.inference == "vae":
            zs, qs, h = [], [], x
            for enc in self.enc:
                mu, var = enc(h)
                h = mu + var.sqrt() * torch.randn_like(mu)
                zs.append(h); qs.append((mu, var))
            kls = []
            for i in range(self.L):
                if i == self.L - 1:
                    kls.append(kl(*qs[i], torch.zeros_like(zs[i]), torch.ones_like(zs[i])))
                else:
                    mu_p, var_p = self.gen[i](zs[i + 1])
                    log_q = -0.5 * (torch.log(2 * math.pi * qs[i][1]) + (zs[i] - qs[i][0]) ** 2 / qs[i][1]).sum(-1)
                    log_p = -0.5 * (torch.log(2 * math.pi * var_p) + (zs[i] - mu_p) ** 2 / var_p).sum(-1)
                    kls.append(log_q - log_p)
            z1 = zs[0]
        else:
            ups, h = [], x
            for i in range(self.L):
                h = self.up[i](h)
                ups.append((self.up_mu[i](h), F.softplus(self.up_var[i](h)) + 1e-6))
            mu, var = ups[-1]
            z = mu + var.sqrt() * torch.randn_like(mu)
            kls = [kl(mu, var, torch.zeros_like(mu), torch.ones_like(var))]
            for i in range(self.L - 2, -1, -1):
                mu_p, var_p = self.gen[i](z)
                prec = 1 / ups[i][1] + 1 / var_p
                var_q = 1 / prec
                mu_q = (ups[i][0] / ups[i][1] + mu_p / var_p) * var_q
                z = mu_q + var_q.sqrt() * torch.randn_like(mu_q)
                kls.append(kl(mu_q, var_q, mu_p, var_p))
            z1 = z
        rec = -F.binary_cross_entropy_with_logits(self.dec(z1), x, reduction="none").sum(-1)
        return -(rec - sum(kls)).mean()


def train_steps(model: EagerHVAE, train_x: torch.Tensor, steps: int, batch: int = 256) -> float:
    """Run `steps` training steps the textbook way; returns steps per second."""
    import time

    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    device = next(model.parameters()).device
    binarized = torch.bernoulli(train_x.cpu()).to(device)  # one binarization per epoch, on the host
    perm = torch.randperm(binarized.shape[0])
    start = time.perf_counter()
    for k in range(steps):
        idx = perm[(k * batch) % (binarized.shape[0] - batch):][:batch]
        loss = model(binarized[idx.to(device)])
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()  # the per-step host sync of a typical logging loop
    return steps / (time.perf_counter() - start)
