"""Hierarchical VAE with bottom-up (VAE), probabilistic-ladder and Ladder-VAE inference.

Imports only torch (no other dependency). Every layer carries a leading *member* dimension S so that a
cohort of S models of one architecture (different seeds, warm-up lengths, ρ, ...) trains in
one set of kernels: activations are (S, N, F), weights (S, F_in, F_out), and members never
mix (each member's gradient depends on its own slice only).

Equations cited: ICML = "How to Train Deep VAEs and Probabilistic Ladder Networks" (Sønderby
et al., ICML 2016), NIPS = "Ladder Variational Autoencoders" (Sønderby et al., NIPS 2016),
HVAE = "Variance Reduction in Hierarchical Variational Autoencoders" (the Hermite VAE paper).

Layers are numbered 1 (bottom, next to x) … L (top); Python lists index layer i at i - 1.
Samples are tiled sample-major along the row axis: row k * B + b is sample k of example b.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Activation = Callable[[Tensor], Tensor]

# ICML §3: max(x, 0.1x) for MNIST. Lasagne's leaky_rectify, which the authors' released
# code uses, has slope 0.01 (trial parameter `leaky_slope`).
DEFAULT_LEAKY_SLOPE = 0.1

ACTIVATIONS: dict[str, Activation] = {
    "leaky_relu": functools.partial(F.leaky_relu, negative_slope=DEFAULT_LEAKY_SLOPE),
    "tanh": torch.tanh,  # ICML §3: NORB
    "relu": F.relu,
    "elu": F.elu,
}


def activation_function(name: str, leaky_slope: float = DEFAULT_LEAKY_SLOPE) -> Activation:
    """The named nonlinearity; `leaky_slope` is leaky_relu's slope for x < 0."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; known: {', '.join(ACTIVATIONS)}")
    if name == "leaky_relu":
        return functools.partial(F.leaky_relu, negative_slope=leaky_slope)
    return ACTIVATIONS[name]


# --------------------------------------------------------------------------- layers


@dataclass(frozen=True)
class InitScheme:
    """How weights start (trial parameters `init`, `var_bias_init`).

    torch  — nn.Linear's default: W and b ~ U(±1/sqrt(fan_in)).
    glorot — the original LVAE code (run_models.py): Glorot-normal weights,
             std = gain·sqrt(2 / (fan_in + fan_out)), gain sqrt(2) in the MLPs (lasagne's
             'relu' gain) and 1 in the μ / σ² heads and the output layer; biases 0.
    var_bias: the σ² heads' bias (the original code: 1.0, so σ² starts near softplus(1));
             None keeps the scheme's own bias.
    """

    name: str = "torch"
    var_bias: Optional[float] = None


class MemberLinear(nn.Module):
    """S independent affine maps: (S, N, F_in) -> (S, N, F_out) in one batched matmul.

    role: "hidden" (MLP layer), "mean" / "var" (a Gaussian head's μ / σ² pre-activation) or
    "output" (p(x|z_1)); it only selects the initialisation (InitScheme).
    """

    def __init__(self, members: int, in_dim: int, out_dim: int, role: str = "hidden") -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(members, in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(members, 1, out_dim))
        self.role = role

    def reset_member(self, member: int, generator: torch.Generator,
                     scheme: InitScheme = InitScheme()) -> None:
        fan_in, fan_out = self.weight.shape[1:]
        if scheme.name == "glorot":
            gain = math.sqrt(2.0) if self.role == "hidden" else 1.0
            std = gain * math.sqrt(2.0 / (fan_in + fan_out))
            values = torch.randn(self.weight.shape[1:], generator=generator, device=generator.device)
            self.weight.data[member].copy_(values * std)
            self.bias.data[member].zero_()
        else:  # PyTorch's nn.Linear default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for W and b.
            bound = 1.0 / math.sqrt(fan_in)
            for p in (self.weight, self.bias):
                values = torch.rand(p.shape[1:], generator=generator, device=generator.device)
                p.data[member].copy_((values * 2 - 1) * bound)
        if self.role == "var" and scheme.var_bias is not None:
            self.bias.data[member].fill_(scheme.var_bias)

    def forward(self, x: Tensor) -> Tensor:
        # Under bf16 autocast (TrialConfig.precision) only this matmul runs in bfloat16:
        # its output goes back to the parameters' dtype at once, so variances,
        # log-densities, KLs and logsumexp never see 8-bit mantissas. A no-op otherwise.
        return torch.baddbmm(self.bias, x, self.weight).to(self.weight.dtype)


class MemberBatchNorm(nn.Module):
    """Batch norm over the row axis, separately per member: (S, N, F) -> (S, N, F).

    Evaluation statistics (trial parameter `bn_eval`): `running` uses exponential moving averages
    updated while training; `population` uses statistics recomputed over the whole
    training set before an evaluation (as the original LVAE code does), which the
    evaluator fills through `start_population()` / `finish_population()`.
    """

    def __init__(self, members: int, features: int, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.weight = nn.Parameter(torch.ones(members, 1, features))
        self.bias = nn.Parameter(torch.zeros(members, 1, features))
        self.register_buffer("running_mean", torch.zeros(members, 1, features))
        self.register_buffer("running_var", torch.ones(members, 1, features))
        self.register_buffer("population_mean", torch.zeros(members, 1, features))
        self.register_buffer("population_var", torch.ones(members, 1, features))
        self.eval_stats = "population"
        self._accumulator: Optional[list[Tensor]] = None  # [count, sum, sum of squares]

    def reset_member(self, member: int, generator: torch.Generator) -> None:
        self.weight.data[member].fill_(1.0)
        self.bias.data[member].zero_()

    def start_population(self) -> None:
        self._accumulator = [torch.zeros((), device=self.weight.device),
                             torch.zeros_like(self.population_mean),
                             torch.zeros_like(self.population_var)]

    def finish_population(self) -> None:
        count, total, total_sq = self._accumulator
        mean = total / count
        self.population_mean.copy_(mean)
        self.population_var.copy_((total_sq / count - mean.square()).clamp_min(0.0))
        self._accumulator = None

    def forward(self, x: Tensor) -> Tensor:
        if self._accumulator is not None:  # population pass: batch statistics, no updates
            self._accumulate(x.detach())
            return self._native(x, None, None, training=True)
        if self.training:
            return self._native(x, self.running_mean, self.running_var, training=True)
        if self.eval_stats == "running":
            return self._native(x, self.running_mean, self.running_var, training=False)
        return self._native(x, self.population_mean, self.population_var, training=False)

    def _native(self, x: Tensor, mean: Optional[Tensor], var: Optional[Tensor], training: bool
                ) -> Tensor:
        """torch's fused batch norm on (N, S*F): member s's features are channels s*F..s*F+F-1,
        so statistics stay per member; running stats (S, 1, F) are updated in place."""
        members, rows, features = x.shape
        flat = x.transpose(0, 1).reshape(rows, members * features) if members > 1 else x[0]
        out = F.batch_norm(flat, None if mean is None else mean.view(-1),
                           None if var is None else var.view(-1), self.weight.view(-1),
                           self.bias.view(-1), training=training, momentum=self.momentum,
                           eps=self.eps)
        if members > 1:
            return out.view(rows, members, features).transpose(0, 1)
        return out.unsqueeze(0)

    def _accumulate(self, x: Tensor) -> None:
        count, total, total_sq = self._accumulator
        count += x.shape[1]
        total += x.sum(dim=1, keepdim=True)
        total_sq += x.square().sum(dim=1, keepdim=True)


class MLP(nn.Module):
    """d = MLP(y): two hidden layers (ICML eq 7), each Linear -> [BN] -> activation."""

    def __init__(self, members: int, in_dim: int, width: int, batch_norm: bool,
                 activation: Activation) -> None:
        super().__init__()
        self.linears = nn.ModuleList([MemberLinear(members, in_dim, width),
                                      MemberLinear(members, width, width)])
        self.norms = nn.ModuleList(
            [MemberBatchNorm(members, width) for _ in range(2)] if batch_norm else []
        )
        self.activation = activation

    def forward(self, y: Tensor) -> Tensor:
        for k, linear in enumerate(self.linears):
            y = linear(y)
            if self.norms:
                y = self.norms[k](y)
            y = self.activation(y)
        return y


class GaussianHead(nn.Module):
    """μ = Linear(d), σ² = Softplus(Linear(d)) + floor (ICML eqs 8–9). Returns (μ, log σ²).

    The variance is a softplus of a linear map (never softplus of a log-variance, which
    would force σ² ≥ 1); the floor keeps log σ² finite when softplus underflows.
    batch_norm: BN on both linear outputs before the identity / softplus, as the original
    LVAE code does for every latent head (trial parameter `bn_heads`; the papers don't say).
    """

    def __init__(self, members: int, width: int, out_dim: int, var_floor: float,
                 batch_norm: bool = False) -> None:
        super().__init__()
        self.mean = MemberLinear(members, width, out_dim, role="mean")
        self.var = MemberLinear(members, width, out_dim, role="var")
        self.norms = nn.ModuleList(
            [MemberBatchNorm(members, out_dim) for _ in range(2)] if batch_norm else [])
        self.var_floor = var_floor

    def forward(self, d: Tensor) -> tuple[Tensor, Tensor]:
        mean, var = self.mean(d), self.var(d)  # (S, N, z) each
        if self.norms:
            mean, var = self.norms[0](mean), self.norms[1](var)
        return mean, torch.log(F.softplus(var) + self.var_floor)


class Conditional(nn.Module):
    """A Gaussian conditional y -> (μ, log σ²) = head(MLP(y))."""

    def __init__(self, members: int, in_dim: int, width: int, out_dim: int, batch_norm: bool,
                 activation: Activation, var_floor: float, bn_heads: bool = False) -> None:
        super().__init__()
        self.mlp = MLP(members, in_dim, width, batch_norm, activation)
        self.head = GaussianHead(members, width, out_dim, var_floor, bn_heads)

    def forward(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return self.head(self.mlp(y))


# --------------------------------------------------------------------------- noise


class NoiseTape:
    """Standard normal noise for one forward pass, one stream per member.

    Two streams: `normal` for the latent samples and `ou_normal` for the OU smoothing
    inputs, so switching smoothing on or off never shifts the latent noise.
    `recorded` slices pre-drawn (S, T) tensors in call order: the training step draws its
    noise in one call per member and stream (per-member generators keep a cohort member's
    random stream identical to training it alone) and the forward pass stays free of RNG
    calls, which torch.compile / CUDA graphs want. `live` draws on demand (evaluation).
    """

    def __init__(self, latent: Optional[Tensor] = None, ou: Optional[Tensor] = None,
                 generators: Optional[Sequence[torch.Generator]] = None) -> None:
        self.flat = {"latent": latent, "ou": ou}
        self.offset = {"latent": 0, "ou": 0}
        self.generators = generators

    @classmethod
    def recorded(cls, latent: Tensor, ou: Optional[Tensor] = None) -> "NoiseTape":
        return cls(latent=latent, ou=ou)

    @classmethod
    def live(cls, generators: Sequence[torch.Generator]) -> "NoiseTape":
        return cls(generators=generators)

    def normal(self, shape: tuple[int, ...]) -> Tensor:
        """(S, *shape) standard normal noise for a latent sample."""
        return self._take("latent", shape)

    def ou_normal(self, shape: tuple[int, ...]) -> Tensor:
        """(S, *shape) standard normal noise for OU-correlated inputs."""
        return self._take("ou", shape)

    def _take(self, stream: str, shape: tuple[int, ...]) -> Tensor:
        flat = self.flat[stream]
        if flat is None:
            if self.generators is None:
                raise ValueError(f"no {stream} noise was recorded for this pass")
            return torch.stack([torch.randn(shape, generator=g, device=g.device)
                                for g in self.generators])
        n, start = math.prod(shape), self.offset[stream]
        self.offset[stream] = start + n
        return flat[:, start:start + n].reshape(flat.shape[0], *shape)


def draw_normal(generators: Sequence[torch.Generator], numel: int) -> Tensor:
    """(S, numel) standard normal noise, member s from generator s: each row drawn in place
    (the numbers of torch.randn(numel, generator=g), without a torch.stack copy of all S)."""
    out = torch.empty(len(generators), numel, device=generators[0].device)
    for s, g in enumerate(generators):
        torch.randn(numel, generator=g, device=g.device, out=out[s])
    return out


# --------------------------------------------------------------------------- model


@dataclass
class LayerTerms:
    """One stochastic layer of one forward pass; every tensor is (S, N, z_i)."""

    z: Tensor  # the sample
    q_mu: Tensor  # approximate posterior q(z_i | ·)
    q_logvar: Tensor
    p_mu: Tensor  # generative conditional p(z_i | z_{i+1}) (top layer: N(0, I))
    p_logvar: Tensor
    kl_analytic: bool  # True when q and p are Gaussians given parents sampled before z_i


@dataclass
class ForwardTerms:
    """What a forward pass returns; objectives.py builds every loss from it."""

    log_px: Tensor  # (S, N) log p(x | z_1)
    layers: list[LayerTerms]  # bottom (layer 1) .. top (layer L)
    n_samples: int


# Smoother hook: (conditional, z_{i+1}, q_mu_{i+1}, q_logvar_{i+1}, tape) -> (μ, log σ²)
Smoother = Callable[[Conditional, Tensor, Tensor, Tensor, NoiseTape], tuple[Tensor, Tensor]]


def gaussian_merge(mu_a: Tensor, logvar_a: Tensor, mu_b: Tensor, logvar_b: Tensor
                   ) -> tuple[Tensor, Tensor]:
    """Precision-weighted product of two Gaussians (ICML eq 21, NIPS eqs 17–18).

    σ² = 1 / (σ_a⁻² + σ_b⁻²) and μ = (μ_a σ_a⁻² + μ_b σ_b⁻²) σ², computed in log-variance:
    log σ² = -logaddexp(-log σ_a², -log σ_b²) and the weight of μ_a is
    σ²/σ_a² = sigmoid(log σ_b² - log σ_a²), so no variance is ever inverted.
    """
    logvar = -torch.logaddexp(-logvar_a, -logvar_b)
    weight_a = torch.sigmoid(logvar_b - logvar_a)
    return weight_a * mu_a + (1 - weight_a) * mu_b, logvar


def reparameterize(mu: Tensor, logvar: Tensor, eps: Tensor) -> Tensor:
    return mu + torch.exp(0.5 * logvar) * eps


class HierarchicalVAE(nn.Module):
    """p(x|z_1) ∏ p(z_i|z_{i+1}) p(z_L) (ICML eqs 1–4) with one of three inference models.

    inference:
      vae    — bottom-up q(z_1|x) ∏ q(z_i|z_{i-1}) (ICML eqs 5–6).
      ladder — ICML probabilistic ladder: deterministic upward pass d_1 = MLP(x),
               d_i = MLP(μ_{d,i-1}) (eqs 13–16), then a stochastic downward pass with a
               separate top-down inference MLP t_i = MLP(z_{i+1}) (eqs 18–20) merged with
               the upward Gaussian by precision weighting (eq 21).
      lvae   — NIPS Ladder VAE: upward pass d_n = MLP(d_{n-1}) (eqs 13–15) merged with the
               *generative* prior p(z_i|z_{i+1}) (eqs 16–19).
    Widths: mlp_dims[0] connects x and z_1; mlp_dims[i] connects z_i and z_{i+1}.
    generative_widths: the MLP widths of p(z_i | z_{i+1}), i = 1 .. L-1 (list index i - 1);
    None is mlp_dims[i] for layer i, the width of the z_i–z_{i+1} connection (ICML §3).
    leaky_slope: leaky_relu's slope for x < 0 (ignored by the other activations).
    """

    def __init__(self, *, x_dim: int, z_dims: Sequence[int], mlp_dims: Sequence[int],
                 inference: str, likelihood: str, batch_norm: bool, activation: str,
                 members: int = 1, var_floor: float = 1e-6, bn_heads: bool = False,
                 init: InitScheme = InitScheme(), leaky_slope: float = DEFAULT_LEAKY_SLOPE,
                 generative_widths: Optional[Sequence[int]] = None) -> None:
        super().__init__()
        if inference not in ("vae", "ladder", "lvae"):
            raise ValueError(f"unknown inference {inference!r}")
        if inference != "vae" and len(z_dims) < 2:
            raise ValueError(f"inference={inference!r} needs at least 2 latent layers")
        self.x_dim, self.z_dims, self.mlp_dims = x_dim, tuple(z_dims), tuple(mlp_dims)
        self.inference, self.likelihood, self.members = inference, likelihood, members
        self.init_scheme = init
        act = activation_function(activation, leaky_slope)
        depth = len(z_dims)
        p_widths = tuple(mlp_dims[1:depth]) if generative_widths is None else tuple(generative_widths)
        if len(p_widths) != depth - 1:
            raise ValueError(f"generative_widths needs {depth - 1} widths (one per p(z_i | z_i+1)), "
                             f"got {list(p_widths)}")
        self.generative_widths = p_widths

        def cond(in_dim: int, width: int, out_dim: int) -> Conditional:
            return Conditional(members, in_dim, width, out_dim, batch_norm, act, var_floor,
                               bn_heads)

        # Generative model: p(z_i | z_{i+1}) for i = 1 .. L-1, then p(x | z_1).
        self.generative = nn.ModuleList(
            [cond(z_dims[i + 1], p_widths[i], z_dims[i]) for i in range(depth - 1)]
        )
        self.decoder_mlp = MLP(members, z_dims[0], mlp_dims[0], batch_norm, act)
        # p(x|z_1) heads: never batch-normed (batch norm on all layers except the output)
        self.decoder_mean = MemberLinear(members, mlp_dims[0], x_dim, role="output")
        self.decoder_var = (MemberLinear(members, mlp_dims[0], x_dim, role="var")
                            if likelihood == "gaussian" else None)
        self.var_floor = var_floor
        # Inference model.
        if inference == "vae":
            in_dims = [x_dim, *z_dims[:-1]]
            self.encoder = nn.ModuleList(
                [cond(in_dims[i], mlp_dims[i], z_dims[i]) for i in range(depth)]
            )
        else:
            # upward MLP inputs: ICML eq 16 feeds μ_{d,i-1}; NIPS eq 13 feeds d_{i-1}
            prev = z_dims if inference == "ladder" else mlp_dims
            in_dims = [x_dim, *prev[:-1]]
            self.upward = nn.ModuleList(
                [MLP(members, in_dims[i], mlp_dims[i], batch_norm, act) for i in range(depth)]
            )
            self.upward_heads = nn.ModuleList(
                [GaussianHead(members, mlp_dims[i], z_dims[i], var_floor, bn_heads)
                 for i in range(depth)]
            )
            if inference == "ladder":  # separate top-down inference MLP t_i (ICML eqs 18–20)
                self.topdown = nn.ModuleList(
                    [cond(z_dims[i + 1], mlp_dims[i + 1], z_dims[i]) for i in range(depth - 1)]
                )

    @property
    def depth(self) -> int:
        return len(self.z_dims)

    # ----------------------------------------------------------------- initialisation

    def reset_parameters(self, seeds: Sequence[int]) -> None:
        """Initialise member s from its own generator seeded by seeds[s].

        Parameters are visited in a fixed order, so member s of a cohort starts exactly as
        a model trained alone with the same seed.
        """
        device = self.decoder_mean.weight.device
        for member, seed in enumerate(seeds):
            generator = torch.Generator(device=device).manual_seed(int(seed))
            for module in self.modules():
                if isinstance(module, MemberLinear):
                    module.reset_member(member, generator, self.init_scheme)
                elif isinstance(module, MemberBatchNorm):
                    module.reset_member(member, generator)

    def set_bn_eval_stats(self, which: str) -> None:
        for module in self.modules():
            if isinstance(module, MemberBatchNorm):
                module.eval_stats = which

    def batch_norms(self) -> list[MemberBatchNorm]:
        return [m for m in self.modules() if isinstance(m, MemberBatchNorm)]

    # ----------------------------------------------------------------- noise budget

    def latent_noise_numel(self, batch: int, n_samples: int) -> int:
        """Standard-normal draws of the latent samples of one forward pass (per member)."""
        return batch * n_samples * sum(self.z_dims)

    def ou_noise_numel(self, batch: int, n_samples: int, ou_samples: int) -> int:
        """Draws for U_ρ: it perturbs the parent z_{i+1} of every intermediate conditional."""
        return ou_samples * batch * n_samples * sum(self.z_dims[1:])

    # ----------------------------------------------------------------- passes

    def decode(self, z1: Tensor) -> tuple[Tensor, Optional[Tensor]]:
        """p(x|z_1): Bernoulli logits (ICML eq 2) or Gaussian (μ, log σ²) (eq 1)."""
        d = self.decoder_mlp(z1)
        mean = self.decoder_mean(d)
        if self.decoder_var is None:
            return mean, None
        return mean, torch.log(F.softplus(self.decoder_var(d)) + self.var_floor)

    def log_px(self, x: Tensor, z1: Tensor) -> Tensor:
        """log p(x | z_1) summed over pixels: x (S, N, D), z1 (S, N, z_1) -> (S, N)."""
        mean, logvar = self.decode(z1)
        if logvar is None:
            return -F.binary_cross_entropy_with_logits(mean, x, reduction="none").sum(-1)
        return -0.5 * (math.log(2 * math.pi) + logvar + (x - mean).square() * torch.exp(-logvar)
                       ).sum(-1)

    def forward(self, x: Tensor, tape: NoiseTape, n_samples: int = 1,
                smoother: Optional[Smoother] = None) -> ForwardTerms:
        """x: (S, B, D) -> ForwardTerms over N = n_samples * B rows (sample-major)."""
        if self.inference == "vae":
            layers = self._bottom_up_pass(x, tape, n_samples, smoother)
        else:
            layers = self._top_down_pass(x, tape, n_samples, smoother)
        x_rows = x.repeat(1, n_samples, 1)
        return ForwardTerms(self.log_px(x_rows, layers[0].z), layers, n_samples)

    def _bottom_up_pass(self, x: Tensor, tape: NoiseTape, n_samples: int,
                        smoother: Optional[Smoother]) -> list[LayerTerms]:
        # q(z_1|x) is deterministic in x: compute it on B rows, then tile the samples.
        mu, logvar = self.encoder[0](x)
        mu, logvar = mu.repeat(1, n_samples, 1), logvar.repeat(1, n_samples, 1)
        posteriors = []
        for i in range(self.depth):
            if i > 0:
                mu, logvar = self.encoder[i](posteriors[-1][0])  # q(z_i | z_{i-1}) eq 6
            z = reparameterize(mu, logvar, tape.normal(mu.shape[1:]))
            posteriors.append((z, mu, logvar))
        layers = []
        for i, (z, mu, logvar) in enumerate(posteriors):
            p_mu, p_logvar = self._prior(i, posteriors, tape, smoother)
            # p's parent z_{i+1} was drawn *after* z_i (from q(z_{i+1}|z_i)), so only the top
            # layer's KL is analytic given sampled parents; lower layers need Monte Carlo.
            layers.append(LayerTerms(z, mu, logvar, p_mu, p_logvar,
                                     kl_analytic=i == self.depth - 1))
        return layers

    def _prior(self, i: int, posteriors: list[tuple[Tensor, Tensor, Tensor]], tape: NoiseTape,
               smoother: Optional[Smoother]) -> tuple[Tensor, Tensor]:
        """p(z_i | z_{i+1}) for layer index i given the sampled parent (N(0, I) at the top)."""
        z = posteriors[i][0]
        if i == self.depth - 1:
            return torch.zeros_like(z), torch.zeros_like(z)  # p(z_L) = N(0, I), ICML eq 4
        parent, parent_mu, parent_logvar = posteriors[i + 1]
        if smoother is not None:
            return smoother(self.generative[i], parent, parent_mu, parent_logvar, tape)
        return self.generative[i](parent)

    def _upward_pass(self, x: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Deterministic bottom-up pass: [(μ_d,i, log σ²_d,i)] for i = 1..L, each (S, B, z_i)."""
        out, h = [], x
        for mlp, head in zip(self.upward, self.upward_heads):
            d = mlp(h)
            mu, logvar = head(d)
            out.append((mu, logvar))
            h = mu if self.inference == "ladder" else d  # ICML eq 16 vs NIPS eq 13
        return out

    def _top_down_pass(self, x: Tensor, tape: NoiseTape, n_samples: int,
                       smoother: Optional[Smoother]) -> list[LayerTerms]:
        upward = [(mu.repeat(1, n_samples, 1), lv.repeat(1, n_samples, 1))
                  for mu, lv in self._upward_pass(x)]
        top = self.depth - 1
        mu, logvar = upward[top]  # q(z_L|x) = N(μ_d,L, σ²_d,L): ICML eq 17, NIPS µ_q,L = µ̂_q,L
        z = reparameterize(mu, logvar, tape.normal(mu.shape[1:]))
        layers = [LayerTerms(z, mu, logvar, torch.zeros_like(z), torch.zeros_like(z), True)]
        for i in range(top - 1, -1, -1):
            parent = layers[0]
            if smoother is None or self.inference == "lvae":
                p_mu, p_logvar = self.generative[i](parent.z)
            if self.inference == "ladder":
                t_mu, t_logvar = self.topdown[i](parent.z)  # ICML eqs 18–20
            else:
                t_mu, t_logvar = p_mu, p_logvar  # NIPS: merge with the generative prior
            mu, logvar = gaussian_merge(t_mu, t_logvar, *upward[i])  # ICML eq 21 / NIPS 17–18
            z = reparameterize(mu, logvar, tape.normal(mu.shape[1:]))
            if smoother is not None:  # U_ρ smooths p only, never the inference merge (HVAE §2)
                p_mu, p_logvar = smoother(self.generative[i], parent.z, parent.q_mu,
                                          parent.q_logvar, tape)
            layers.insert(0, LayerTerms(z, mu, logvar, p_mu, p_logvar, kl_analytic=True))
        return layers

    # ----------------------------------------------------------------- generation

    @torch.no_grad()
    def generate_from_layer(self, layer: int, n: int, generators: Sequence[torch.Generator]
                            ) -> Tensor:
        """Mean images (S, n, D) from z_layer ~ N(0, I) propagated through the generative
        means below it (ICML Fig 6b: the prior injected at each layer)."""
        z = NoiseTape.live(generators).normal((n, self.z_dims[layer - 1]))
        for i in range(layer - 2, -1, -1):
            z, _ = self.generative[i](z)
        mean, _ = self.decode(z)
        return torch.sigmoid(mean) if self.likelihood == "bernoulli" else mean
