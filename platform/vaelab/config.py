"""The typed trial configuration: every trial parameter, its default and its checks.

Defaults are the papers' MNIST settings (ICML 2016 §3: 64-32-16-8-4 latents, MLP widths
512-256-128-64-32, Adam lr 1e-3, batch 256, 2000 epochs, warm-up N_t = 200, IW K = 5000).
A trial configuration is flat on purpose: its field names are the MLflow param names.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Dataset = Literal["mnist", "fashion-mnist", "omniglot", "norb", "digits"]
Inference = Literal["vae", "ladder", "lvae"]

MAX_DEPTH = 5
PAPER_LATENT_DIMS = (64, 32, 16, 8, 4)
PAPER_HIDDEN_DIMS = (512, 256, 128, 64, 32)
PAPER_LEAKY_SLOPE = 0.1  # ICML §3: max(x, 0.1x)

# Settings that may differ between members of one cohort (trained in one set of kernels):
# they change neither parameter shapes nor the data a step sees in lock-step.
COHORT_VARYING = frozenset(
    {"seed", "warmup_epochs", "kl_anneal_hold_steps", "kl_anneal_steps", "free_bits", "rho"}
)


class TrialConfig(BaseModel):
    """One trial. Unknown keys are errors, never silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    # data
    dataset: Dataset = "mnist"
    data_dir: Optional[str] = None  # None: $VAELAB_DATA_DIR/<dataset> or ~/.vaelab/data/<dataset>
    train_subset: int = Field(0, ge=0)  # 0 = the whole training set
    # model
    likelihood: Optional[Literal["bernoulli", "gaussian"]] = None  # None: the dataset's own
    depth: int = Field(5, ge=1, le=MAX_DEPTH)
    latent_dims: tuple[int, ...] = PAPER_LATENT_DIMS
    hidden_dims: tuple[int, ...] = PAPER_HIDDEN_DIMS
    activation: Optional[Literal["leaky_relu", "tanh", "relu", "elu"]] = None  # None: by likelihood
    inference: Inference = "vae"
    batch_norm: bool = False
    bn_eval: Literal["population", "running"] = "population"
    var_floor: float = Field(1e-6, ge=0.0)
    # Choices of the original LVAE code (run_models.py) that the papers don't state, kept
    # as parameters so that a study can ablate them (docs/OPTIONS.md has the evidence):
    bn_heads: bool = False  # BN on every latent μ / σ² head's linear output (needs batch_norm)
    init: Literal["torch", "glorot"] = "torch"  # weight initialisation (model.InitScheme)
    var_bias_init: Optional[float] = None  # σ² heads' bias; None: the scheme's (original: 1.0)
    # leaky_relu's slope for x < 0 (original: Lasagne's leaky_rectify, 0.01)
    leaky_slope: float = Field(PAPER_LEAKY_SLOPE, ge=0.0, lt=1.0)
    # width of the probabilistic ladder's generative MLPs p(z_i | z_{i+1}): paper = the
    # z_i–z_{i+1} connection's, hidden_dims[i] (ICML §3, as the VAE); code = the one below
    # it, hidden_dims[i-1] (x–z_1's for z_1), as the original ladder (inference=ladder only)
    ladder_generative_width: Literal["paper", "code"] = "paper"
    # objective
    mc_samples: int = Field(1, ge=1)
    iw_samples: int = Field(1, ge=1)
    kl_estimator: Literal["analytic", "mc"] = "analytic"
    warmup_epochs: float = Field(0, ge=0)
    kl_anneal_hold_steps: int = Field(0, ge=0)
    kl_anneal_steps: int = Field(0, ge=0)
    free_bits: float = Field(0.0, ge=0.0)
    # OU smoothing (Hermite VAE); rho = 1 is off
    rho: float = Field(1.0, ge=0.0, le=1.0)
    ou_samples: int = Field(5, ge=1)
    ou_target: Literal["mean_var", "ratio"] = "mean_var"
    # optimiser
    lr: float = Field(1e-3, gt=0.0)
    lr_decay: float = Field(1.0, gt=0.0, le=1.0)  # factor; 1 = off
    lr_decay_every: int = Field(0, ge=0)  # epochs; 0 = off (ICML fine-tuning: 0.75 every 200)
    # Adam ε and gradient clipping as the original LVAE code (the papers don't say): on
    # real MNIST they raised L_K of every BN variant by ~0.6 nats over ε = 1e-8 without
    # clipping, where BN on the heads and Glorot init lowered it (docs/OPTIONS.md)
    adam_eps: float = Field(1e-4, gt=0.0)
    grad_clip: float = Field(4.0, ge=0.0)  # max grad norm per member; 0 = off
    grad_clip_value: float = Field(0.9, ge=0.0)  # elementwise clip after the norm clip; 0 = off
    batch_size: int = Field(256, ge=1)
    epochs: int = Field(2000, ge=1)
    # evaluation
    eval_iw: int = Field(5000, ge=1)
    eval_every: int = Field(10, ge=1)
    eval_batch_size: int = Field(1000, ge=1)
    # draws of z per test image for the test ELBO and per-unit KL when a layer's KL is a
    # Monte Carlo estimate (the bottom-up VAE below the top, or kl_estimator=mc); closed-form
    # layers need one. 32 keeps a unit's noise sd near 0.003 nats against the 0.01 threshold
    kl_eval_samples: int = Field(32, ge=1)
    train_eval_size: int = Field(10000, ge=0)  # training examples re-evaluated for train_elbo
    # run
    seed: int = Field(0, ge=0)
    init_from: Optional[str] = None  # a checkpoint file (fine-tuning)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    compile: Literal["auto", "off", "compile", "cudagraphs"] = "auto"
    # bf16: the training step's matmuls run in bfloat16 (autocast), everything else and
    # every reported metric in fp32; checked against fp32 at each evaluation (evaluator.py)
    # auto: bf16 where the matrix units are fast at it (CPU AMX / AVX512-BF16, CUDA sm80+),
    # else fp32 (hardware.resolve_precision)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    precision_tolerance: float = Field(0.1, gt=0.0)  # nats per example, |ELBO_bf16 - ELBO_fp32|
    checkpoint_every: int = Field(10, ge=1)

    @field_validator("latent_dims", "hidden_dims", mode="before")
    @classmethod
    def _parse_dims(cls, value: Any) -> Any:
        # "64-32-16" (paper notation, also how MLflow shows it) or a list
        if isinstance(value, str):
            try:
                return tuple(int(v) for v in value.replace(",", "-").split("-") if v.strip())
            except ValueError as err:
                raise ValueError(f"expected sizes like '64-32-16', got {value!r}") from err
        if isinstance(value, int):
            return (value,)
        return value

    @field_validator("latent_dims", "hidden_dims")
    @classmethod
    def _positive_dims(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or any(v < 1 for v in value):
            raise ValueError(f"sizes must be positive integers, got {list(value)}")
        return value

    @model_validator(mode="after")
    def _check_combinations(self) -> "TrialConfig":
        if len(self.latent_dims) < self.depth:
            raise ValueError(
                f"depth={self.depth} needs {self.depth} latent_dims, got {_dims(self.latent_dims)}"
            )
        if len(self.hidden_dims) < self.depth:
            raise ValueError(
                f"depth={self.depth} needs {self.depth} hidden_dims, got {_dims(self.hidden_dims)}"
            )
        if self.inference in ("ladder", "lvae") and self.depth < 2:
            raise ValueError(
                f"inference={self.inference!r} needs depth >= 2 (depth 1 is the plain VAE)"
            )
        if self.warmup_epochs > 0 and (self.kl_anneal_hold_steps or self.kl_anneal_steps):
            raise ValueError("warmup_epochs and kl_anneal_* are two β schedules: set one")
        if self.free_bits > 0 and self.iw_samples > 1:
            raise ValueError("free_bits clamps per-layer KL of the ELBO; it has no meaning with iw_samples > 1")
        if self.bn_heads and not self.batch_norm:
            raise ValueError("bn_heads=true normalises the latent heads as part of batch norm: "
                             "it needs batch_norm=true")
        if self.lr_decay < 1.0 and self.lr_decay_every == 0:
            raise ValueError(f"lr_decay={self.lr_decay} needs lr_decay_every > 0")
        self._check_original_code_options()
        return self

    def _check_original_code_options(self) -> None:
        """Options that would change nothing in this trial are refused, not ignored."""
        if self.ladder_generative_width != "paper" and self.inference != "ladder":
            raise ValueError(
                f"ladder_generative_width={self.ladder_generative_width!r} widens the generative "
                f"MLPs of the probabilistic ladder (inference='ladder') only; with "
                f"inference={self.inference!r} they already follow hidden_dims as in the "
                "original code: leave it 'paper'")
        # activation None resolves by likelihood (tanh for Gaussian data); where the dataset
        # picks the likelihood, train.build_model makes the same check
        activation = self.activation or ("tanh" if self.likelihood == "gaussian" else None)
        if self.leaky_slope != PAPER_LEAKY_SLOPE and activation not in (None, "leaky_relu"):
            raise ValueError(
                f"leaky_slope={self.leaky_slope} is the slope of activation 'leaky_relu', but "
                f"this trial's activation is {activation!r}: leave leaky_slope at "
                f"{PAPER_LEAKY_SLOPE} or set activation=leaky_relu")

    # Derived values: kept as properties so they never disagree with the fields.
    @property
    def z_dims(self) -> tuple[int, ...]:
        """Latent sizes of the kept layers, bottom (z_1) to top (z_L)."""
        return self.latent_dims[: self.depth]

    @property
    def mlp_dims(self) -> tuple[int, ...]:
        """MLP widths: [0] connects x and z_1, [i] connects z_i and z_{i+1}."""
        return self.hidden_dims[: self.depth]

    @property
    def generative_mlp_dims(self) -> tuple[int, ...]:
        """Widths of the MLPs of p(z_i | z_{i+1}), i = 1 .. L-1 (see ladder_generative_width)."""
        if self.ladder_generative_width == "code":
            return self.mlp_dims[:-1]
        return self.mlp_dims[1:]

    def to_params(self) -> dict[str, Any]:
        """Flat MLflow params under the bare trial-parameter names (dims in paper notation)."""
        params = self.model_dump()
        params["latent_dims"] = _dims(self.z_dims)
        params["hidden_dims"] = _dims(self.mlp_dims)
        return params


def _dims(dims: tuple[int, ...]) -> str:
    return "-".join(str(d) for d in dims)


def trial_config(values: dict[str, Any]) -> TrialConfig:
    """Build and validate a TrialConfig from a plain dict (YAML, Tune config, --set)."""
    return TrialConfig.model_validate(values)
