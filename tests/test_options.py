"""The original LVAE code's choices as trial parameters: `leaky_slope` (Lasagne's 0.01),
`ladder_generative_width` (the probabilistic ladder's wider p(z_i | z_{i+1}) MLPs),
`kl_estimator: mc` and `lr` 2e-3. Each does what it says, the defaults build the model as
before, and the `ladder_options` study expands as intended."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from test_core import tiny_config, tiny_dataset
from vaelab.config import PAPER_LEAKY_SLOPE, TrialConfig
from vaelab.model import DEFAULT_LEAKY_SLOPE, MLP, NoiseTape
from vaelab.objectives import kl_gaussians, layer_log_ratio
from vaelab.studies import expand_trials, group_cohorts, load_study
from vaelab.train import Trainer, build_model, check_cohort

REPO = Path(__file__).resolve().parents[1]
MNIST_X = 784
PAPER_Z, PAPER_H = (64, 32, 16, 8, 4), (512, 256, 128, 64, 32)


def paper_model(**overrides):
    """A one-member 5-layer MNIST model with batch norm, as a study trial builds it."""
    config = TrialConfig(**({"batch_norm": True} | overrides))
    return build_model(config, MNIST_X, "bernoulli", members=1)


def n_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def conditional_parameters(in_dim: int, width: int, out_dim: int, batch_norm: bool) -> int:
    """One Gaussian conditional: MLP in->w->w (+ BN scale and shift per hidden layer), then
    the μ and σ² heads w->out."""
    mlp = in_dim * width + width + width * width + width + (4 * width if batch_norm else 0)
    return mlp + 2 * (width * out_dim + out_dim)


# ----------------------------------------------------------------------------- defaults


@pytest.mark.parametrize("inference, expected", [("vae", 1_710_584), ("ladder", 1_855_144),
                                                 ("lvae", 1_862_904)])
def test_defaults_build_the_same_model_as_before(inference, expected):
    # parameter counts of the 5-layer BN models before these options existed
    model = paper_model(inference=inference)
    assert n_parameters(model) == expected
    for i, conditional in enumerate(model.generative):  # p(z_i | z_{i+1}): hidden_dims[i]
        assert conditional.mlp.linears[0].weight.shape == (1, PAPER_Z[i + 1], PAPER_H[i + 1])
    assert PAPER_LEAKY_SLOPE == DEFAULT_LEAKY_SLOPE == 0.1
    defaults = TrialConfig()
    assert (defaults.leaky_slope, defaults.ladder_generative_width) == (0.1, "paper")


# ----------------------------------------------------------------------------- leaky_slope


@pytest.mark.parametrize("slope", [0.01, 0.1])
def test_leaky_slope_is_the_negative_slope_of_every_mlp(slope):
    model = paper_model(inference="ladder", leaky_slope=slope)
    x = torch.tensor([-2.0, -0.5, 0.0, 3.0])
    mlps = [m for m in model.modules() if isinstance(m, MLP)]
    assert len(mlps) == 5 + 4 + 4 + 1  # upward, top-down, generative, p(x|z_1)
    for mlp in mlps:
        torch.testing.assert_close(mlp.activation(x), torch.tensor([-2 * slope, -0.5 * slope, 0.0, 3.0]))


def test_leaky_slope_needs_the_leaky_activation():
    with pytest.raises(ValueError, match="leaky_slope=0.01 is the slope of activation 'leaky_relu'"):
        TrialConfig(leaky_slope=0.01, activation="tanh")
    with pytest.raises(ValueError, match="activation is 'tanh'"):  # tanh by likelihood
        TrialConfig(leaky_slope=0.01, likelihood="gaussian")
    with pytest.raises(ValueError, match="'norb' trains with 'tanh'"):  # tanh by dataset
        build_model(TrialConfig(dataset="norb", leaky_slope=0.01), 1024, "gaussian", members=1)
    assert TrialConfig(leaky_slope=0.01).leaky_slope == 0.01  # activation by the data: leaky_relu
    with pytest.raises(ValueError, match="less than 1"):
        TrialConfig(leaky_slope=1.0)


# ----------------------------------------------------------------------------- generative width


def test_code_width_widens_only_the_ladders_generative_mlps():
    paper, code = paper_model(inference="ladder"), paper_model(inference="ladder",
                                                               ladder_generative_width="code")
    for i, conditional in enumerate(code.generative):  # p(z_i | z_{i+1}): hidden_dims[i - 1]
        assert conditional.mlp.linears[0].weight.shape == (1, PAPER_Z[i + 1], PAPER_H[i])
        assert conditional.head.mean.weight.shape == (1, PAPER_H[i], PAPER_Z[i])
    for name in ("upward", "upward_heads", "topdown"):  # the inference model is unchanged
        shapes = [[p.shape for p in getattr(m, name).parameters()] for m in (paper, code)]
        assert shapes[0] == shapes[1], name
    extra = sum(conditional_parameters(PAPER_Z[i + 1], PAPER_H[i], PAPER_Z[i], True)
                - conditional_parameters(PAPER_Z[i + 1], PAPER_H[i + 1], PAPER_Z[i], True)
                for i in range(4))
    assert extra == 318_400
    assert n_parameters(code) - n_parameters(paper) == extra


@pytest.mark.parametrize("inference", ["vae", "lvae"])
def test_code_width_is_refused_outside_the_probabilistic_ladder(inference):
    with pytest.raises(ValueError, match="inference='ladder'"):
        TrialConfig(inference=inference, ladder_generative_width="code")


# ----------------------------------------------------------------------------- kl_estimator, lr


def test_mc_kl_trains_on_the_one_sample_log_ratio():
    cfg = tiny_config(inference="ladder", batch_norm=True, kl_estimator="mc")
    trainer = Trainer([cfg], tiny_dataset())
    step = trainer.stepper
    x_real, uniform, noise, _ = step.batch(step.permutations(), 0)
    objective = step.loss(x_real, uniform, noise, None, torch.ones(1))
    terms = trainer.model((uniform < x_real).float(), NoiseTape.recorded(noise), 1)
    for kl, layer in zip(objective.kl_layers, terms.layers):
        torch.testing.assert_close(kl, layer_log_ratio(layer).mean(-1))
        closed_form = kl_gaussians(layer.q_mu, layer.q_logvar, layer.p_mu, layer.p_logvar)
        assert not torch.allclose(kl, closed_form.sum(-1).mean(-1))


def test_lr_sets_the_step_size_of_adam():
    # Adam's first step moves each parameter by lr * |g| / (|g| + eps) <= lr, close to lr
    # where |g| >> eps: the largest move tells 2e-3 from the paper's 1e-3
    trainer = Trainer([tiny_config(lr=2e-3, grad_clip=0.0, grad_clip_value=0.0, compile="off")],
                      tiny_dataset())
    step = trainer.stepper
    before = [p.detach().clone() for p in step.params]
    step(step.batch(step.permutations(), 0), torch.ones(1))
    largest = max((p - b).abs().max().item() for p, b in zip(step.params, before))
    assert step.optimizer.param_groups[0]["lr"] == 2e-3
    assert 1.5e-3 < largest <= 2e-3 * (1 + 1e-5)


# ----------------------------------------------------------------------------- training, cohorts


OPTIONS = {"leaky_0.01": {"leaky_slope": 0.01}, "wide_p": {"ladder_generative_width": "code"},
           "mc_kl": {"kl_estimator": "mc"}, "lr_2e-3": {"lr": 2e-3}}


@pytest.mark.parametrize("option, inference", [(option, inference) for option in OPTIONS
                                               for inference in ("vae", "ladder")
                                               if option != "wide_p" or inference == "ladder"])
def test_an_epoch_trains_with_each_option_on_cpu(option, inference):
    cfg = tiny_config(inference=inference, batch_norm=True, warmup_epochs=1, epochs=1,
                      device="cpu", **OPTIONS[option])
    trainer = Trainer([cfg], tiny_dataset())
    start = [p.detach().clone() for p in trainer.model.parameters()]
    report = next(trainer.run())
    assert report.status == ["running"]
    for key in ("train_loss", "test_elbo", "test_ll_iw", "kl_total"):
        assert math.isfinite(report.metrics[0][key]), key
    assert any(not torch.equal(p, s) for p, s in zip(trainer.model.parameters(), start))


@pytest.mark.parametrize("option", list(OPTIONS))
def test_options_are_logged_and_never_mixed_in_one_cohort(option):
    base = tiny_config(inference="ladder")
    other = tiny_config(inference="ladder", seed=1, **OPTIONS[option])
    assert {k: other.to_params()[k] for k in OPTIONS[option]} == OPTIONS[option]
    with pytest.raises(ValueError, match="cohort members differ in"):
        check_cohort([base, other])


def test_ladder_options_study_expands_into_one_cohort_per_cell():
    study = load_study(REPO / "ablations" / "ladder_options.yaml")
    trials = expand_trials(study, "screen")
    cells = {(t.variant, t.axes["options"]) for t in trials}
    assert len(trials) == 18 and len(cells) == 9
    assert ("VAE+BN+WU", "wide_p") not in cells and ("LADDER+BN+WU", "wide_p") in cells
    for trial in trials:
        c = trial.config
        assert (c["train_subset"], c["epochs"], c["warmup_epochs"], c["eval_iw"], c["eval_every"],
                c["depth"]) == (0, 20, 2, 200, 5, 5)
    cohorts = group_cohorts(trials, study.cohort_size)
    assert len(cohorts) == 9
    assert all(sorted(t.seed for t in cohort) == [0, 1] for cohort in cohorts)
