"""The training core's math and mechanics: each test fails when the math is wrong."""

from __future__ import annotations

import math

import pytest
import torch

from vaelab.config import TrialConfig
from vaelab.data import Dataset
from vaelab.evaluate import (ElboStats, evaluate_elbo, evaluate_iw, iw_bound_loop)
from vaelab.model import HierarchicalVAE, InitScheme, NoiseTape, gaussian_merge
from vaelab.objectives import (beta_at, gaussian_log_prob, kl_anneal_beta, kl_gaussians,
                               layer_kl, log_weights, training_objective, warmup_beta)
from vaelab.smoothing import OUSmoother, correlated_inputs, ou_operator
from vaelab.hardware import has_fast_bf16, resolve_precision
from vaelab.train import Trainer


def tiny_dataset(n_train: int = 192, n_test: int = 64, dim: int = 16, seed: int = 0) -> Dataset:
    """A small structured binary-image dataset: noisy copies of 4 prototypes."""
    g = torch.Generator().manual_seed(seed)
    protos = (torch.rand(4, dim, generator=g) < 0.5).float() * 0.8 + 0.1
    labels = torch.randint(0, 4, (n_train + n_test,), generator=g)
    x = protos[labels]
    test = (torch.rand(n_test, dim, generator=torch.Generator().manual_seed(1)) < x[n_train:]).float()
    return Dataset("tiny", "bernoulli", (4, dim // 4), x[:n_train], labels[:n_train], test,
                   labels[n_train:])


def tiny_config(**overrides) -> TrialConfig:
    values = dict(dataset="digits", depth=3, latent_dims="6-4-2", hidden_dims="16-12-8",
                  epochs=3, batch_size=32, eval_iw=8, eval_every=1, train_eval_size=64,
                  eval_batch_size=64, precision="fp32")  # exact comparisons: no bf16 rounding
    return TrialConfig(**(values | overrides))


def tiny_model(inference: str = "vae", batch_norm: bool = False, members: int = 1,
               seeds=None) -> HierarchicalVAE:
    model = HierarchicalVAE(x_dim=16, z_dims=(6, 4, 2), mlp_dims=(16, 12, 8), inference=inference,
                            likelihood="bernoulli", batch_norm=batch_norm, activation="leaky_relu",
                            members=members)
    model.reset_parameters(seeds or list(range(members)))
    return model


# ----------------------------------------------------------------------------- merge


def test_merge_equals_precision_weighted_formula():
    g = torch.Generator().manual_seed(0)
    mu_a, mu_b = (torch.randn(1000, generator=g, dtype=torch.float64) for _ in range(2))
    var_a, var_b = (torch.rand(1000, generator=g, dtype=torch.float64) * 3 + 0.05 for _ in range(2))
    mu, logvar = gaussian_merge(mu_a, var_a.log(), mu_b, var_b.log())
    # ICML eq 21 / NIPS eqs 17–18 as printed
    expected_var = 1.0 / (1.0 / var_a + 1.0 / var_b)
    expected_mu = (mu_a / var_a + mu_b / var_b) * expected_var
    torch.testing.assert_close(logvar.exp(), expected_var, rtol=1e-12, atol=0)
    torch.testing.assert_close(mu, expected_mu, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_merge_finite_for_extreme_variances(dtype):
    variances = torch.logspace(-8, 8, 17, dtype=dtype)
    var_a, var_b = torch.meshgrid(variances, variances, indexing="ij")
    mu_a, mu_b = torch.full_like(var_a, 3.0), torch.full_like(var_b, -2.0)
    mu, logvar = gaussian_merge(mu_a, var_a.log(), mu_b, var_b.log())
    assert torch.isfinite(mu).all() and torch.isfinite(logvar).all()
    # the merged variance is below both, and the mean lies between the two means
    assert (logvar <= torch.minimum(var_a, var_b).log() + 1e-6).all()
    assert ((mu <= 3.0 + 1e-5) & (mu >= -2.0 - 1e-5)).all()
    # a near-certain component dominates: σ_a² = 1e-8 against σ_b² = 1e8 gives μ ≈ μ_a
    assert abs(mu[0, -1].item() - 3.0) < 1e-6


# ----------------------------------------------------------------------------- KL


def test_analytic_kl_matches_monte_carlo():
    g = torch.Generator().manual_seed(1)
    q_mu, p_mu = torch.randn(5, generator=g), torch.randn(5, generator=g)
    q_lv, p_lv = torch.randn(5, generator=g) * 0.5, torch.randn(5, generator=g) * 0.5
    n = 400_000
    z = q_mu + torch.exp(0.5 * q_lv) * torch.randn(n, 5, generator=g)
    log_ratio = gaussian_log_prob(z, q_mu, q_lv) - gaussian_log_prob(z, p_mu, p_lv)
    mc, se = log_ratio.mean(0), log_ratio.std(0) / math.sqrt(n)
    analytic = kl_gaussians(q_mu, q_lv, p_mu, p_lv)
    assert ((mc - analytic).abs() < 4 * se + 1e-4).all(), (mc, analytic, se)


def test_layer_kl_estimators_agree_in_expectation():
    """Analytic-given-parents and Monte Carlo per-layer KL have the same expectation."""
    torch.manual_seed(0)
    model = tiny_model("lvae")
    model.eval()
    x = (torch.rand(1, 64, 16) < 0.5).float()
    terms = model(x, NoiseTape.live([torch.Generator().manual_seed(3)]), n_samples=4000)
    for layer in terms.layers:
        analytic, mc = layer_kl(layer, "analytic"), layer_kl(layer, "mc")
        se = (mc - analytic).std() / math.sqrt(mc.numel())
        assert abs((mc - analytic).mean()) < 4 * se + 1e-4


def test_bottom_up_vae_uses_monte_carlo_below_the_top():
    model = tiny_model("vae")
    terms = model((torch.rand(1, 8, 16) < 0.5).float(), NoiseTape.live([torch.Generator()]))
    assert [layer.kl_analytic for layer in terms.layers] == [False, False, True]
    terms = tiny_model("ladder")((torch.rand(1, 8, 16) < 0.5).float(),
                                 NoiseTape.live([torch.Generator()]))
    assert all(layer.kl_analytic for layer in terms.layers)


# ----------------------------------------------------------------------------- bounds


def test_l1_equals_elbo_and_lk_increases_with_k():
    torch.manual_seed(0)
    model = tiny_model("vae")
    model.eval()
    x = (torch.rand(1, 32, 16) < 0.5).float()
    # With the same noise, L_1's log-weight is exactly the one-sample ELBO with MC KL.
    noise = torch.randn(1, model.latent_noise_numel(32, 1))
    terms = model(x, NoiseTape.recorded(noise))
    elbo_mc = terms.log_px - sum(layer_kl(layer, "mc") for layer in terms.layers)
    torch.testing.assert_close(log_weights(terms), elbo_mc)
    # and in expectation L_1 equals the analytic-KL ELBO reported as test_elbo
    gens = [torch.Generator().manual_seed(5)]
    elbo = evaluate_elbo(model, x[0], gens, batch_size=32).elbo
    l1 = torch.stack([evaluate_iw(model, x[0], 1, [torch.Generator().manual_seed(s)], 32)
                      for s in range(200)]).mean()
    assert abs(l1.item() - elbo.item()) < 0.2
    # mean of L_K over repeats does not decrease with K
    means = [torch.stack([evaluate_iw(model, x[0], k, [torch.Generator().manual_seed(100 + r)], 32)
                          for r in range(20)]).mean().item() for k in (1, 5, 50, 500)]
    assert means == sorted(means), means


def test_batched_iw_matches_python_loop():
    torch.manual_seed(0)
    model = tiny_model("lvae", batch_norm=True)
    model.eval()
    x = (torch.rand(40, 16) < 0.5).float()
    batched = evaluate_iw(model, x, 300, [torch.Generator().manual_seed(0)], batch_size=16,
                          max_rows=16 * 64)  # forces several K-chunks per batch
    loop = iw_bound_loop(model, x, 300, [torch.Generator().manual_seed(1)])
    assert abs(batched.item() - loop.item()) < 0.05


def test_iw_training_objective_is_log_mean_exp_of_weights():
    model = tiny_model("vae")
    x = (torch.rand(1, 8, 16) < 0.5).float()
    noise = torch.randn(1, model.latent_noise_numel(8, 4))
    terms = model(x, NoiseTape.recorded(noise), n_samples=4)
    obj = training_objective(terms, batch=8, iw_samples=4, beta=torch.ones(1),
                             free_bits=torch.zeros(1))
    log_w = log_weights(terms).view(4, 8)
    expected = -(torch.logsumexp(log_w, 0) - math.log(4)).mean()
    torch.testing.assert_close(obj.loss[0], expected)


def test_free_bits_clamp_layer_kl_averaged_over_batch():
    model = tiny_model("ladder")
    terms = model((torch.rand(1, 8, 16) < 0.5).float(), NoiseTape.live([torch.Generator()]))
    kls = [layer_kl(layer).mean(-1) for layer in terms.layers]
    lam = 100.0  # above every layer's KL: each layer contributes exactly λ
    obj = training_objective(terms, 8, 1, beta=torch.ones(1), free_bits=torch.tensor([lam]))
    torch.testing.assert_close(obj.loss[0], -(terms.log_px.mean() - lam * len(kls)))


# ----------------------------------------------------------------------------- schedules


def test_warmup_is_linear_per_step():
    assert warmup_beta(0, 100, 2) == 0.0
    assert warmup_beta(50, 100, 2) == 0.25
    assert warmup_beta(150, 100, 2) == 0.75
    assert warmup_beta(200, 100, 2) == 1.0 and warmup_beta(10_000, 100, 2) == 1.0
    assert warmup_beta(0, 100, 0) == 1.0  # off


def test_kl_anneal_holds_then_rises():
    assert kl_anneal_beta(9_999, 10_000, 500_000) == 0.0
    assert kl_anneal_beta(10_000, 10_000, 500_000) == 0.0
    assert kl_anneal_beta(260_000, 10_000, 500_000) == 0.5
    assert kl_anneal_beta(600_000, 10_000, 500_000) == 1.0
    assert beta_at(5, 10, 0, 10, 0) == 0.0 and beta_at(10, 10, 0, 10, 0) == 1.0


def test_trainer_reports_beta_rising_over_warmup_epochs():
    trainer = Trainer([tiny_config(epochs=4, warmup_epochs=2, eval_every=10)], tiny_dataset())
    betas = [r.metrics[0]["beta"] for r in trainer.run()]
    steps = trainer.steps_per_epoch
    assert betas[0] == pytest.approx((steps - 1) / (2 * steps))
    assert betas[2] == betas[3] == 1.0


# ----------------------------------------------------------------------------- OU smoothing


def test_ou_operator_on_hermite_polynomials():
    """U_ρ z = ρ z and U_ρ z² = ρ² z² + 1 − ρ² (h_2 = (z² − 1)/√2 shrinks by ρ²)."""
    g = torch.Generator().manual_seed(0)
    z = torch.linspace(-2, 2, 9).unsqueeze(-1)
    eps = torch.randn(400_000, 9, 1, generator=g)
    rho = 0.6
    torch.testing.assert_close(ou_operator(lambda v: v, z, rho, eps), rho * z, atol=5e-3, rtol=0)
    expected = rho ** 2 * z ** 2 + 1 - rho ** 2
    torch.testing.assert_close(ou_operator(lambda v: v ** 2, z, rho, eps), expected, atol=1e-2, rtol=0)
    # the mean over z ~ N(0,1) is kept: E[U_ρ f] = E[f] = 1 for f = z²
    zs = torch.randn(200_000, 1, generator=g)
    smoothed = ou_operator(lambda v: v ** 2, zs, rho, torch.randn(4, 200_000, 1, generator=g))
    assert abs(smoothed.mean().item() - 1.0) < 0.02


def test_correlated_inputs_interpolate_between_sample_and_posterior():
    z, mu, lv = torch.randn(1, 5, 3), torch.randn(1, 5, 3), torch.randn(1, 5, 3)
    eps = torch.randn(1, 2, 5, 3)
    torch.testing.assert_close(correlated_inputs(z, mu, lv, torch.ones(1), eps)[:, 0], z)
    at_zero = correlated_inputs(z, mu, lv, torch.zeros(1), eps)
    torch.testing.assert_close(at_zero, mu.unsqueeze(1) + torch.exp(0.5 * lv).unsqueeze(1) * eps)


@pytest.mark.parametrize("inference", ["vae", "lvae"])
def test_rho_one_gives_the_unsmoothed_gradient(inference):
    model = tiny_model(inference)
    x = (torch.rand(1, 16, 16) < 0.5).float()
    eps_latent = torch.randn(1, model.latent_noise_numel(16, 1))
    eps_ou = torch.randn(1, model.ou_noise_numel(16, 1, 5))
    smoother = OUSmoother(torch.ones(1), ou_samples=5)

    def grads(smooth: bool) -> list[torch.Tensor]:
        model.zero_grad()
        terms = model(x, NoiseTape.recorded(eps_latent, eps_ou if smooth else None),
                      smoother=smoother if smooth else None)
        training_objective(terms, 16, 1, torch.ones(1), torch.zeros(1)).loss.sum().backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    for a, b in zip(grads(False), grads(True)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_smoothing_lowers_variance_of_generator_mean_across_parents():
    torch.manual_seed(0)
    model = tiny_model("vae")
    model.eval()
    parent = torch.randn(1, 500, 4)
    q_mu, q_lv = torch.zeros_like(parent), torch.zeros_like(parent)  # parent ~ N(0, I)
    tape = NoiseTape.live([torch.Generator().manual_seed(0)])
    plain, _ = model.generative[0](parent)
    smooth, _ = OUSmoother(torch.tensor([0.5]), 50)(model.generative[0], parent, q_mu, q_lv, tape)
    assert smooth.var(dim=1).sum() < 0.5 * plain.var(dim=1).sum()
    assert abs(smooth.mean(dim=1) - plain.mean(dim=1)).max() < 0.1  # mean kept


# ----------------------------------------------------------------------------- diagnostics


def test_active_units_count_on_constructed_case():
    unit_kl = [torch.tensor([[0.5, 0.0, 0.02, 0.009]]), torch.tensor([[0.011, 0.0]])]
    stats = ElboStats(torch.zeros(1), [torch.zeros(1)] * 2, [torch.zeros(1)] * 2, unit_kl)
    assert [a.item() for a in stats.active_units()] == [2, 1]


@pytest.mark.parametrize("inference", ["vae", "ladder", "lvae"])
@pytest.mark.parametrize("estimator", ["analytic", "mc"])
def test_per_unit_kls_sum_to_the_layer_kl(inference, estimator):
    # Per-unit KL (active units, Fig 5 heatmaps) must be the same estimate as kl_layer_{i}:
    # for the bottom-up VAE's lower layers that is Monte Carlo, since p's parent z_{i+1}
    # is drawn after z_i and the closed form given it is biased (objectives.py).
    model = tiny_model(inference, batch_norm=True).eval()
    x = tiny_dataset(n_train=8, n_test=512).test_x
    stats = evaluate_elbo(model, x, [torch.Generator().manual_seed(3)], batch_size=128,
                          estimator=estimator, n_samples=3)
    for i, (units, layer) in enumerate(zip(stats.unit_kl, stats.kl_layers), start=1):
        torch.testing.assert_close(units.sum(-1), layer, rtol=1e-5, atol=1e-5,
                                   msg=f"layer {i}: per-unit sum != layer KL")


def test_ladder_has_separate_topdown_and_lvae_merges_with_generative_prior():
    assert hasattr(tiny_model("ladder"), "topdown") and not hasattr(tiny_model("lvae"), "topdown")
    model = tiny_model("lvae")
    x = (torch.rand(1, 8, 16) < 0.5).float()
    terms = model(x, NoiseTape.live([torch.Generator().manual_seed(0)]))
    upward = model._upward_pass(x)
    for i in range(model.depth - 1):
        p_mu, p_lv = model.generative[i](terms.layers[i + 1].z)
        mu, lv = gaussian_merge(p_mu, p_lv, *upward[i])
        torch.testing.assert_close(terms.layers[i].q_mu, mu)
        torch.testing.assert_close(terms.layers[i].q_logvar, lv)


# ----------------------------------------------------------------------------- trainer


def test_binarization_is_fresh_per_epoch_and_test_set_fixed():
    trainer = Trainer([tiny_config()], tiny_dataset())
    perms = torch.arange(trainer.data.train_x.shape[0]).unsqueeze(0)
    first = trainer.stepper.batch(perms, 0)
    second = trainer.stepper.batch(perms, 0)
    x_a = (first[1] < first[0]).float()
    x_b = (second[1] < second[0]).float()
    assert not torch.equal(x_a, x_b)  # same examples, a fresh Bernoulli sample
    assert abs(x_a.mean() - first[0].mean()) < 0.05
    test_before = trainer.data.test_x.clone()
    list(trainer.run())
    assert torch.equal(trainer.data.test_x, test_before)


def test_checkpoint_round_trip_continues_identically(tmp_path):
    cfg = tiny_config(epochs=4, batch_norm=True, inference="lvae", warmup_epochs=2, eval_every=2)
    straight = [r.metrics[0] for r in Trainer([cfg], tiny_dataset()).run()]
    first = Trainer([cfg], tiny_dataset())
    for report in first.run():
        if report.epoch == 2:
            first.save(tmp_path / "ckpt.pt")
            break
    resumed = Trainer([cfg], tiny_dataset())
    resumed.load(tmp_path / "ckpt.pt")
    continued = [r.metrics[0] for r in resumed.run()]
    assert [m["epoch"] for m in continued] == [3.0, 4.0]
    for a, b in zip(straight[2:], continued):
        for key in ("train_loss", "test_elbo", "test_ll_iw", "beta", "kl_total"):
            if key in a:
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-5), key


def test_cohort_members_equal_solo_runs():
    common = dict(batch_norm=True, inference="lvae")  # BN statistics must stay per member
    configs = [tiny_config(seed=1, rho=0.8, **common), tiny_config(seed=2, warmup_epochs=1, **common),
               tiny_config(seed=3, free_bits=0.5, **common)]
    cohort = list(Trainer(configs, tiny_dataset()).run())[-1]
    for s, cfg in enumerate(configs):
        solo = list(Trainer([cfg], tiny_dataset()).run())[-1]
        for key in ("train_loss", "test_elbo", "test_ll_iw", "kl_total"):
            assert cohort.metrics[s][key] == pytest.approx(solo.metrics[0][key], rel=1e-4, abs=1e-3), key


def test_huge_learning_rate_is_marked_diverged():
    trainer = Trainer([tiny_config(lr=1e12, epochs=5)], tiny_dataset())
    reports = list(trainer.run())
    assert reports[-1].status == ["diverged"]
    assert not math.isfinite(reports[-1].metrics[0]["train_loss"])


def test_metrics_have_spec_names_and_artifacts_export(tmp_path):
    cfg = tiny_config(epochs=2)
    trainer = Trainer([cfg], tiny_dataset())
    last = list(trainer.run())[-1].metrics[0]
    for name in ["train_elbo", "test_elbo", "test_ll_iw", "kl_total", "active_units", "beta",
                 "epoch", "steps_per_s", "wall_time_s"] + [
            f"{p}_{i}" for p in ("kl_layer", "active_units_layer", "kl_std_normal_layer")
            for i in (1, 2, 3)]:
        assert name in last and math.isfinite(last[name]), name
    assert last["test_ll_iw"] >= last["test_elbo"] - 0.5
    paths = trainer.export_artifacts(0, tmp_path)
    assert {p.name for p in paths} == {"model.pt", "unit_kl.json", "latents.npz", "prior_samples.npz"}
    # the exported model fine-tunes a new trial and starts from the same weights
    tuned = Trainer([cfg.model_copy(update={"init_from": str(tmp_path / "model.pt")})], tiny_dataset())
    for key, value in trainer.member_state_dict(0).items():
        if "population" not in key and "running" not in key:
            torch.testing.assert_close(tuned.model.state_dict()[key], value)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_training_matches_cpu_statistically():
    cpu = list(Trainer([tiny_config(device="cpu", epochs=3)], tiny_dataset()).run())[-1].metrics[0]
    gpu = list(Trainer([tiny_config(device="cuda", epochs=3, compile="auto")], tiny_dataset()).run())[-1].metrics[0]
    assert abs(cpu["test_elbo"] - gpu["test_elbo"]) < 2.0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_compiled_bf16_training_stays_within_tolerance_of_fp32():
    trainer = Trainer([tiny_config(device="cuda", epochs=3, compile="auto", precision="bf16",
                                   batch_norm=True, inference="lvae")], tiny_dataset())
    reports = list(trainer.run())
    assert trainer.bf16 and all(r.metrics[0]["bf16_elbo_gap"] < 0.1 for r in reports)
    assert reports[-1].metrics[0]["peak_mem_mb"] > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_training_step_never_synchronises_with_the_host():
    trainer = Trainer([tiny_config(device="cuda", compile="off", batch_norm=True, inference="lvae",
                                   grad_clip=4.0)], tiny_dataset())
    perms = torch.arange(192, device="cuda").unsqueeze(0)
    betas = torch.linspace(0, 1, 4, device="cuda").unsqueeze(1)  # (steps, S)
    trainer.stepper(trainer.stepper.batch(perms, 0), betas[0])  # the optimiser creates its state
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any synchronising call raises
    try:
        for k in range(1, 4):
            trainer.stepper(trainer.stepper.batch(perms, k), betas[k])
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.slow
def test_compiled_loss_matches_eager():
    """torch.compile of the step's loss (the GPU default) computes the same objective."""
    eager = Trainer([tiny_config(batch_norm=True, inference="lvae", compile="off")], tiny_dataset())
    compiled = Trainer([tiny_config(batch_norm=True, inference="lvae", compile="compile")], tiny_dataset())
    batch = eager.stepper.batch(torch.arange(192).unsqueeze(0), 0)
    torch.testing.assert_close(compiled.stepper.loss_fn(*batch, torch.ones(1)).loss,
                               eager.stepper.loss_fn(*batch, torch.ones(1)).loss, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- precision


def test_bf16_step_runs_matmuls_in_bf16_and_keeps_the_loss_near_fp32():
    cfg = tiny_config(batch_norm=True, inference="lvae", compile="off")
    fp32 = Trainer([cfg], tiny_dataset())
    bf16 = Trainer([cfg.model_copy(update={"precision": "bf16"})], tiny_dataset())
    batch = fp32.stepper.batch(torch.arange(192).unsqueeze(0), 0)
    exact = fp32.stepper.loss_fn(*batch, torch.ones(1)).loss
    low = bf16.stepper.loss_fn(*batch, torch.ones(1)).loss
    assert low.dtype == torch.float32  # the objective itself is fp32
    assert not torch.equal(low, exact)  # bf16 really ran
    torch.testing.assert_close(low, exact, rtol=2e-2, atol=0.2)


def test_bf16_training_reports_its_gap_to_fp32_and_stays_within_tolerance():
    base = tiny_config(batch_norm=True, inference="lvae", epochs=4, eval_every=2)
    fp32 = list(Trainer([base], tiny_dataset()).run())[-1].metrics[0]
    trainer = Trainer([base.model_copy(update={"precision": "bf16"})], tiny_dataset())
    reports = list(trainer.run())
    gaps = [r.metrics[0]["bf16_elbo_gap"] for r in reports if r.evaluated]
    assert len(gaps) == 2 and all(0 < g < base.precision_tolerance for g in gaps)
    assert trainer.bf16  # never fell back
    # metrics are computed in fp32 either way; the trained models agree closely
    assert reports[-1].metrics[0]["test_elbo"] == pytest.approx(fp32["test_elbo"], abs=1.0)


def test_bf16_falls_back_to_fp32_past_its_tolerance(tmp_path):
    cfg = tiny_config(epochs=3, eval_every=1, precision="bf16", precision_tolerance=1e-9)
    trainer = Trainer([cfg], tiny_dataset())
    with pytest.warns(UserWarning, match="training on in fp32"):
        first = next(trainer.run())
    assert first.metrics[0]["bf16_elbo_gap"] > 1e-9 and not trainer.bf16
    trainer.save(tmp_path / "ckpt.pt")
    restarted = Trainer([cfg], tiny_dataset())
    restarted.load(tmp_path / "ckpt.pt")
    assert not restarted.bf16  # the fallback survives a restart


# ----------------------------------------------------------------------------- the original code's options


def test_bn_heads_normalise_latent_heads_but_never_the_output():
    plain = HierarchicalVAE(x_dim=16, z_dims=(6, 4), mlp_dims=(16, 12), inference="ladder",
                            likelihood="bernoulli", batch_norm=True, activation="leaky_relu")
    heads = HierarchicalVAE(x_dim=16, z_dims=(6, 4), mlp_dims=(16, 12), inference="ladder",
                            likelihood="bernoulli", batch_norm=True, activation="leaky_relu",
                            bn_heads=True)
    # 2 latent heads per conditional (μ, σ²): upward 2, topdown 1, generative 1 -> 4 heads
    assert len(heads.batch_norms()) - len(plain.batch_norms()) == 2 * 4
    assert all(len(h.norms) == 2 for h in heads.upward_heads)
    assert not any(isinstance(m, torch.nn.Module) and "decoder_mean" in name and "norm" in name
                   for name, m in heads.named_modules())
    with pytest.raises(ValueError, match="bn_heads"):
        TrialConfig(bn_heads=True, batch_norm=False)


def test_glorot_init_matches_the_original_code():
    model = HierarchicalVAE(x_dim=784, z_dims=(64, 32), mlp_dims=(512, 256), inference="vae",
                            likelihood="bernoulli", batch_norm=False, activation="leaky_relu",
                            init=InitScheme("glorot", var_bias=1.0))
    model.reset_parameters([0])
    hidden = model.encoder[0].mlp.linears[0]  # 784 -> 512, gain sqrt(2)
    head = model.encoder[0].head
    expected = math.sqrt(2.0) * math.sqrt(2.0 / (784 + 512))
    assert abs(hidden.weight.std().item() / expected - 1) < 0.02
    assert abs(head.mean.weight.std().item() / math.sqrt(2.0 / (512 + 64)) - 1) < 0.05
    assert torch.all(head.var.bias == 1.0) and torch.all(head.mean.bias == 0.0)
    assert torch.all(hidden.bias == 0.0)


def test_precision_auto_resolves_by_hardware():
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    assert resolve_precision("auto", cpu) == ("bf16" if has_fast_bf16(cpu) else "fp32")
    trainer = Trainer([tiny_config(precision="auto")], tiny_dataset())
    assert trainer.bf16 == has_fast_bf16(cpu)


def test_elementwise_gradient_clip_bounds_every_gradient():
    cfg = tiny_config(grad_clip_value=1e-3, lr=1e-3, epochs=1)
    trainer = Trainer([cfg], tiny_dataset())
    batch = trainer.stepper.batch(torch.arange(trainer.data.train_x.shape[0]).unsqueeze(0), 0)
    trainer.stepper(batch, torch.ones(1))
    grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
    assert max(g.abs().max().item() for g in grads) <= 1e-3 * (1 + 1e-6)  # fp32 rounding of 1e-3


@pytest.mark.parametrize("members", [1, 3])
def test_gradient_norm_clip_is_per_member(members):
    trainer = Trainer([tiny_config(seed=s, grad_clip=0.0, grad_clip_value=0.0) for s in range(members)],
                      tiny_dataset())
    g = torch.Generator().manual_seed(0)
    for p in trainer.model.parameters():
        p.grad = torch.randn(p.shape, generator=g) * 10
    before = [p.grad.clone() for p in trainer.model.parameters()]
    trainer.stepper.clip_gradients(1.0)
    for s in range(members):
        norm = torch.sqrt(sum(p.grad[s].square().sum() for p in trainer.model.parameters()))
        old = torch.sqrt(sum(b[s].square().sum() for b in before))
        assert abs(norm.item() - 1.0) < 1e-4 and old > 1.0


@pytest.mark.parametrize("members", [1, 3])
def test_compiled_update_math_equals_the_eager_update(members):
    """clip_and_adam (what the compiled CPU step runs) against per-member norm clip,
    elementwise clip and fused Adam, over Adam's own state: steps, moments and weights agree,
    so checkpoints and a fallback move freely between the two forms."""
    configs = [tiny_config(seed=s, batch_norm=True, inference="lvae", grad_clip=0.5,
                           grad_clip_value=0.05) for s in range(members)]
    eager, fused = Trainer(configs, tiny_dataset()), Trainer(configs, tiny_dataset())
    perms = torch.arange(192).expand(members, 192)
    for k in range(4):
        for trainer in (eager, fused):
            trainer.stepper.optimizer.zero_grad(set_to_none=True)
            trainer.stepper.loss(*trainer.stepper.batch(perms, k), torch.ones(members)).loss.sum().backward()
        eager.stepper.eager_update()
        fused.stepper.compiled_update()  # clip_and_adam run eagerly: the same graph's math
    for p, q in zip(eager.model.parameters(), fused.model.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)
    a, b = eager.stepper.optimizer.state_dict()["state"], fused.stepper.optimizer.state_dict()["state"]
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].keys() == b[key].keys() and float(b[key]["step"]) == 4.0
        for name in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(b[key][name], a[key][name], rtol=1e-5, atol=1e-7)


def test_compile_auto_trains_eagerly_when_compilation_fails(monkeypatch):
    """`compile: auto` never costs a trial: a compiler that fails on this machine gives one
    warning per compiled function and the eager step's exact results."""
    import vaelab.step as step

    def broken(fn, **kwargs):
        def fails(*args, **kw):
            raise RuntimeError("no C++ compiler")
        return fails

    cfg = tiny_config(batch_norm=True, inference="lvae", epochs=2)
    eager = list(Trainer([cfg.model_copy(update={"compile": "off"})], tiny_dataset()).run())[-1]
    monkeypatch.setattr(step, "CPU_COMPILE_MIN_STEPS", 0)  # auto compiles this short trial
    monkeypatch.setattr(torch, "compile", broken)
    trainer = Trainer([cfg.model_copy(update={"compile": "auto"})], tiny_dataset())
    with pytest.warns(UserWarning, match="torch.compile failed") as caught:
        reports = list(trainer.run())
    assert len([w for w in caught if "torch.compile failed" in str(w.message)]) == 2  # loss, update
    assert trainer.stepper.loss_fn == trainer.stepper.loss
    assert trainer.stepper.update_fn == trainer.stepper.eager_update
    for key in ("train_loss", "test_elbo", "test_ll_iw"):
        assert reports[-1].metrics[0][key] == eager.metrics[0][key], key


def test_more_draws_per_image_shrink_the_monte_carlo_noise_of_per_unit_kl():
    model = tiny_model("vae", batch_norm=True).eval()
    x = tiny_dataset(n_train=8, n_test=256).test_x
    def spread(draws):
        runs = torch.stack([torch.cat([u[0] for u in evaluate_elbo(
            model, x, [torch.Generator().manual_seed(seed)], 256, n_samples=draws).unit_kl])
            for seed in range(6)])
        return runs[:, :10].std(0).max()  # layers 1-2 (Monte Carlo) of the 6-4-2 model
    assert spread(16) < 0.5 * spread(1)
