"""Claims tested over seeds, what drives the metric, tables.tex and `vaelab claims`.

- A study written into a real SQLite MLflow store (MlflowClient, the layout of
  docs/ARCHITECTURE.md) with a planted effect (LVAE+BN+WU beats VAE+BN by 2 nats), a null
  one (VAE+BN vs VAE) and a failed and a diverged trial: the report and `vaelab claims`
  find the planted effect, do not call the null significant, and name what was left out.
- Over many seeds of the generator the null is called significant at about the stated
  rate α (paired t), at most α (exact permutation, Holm across cells), and the planted
  effect is found nearly always.
- `vaelab claims --from` on the committed reproduction (reports/lvae_icml_mnist).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from report_fixtures import T0, VARIANTS, _parent_run
from typer.testing import CliRunner

from vaelab.cli import app
from vaelab.config import TrialConfig
from vaelab.report.build import build_report
from vaelab.report.claims import evaluate_claim, evaluate_claims, p_text
from vaelab.report.drivers import parallel_coordinates, what_drives
from vaelab.report.spec import ClaimSpec

REPO = Path(__file__).resolve().parents[1]
STUDY = "claims-mini"
SEEDS = range(6)
DEPTHS = (2, 3)
PLANTED = {"VAE": 0.0, "VAE+BN": 0.0, "LVAE+BN+WU": 2.0}  # VAE+BN vs VAE: no effect
runner = CliRunner()

CLAIMS = [
    {"name": "planted", "statement": "LVAE+BN+WU > VAE+BN at every depth", "source": "test: planted +2 nats",
     "metric": "test_ll_iw", "a": "LVAE+BN+WU", "b": ["VAE+BN"], "per": "latent_dims"},
    {"name": "null", "statement": "VAE+BN > VAE at every depth", "source": "test: no effect",
     "metric": "test_ll_iw", "a": "VAE+BN", "b": "VAE", "per": "latent_dims"},
    {"name": "reversed", "statement": "VAE > LVAE+BN+WU at depth 2", "source": "test: the planted effect reversed",
     "metric": "test_ll_iw", "a": "VAE", "b": ["LVAE+BN+WU"], "where": {"depth": 2}},
    {"name": "one_seed", "statement": "LVAE+BN+WU > VAE+BN with seed 0 only", "source": "test: n = 1",
     "metric": "test_ll_iw", "a": "LVAE+BN+WU", "b": ["VAE+BN"], "where": {"seed": 0, "depth": 2}},
    {"name": "kl_low", "statement": "kl_total < 50 nats everywhere", "source": "test: threshold form",
     "metric": "kl_total", "threshold": 50.0, "direction": "less", "per": "depth"},
]
REPORT = {
    "alpha": 0.05,
    "claims": CLAIMS,
    "tables": [{"name": "ll", "rows": "latent_dims", "columns": "variant", "value": "test_ll_iw",
                "paper": {"source": "lvae-icml", "table": "table1", "dataset": "mnist", "metric": "test_ll_iw5000"}}],
    "figures": ["ll_vs_depth"],
}


def _test_ll(variant: str, depth: int, seed: int, rng: np.random.Generator) -> float:
    seed_share = [0.9, -1.3, 0.4, 1.8, -0.6, 0.2][seed]  # shared by every model of that seed: pairing removes it
    return -100.0 + depth + PLANTED[variant] + seed_share + rng.normal(0.0, 0.3)


def _trial(client: MlflowClient, experiment: str, parent: str, trial_id: str, variant: str, depth: int,
           seed: int, status: str, metrics: dict[str, float], start: int) -> None:
    config = TrialConfig(dataset="digits", depth=depth, seed=seed, epochs=2, eval_every=1, eval_iw=10, **VARIANTS[variant])
    tags = {"mlflow.parentRunId": parent, "vaelab.role": "trial", "vaelab.study": STUDY, "vaelab.trial_id": trial_id,
            "vaelab.variant": variant, "vaelab.status": status}
    run_id = client.create_run(experiment, start_time=start, tags=tags, run_name=trial_id).info.run_id
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in config.to_params().items()],
                     metrics=[Metric(k, v, start + 1, 2) for k, v in metrics.items()])
    client.set_terminated(run_id, "FAILED" if status == "failed" else "FINISHED", end_time=start + 10)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("claims-store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment(STUDY, artifact_location=(root / "artifacts").as_uri())
    parent = _parent_run(client, experiment, root, T0, report=REPORT, study=STUDY)
    rng = np.random.default_rng(7)
    k = 0
    for variant in VARIANTS:
        for depth in DEPTHS:
            for seed in SEEDS:
                metrics = {"test_ll_iw": _test_ll(variant, depth, seed, rng), "kl_total": 20.0 + rng.normal(0, 1.0)}
                _trial(client, experiment, parent, f"t{k}", variant, depth, seed, "finished", metrics, T0 + 100 * k)
                k += 1
    _trial(client, experiment, parent, "t-failed", "VAE+BN", 2, 6, "failed", {}, T0 + 100 * k)
    _trial(client, experiment, parent, "t-diverged", "LVAE+BN+WU", 3, 6, "diverged",
           {"test_ll_iw": float("nan"), "kl_total": float("nan")}, T0 + 100 * k + 50)
    return uri


@pytest.fixture(scope="module")
def report(store: str, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("claims-report") / STUDY
    return build_report(STUDY, store, out, cache_dir=out.parent / "cache", workers=2)


def _claims(report) -> pd.DataFrame:
    return pq.read_table(report.out_dir / "claims.parquet").to_pandas()


def test_planted_effect_holds_and_null_is_not_significant(report) -> None:
    rows = _claims(report)
    verdict = rows.groupby("claim")["claim_verdict"].first().to_dict()
    assert verdict == {"planted": "holds", "null": "inconclusive", "reversed": "contradicted",
                       "one_seed": "inconclusive", "kl_low": "holds"}
    planted = rows[rows["claim"] == "planted"]
    assert list(planted["cell"]) == ["latent_dims=64-32", "latent_dims=64-32-16"]
    assert planted["paired"].all() and (planted["n"] == 6).all()  # the extra seed-6 trials did not finish
    assert ((planted["effect"] - 2.0).abs() < 0.5).all()
    assert (planted["ci_low"] > 0).all() and (planted["ci_low"] < planted["effect"]).all()
    assert (planted["p"] < 0.05).all() and (planted["p_holm"] >= planted["p"]).all()
    assert set(planted["method"]) == {"paired t-test on the per-seed differences (scipy.stats.ttest_1samp)"}
    null = rows[rows["claim"] == "null"]
    assert (null["verdict"] == "inconclusive").all() and (null["p"] >= 0.05).all()
    assert (null["ci_low"] < 0).all() and (null["ci_high"] > 0).all()
    one = rows[rows["claim"] == "one_seed"].iloc[0]
    assert (one["n"], one["reason"], one["verdict"]) == (1, "one seed", "inconclusive")
    kl = rows[rows["claim"] == "kl_low"]
    assert kl["paired"].isna().all() and list(kl["mean_b"]) == [50.0, 50.0]


def _holm_by_hand(ps: dict[str, float]) -> dict[str, float]:
    """Holm's step-down: the k-th smallest p times (m − k), kept monotone, capped at 1."""
    ordered = sorted(ps.items(), key=lambda kv: kv[1])
    out, running = {}, 0.0
    for k, (name, p) in enumerate(ordered):
        running = max(running, min(1.0, (len(ordered) - k) * p))
        out[name] = running
    return out


def test_the_studys_claims_are_corrected_together_with_holm(report, store: str) -> None:
    rows = _claims(report).groupby("claim").first()
    tested = rows[rows["claim_p"].notna()]
    assert set(tested.index) == {"planted", "null", "reversed", "kl_low"}  # one_seed ran no test
    assert rows.loc["one_seed", "claim_verdict_study"] == "inconclusive" and pd.isna(rows.loc["one_seed", "claim_p_study"])
    # a claim's p decides its own verdict at α ...
    assert ((tested["claim_p"] < 0.05) == (tested["claim_verdict"] != "inconclusive")).all()
    # ... and the study-wide p is Holm over the four tested claims
    expected = _holm_by_hand(tested["claim_p"].to_dict())
    assert tested["claim_p_study"].to_dict() == pytest.approx(expected, rel=1e-12)
    # combine: all holds when every cell holds (intersection-union): at its largest p
    assert rows.loc["planted", "claim_p"] == pytest.approx(_claims(report).query("claim == 'planted'")["p"].max())
    for name, row in tested.iterrows():
        study = row["claim_verdict"] if row["claim_p_study"] < 0.05 else "inconclusive"
        assert row["claim_verdict_study"] == study, name
    counts = rows["claim_verdict_study"].value_counts().to_dict()
    headline = (f"5 claims tested at α = 0.05, each on its own: 2 holds, 1 contradicted, 2 inconclusive; "
                f"with Holm across the 4 tested claims: {counts.get('holds', 0)} holds, "
                f"{counts.get('contradicted', 0)} contradicted, {counts.get('inconclusive', 0)} inconclusive")
    assert headline in report.tables_md.read_text() and headline in report.index_html.read_text()
    result = runner.invoke(app, ["claims", STUDY, "--tracking-uri", store])
    assert result.exit_code == 0 and headline in result.output
    p_study = tested.loc["planted", "claim_p_study"]
    assert f"across the study: holds (Holm-adjusted p = {p_text(p_study)} < α=0.05 across 4 claims" in result.output
    assert "across the study: not tested, not counted" in result.output  # one_seed


def test_paired_test_matches_scipy_on_the_logged_values(report, store: str) -> None:
    from scipy import stats

    trials = pq.read_table(report.trials_parquet).to_pandas()
    finished = trials[(trials["status"] == "finished") & (trials["depth"] == 2)]
    a = finished[finished["variant"] == "LVAE+BN+WU"].sort_values("seed")["test_ll_iw"].to_numpy()
    b = finished[finished["variant"] == "VAE+BN"].sort_values("seed")["test_ll_iw"].to_numpy()
    expected = stats.ttest_rel(a, b)
    row = _claims(report).query("claim == 'planted' and cell == 'latent_dims=64-32'").iloc[0]
    assert row["p"] == pytest.approx(expected.pvalue, rel=1e-9)
    low, high = expected.confidence_interval(0.95)
    assert (row["ci_low"], row["ci_high"]) == (pytest.approx(low), pytest.approx(high))


def test_left_out_trials_are_named(report) -> None:
    text = report.tables_md.read_text()
    assert "left out: 1 trial(s) diverged, not tested: t-diverged" in text
    assert "left out: 1 trial(s) failed, not tested: t-failed" in text


def test_claims_section_sits_at_the_top_of_tables_md_and_index_html(report) -> None:
    text = report.tables_md.read_text()
    assert text.index("## Claims") < text.index("## ll") < text.index("## What drives test_ll_iw")
    assert "### planted: **holds**" in text and "### reversed: **contradicted**" in text
    html = report.index_html.read_text()
    assert html.index('id="claims"') < html.index('class="ablation"')
    assert html.count('class="claim"') == len(CLAIMS) and 'data-verdict="holds"' in html
    assert 'href="claims.parquet"' in html and 'href="tables.tex"' in html


def test_grid_marginal_effects(report) -> None:
    text = report.tables_md.read_text()
    assert "marginal mean per level" in text
    section = text[text.index("## What drives test_ll_iw"):]
    assert "| variant | LVAE+BN+WU | 12 |" in section  # the diverged trial is not among the 12


def test_tables_tex_compiles(report, tmp_path: Path) -> None:
    tex = (report.out_dir / "tables.tex").read_text()
    assert "\\toprule" in tex and "\\bottomrule" in tex and "\\mathbf{" in tex
    assert "paper" in tex and "LVAE+BN+WU" in tex and "\\_" in tex
    pdflatex = shutil.which("pdflatex")
    if pdflatex is None:
        pytest.skip("pdflatex is not installed")
    shutil.copy(report.out_dir / "tables.tex", tmp_path / "tables.tex")
    (tmp_path / "doc.tex").write_text(
        "\\documentclass{article}\n\\usepackage[utf8]{inputenc}\n\\usepackage{booktabs}\n"
        "\\usepackage[margin=1cm,landscape]{geometry}\n\\begin{document}\n\\input{tables.tex}\n\\end{document}\n"
    )
    done = subprocess.run([pdflatex, "-interaction=nonstopmode", "-halt-on-error", "doc.tex"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:]
    assert (tmp_path / "doc.pdf").stat().st_size > 1000


def test_cli_claims_from_mlflow_and_strict(store: str) -> None:
    result = runner.invoke(app, ["claims", STUDY, "--tracking-uri", store])
    assert result.exit_code == 0, result.output
    assert "[holds] planted:" in result.output and "[contradicted] reversed:" in result.output
    assert "paired n=6" in result.output and "inconclusive (one seed)" in result.output
    strict = runner.invoke(app, ["claims", STUDY, "--tracking-uri", store, "--strict"])
    assert strict.exit_code == 1
    assert "1 claim(s) contradicted: reversed" in strict.output


def test_cli_claims_on_the_committed_reproduction() -> None:
    folder = REPO / "reports" / "lvae_icml_mnist"
    result = runner.invoke(app, ["claims", "lvae_icml_mnist", "--from", str(folder),
                                 "--study-file", str(REPO / "ablations" / "lvae_icml_mnist.yaml")])
    assert result.exit_code == 0, result.output
    assert "38 trials: 38 finished" in result.output
    assert "[holds] bn_wu_beats_vae:" in result.output and "paired n=2" in result.output


def test_cli_claims_errors_exit_2(tmp_path: Path) -> None:
    missing = runner.invoke(app, ["claims", "lvae_icml_mnist", "--from", str(tmp_path)])
    assert missing.exit_code == 2 and "no trials.parquet" in missing.output
    assert "Traceback" not in missing.output


# --------------------------------------------------------------------------- validation


def _study_with_claims(tmp_path: Path, claims: list[dict]) -> Path:
    source = REPO / "ablations" / "lvae_icml_mnist.yaml"
    data = yaml.safe_load(source.read_text())
    data["search_space"] = str(REPO / "search_spaces" / "lvae_icml.yaml")
    data["report"]["claims"] = claims
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.parametrize(
    ("claim", "key", "message"),
    [
        ({"a": "LVAE+BN+WU", "b": ["VAE"]}, "report.claims[0].a", "no trial of this budget has variant=LVAE+BN+WU"),
        ({"a": "VAE", "b": ["VAE+BM"]}, "report.claims[0].b[0]", "did you mean 'VAE+BN'"),
        ({"a": "VAE", "metric": "test_ll"}, "report.claims[0].metric", "unknown metric 'test_ll'"),
        ({"a": "VAE", "per": "latent_dims", "levels": ["64-32-16-8-4-2"]}, "report.claims[0].levels[0]",
         "no trial of this budget has latent_dims=64-32-16-8-4-2"),
        ({"a": "VAE", "metric": "kl_layer_6"}, "report.claims[0].metric", "layer 6 does not exist"),
        ({"a": "VAE", "where": {"depht": 5}}, "report.claims[0].where.depht", "did you mean 'depth'"),
    ],
)
def test_validation_refuses_a_claim_the_grid_cannot_answer(tmp_path: Path, claim: dict, key: str, message: str) -> None:
    full = {"name": "c", "statement": "s", "source": "ICML §4", "metric": "test_ll_iw", **claim}
    result = runner.invoke(app, ["validate", str(_study_with_claims(tmp_path, [full]))])
    assert result.exit_code == 2
    assert key in result.output and message in result.output and "Traceback" not in result.output


def test_validate_warns_when_a_permutation_claim_can_never_reach_alpha(tmp_path: Path) -> None:
    claims = [{"name": "exact", "statement": "s", "source": "x", "metric": "test_ll_iw", "a": "VAE+BN", "b": ["VAE"],
               "per": "latent_dims", "test": "permutation"},
              {"name": "t_test", "statement": "s", "source": "x", "metric": "test_ll_iw", "a": "VAE+BN", "b": ["VAE"]}]
    path = _study_with_claims(tmp_path, claims)
    data = yaml.safe_load(path.read_text())
    data["budgets"]["six"] = {**data["budgets"]["short"], "seeds": list(range(6))}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output  # a warning, not an error
    lines = [line.strip() for line in result.output.splitlines()]
    short = lines.index(next(line for line in lines if line.startswith("budget short:")))
    assert lines[short + 1] == ("warning: report.claims[0] (exact): test: permutation can never reach α = 0.05 with "
                                "this budget's seeds: the exact test's smallest p is 2/2^2 over 2 paired seeds = 0.5; "
                                "it needs 6 seeds (or test: t)")
    assert "report.claims[1]" not in result.output  # the t-test claim
    six = lines.index(next(line for line in lines if line.startswith("budget six:")))
    assert not any("warning" in line for line in lines[six + 1:six + 2])  # 2/2^6 = 0.031 < 0.05


WARMUP_STUDY = """
name: wu
search_space:
  fixed: {dataset: digits, depth: 2, latent_dims: 8-4, hidden_dims: 32-16, epochs: 100}
  axes:
    warmup_epochs: {grid: [0, 20, 40]}
budgets:
  long: {}
  short: {epochs: 10, warmup_fraction: 0.2}   # every warm-up on becomes 2 epochs
default_budget: DEFAULT
seeds: [0, 1, 2]
report:
  claims:
    - {name: wu, statement: warm-up helps, source: test, metric: test_ll_iw, axis: warmup_epochs, A, b: [off]}
"""


def _warmup_study(tmp_path: Path, a: str, default: str = "long") -> Path:
    path = tmp_path / f"wu-{default}.yaml"
    path.write_text(WARMUP_STUDY.replace("DEFAULT", default).replace("A,", f"{a},"))
    return path


def test_a_claim_on_warm_up_on_and_off_is_valid_in_every_budget(tmp_path: Path) -> None:
    for default in ("long", "short"):
        result = runner.invoke(app, ["validate", str(_warmup_study(tmp_path, "a: on", default))])
        assert result.exit_code == 0 and "warning: report.claims" not in result.output, result.output
    # what a budget does to warm-up lengths: 20 and 40 train alike (so no claim can tell them apart)
    assert "warning: identical trials (same settings): warmup_epochs=20,seed=0 = warmup_epochs=40,seed=0" in result.output
    quoted = runner.invoke(app, ["validate", str(_warmup_study(tmp_path, 'a: "on"'))])
    assert quoted.exit_code == 0 and "warning: report.claims" not in quoted.output, quoted.output


def test_a_claim_on_a_warm_up_length_is_refused_with_the_level_every_budget_keeps(tmp_path: Path) -> None:
    # 20 is a level of `long` only: `short` turns every warm-up on into 2 epochs
    result = runner.invoke(app, ["validate", str(_warmup_study(tmp_path, "a: 20"))])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert ("report.claims[0].a: 20 — no trial of this budget has warmup_epochs=20 (did you mean '2'?); values: 0, 2; "
            "a budget rescales lengths such as warmup_epochs but never turns them on or off: `on` names every "
            "trial with a non-zero warmup_epochs, `off` those with 0, in every budget") in result.output


def test_on_and_off_are_refused_where_the_levels_are_not_numbers(tmp_path: Path) -> None:
    claim = {"name": "c", "statement": "s", "source": "x", "metric": "test_ll_iw", "a": True, "b": ["VAE"]}
    result = runner.invoke(app, ["validate", str(_study_with_claims(tmp_path, [claim]))])
    assert result.exit_code == 2 and "report.claims[0].a: true — " in result.output
    assert "`on` / `off` name the non-zero / zero values of a numeric (or boolean) parameter; variant has" in result.output


def test_on_and_off_compare_what_a_budget_keeps(report) -> None:
    """In the store, LVAE+BN+WU warms up for 2 epochs (a budget's rescaled length) and VAE+BN
    not at all: `on` vs `off` among batch-norm models is the planted comparison."""
    from vaelab.report.collect import with_labels

    trials = with_labels(pq.read_table(report.trials_parquet).to_pandas())
    by_level = ClaimSpec(name="wu", statement="warm-up helps", source="test", metric="test_ll_iw",
                         axis="warmup_epochs", a=True, b=["off"], where={"batch_norm": True}, per="latent_dims")
    by_label = ClaimSpec(name="planted", statement="s", source="test", metric="test_ll_iw", a="LVAE+BN+WU",
                         b=["VAE+BN"], per="latent_dims")
    on_off, planted = evaluate_claims([by_level, by_label], trials, 0.05)
    assert on_off.verdict == planted.verdict == "holds"
    assert [(c.cell, c.n, c.p) for c in on_off.comparisons] == [(c.cell, c.n, c.p) for c in planted.comparisons]
    assert [(c.a, c.b) for c in on_off.comparisons] == [("on", "off")] * 2
    assert on_off.side_text() == "warmup_epochs: on > off on test_ll_iw"
    by_length = by_level.model_copy(update={"a": 2, "b": [0]})  # the same trials, named by this budget's values
    assert [c.p for c in evaluate_claims([by_length], trials, 0.05)[0].comparisons] == [c.p for c in on_off.comparisons]


def test_validation_refuses_a_claim_with_two_forms(tmp_path: Path) -> None:
    claim = {"name": "c", "statement": "s", "source": "x", "metric": "test_ll_iw", "a": "VAE", "threshold": 1.0}
    result = runner.invoke(app, ["validate", str(_study_with_claims(tmp_path, [claim]))])
    assert result.exit_code == 2 and "report.claims[0]" in result.output and "not both" in result.output


# --------------------------------------------------------------------------- error rates


def _null_frame(rng: np.random.Generator, n: int, cells: int, effect: float) -> pd.DataFrame:
    """Two models over `n` seeds in `cells` cells; each seed shifts both models alike."""
    rows = []
    for cell in range(cells):
        seed_share = rng.normal(0.0, 1.0, n)
        for label, shift in (("A", effect), ("B", 0.0)):
            values = seed_share + shift + rng.normal(0.0, 0.5, n)
            rows += [{"trial_id": f"{label}{cell}-{s}", "status": "finished", "label": label, "variant": label,
                      "seed": s, "depth": cell + 1, "test_ll_iw": v} for s, v in enumerate(values)]
    return pd.DataFrame(rows)


def _rates(spec: ClaimSpec, generators: int, n: int, cells: int, effect: float) -> dict[str, float]:
    verdicts = [evaluate_claim(spec, _null_frame(np.random.default_rng(g), n, cells, effect), 0.05).verdict
                for g in range(generators)]
    return {v: verdicts.count(v) / generators for v in ("holds", "contradicted", "inconclusive")}


def _spec(**extra) -> ClaimSpec:
    return ClaimSpec(name="c", statement="A > B", source="test", metric="test_ll_iw", a="A", b=["B"], **extra)


def test_null_is_called_significant_at_about_alpha_paired_t() -> None:
    rates = _rates(_spec(), generators=1000, n=5, cells=1, effect=0.0)
    significant = rates["holds"] + rates["contradicted"]
    # binomial sd at 1000 draws is 0.0069: 0.05 ± 3 sd
    assert 0.029 <= significant <= 0.071, rates
    assert 0.008 <= rates["holds"] <= 0.042 and 0.008 <= rates["contradicted"] <= 0.042  # two-sided: α/2 each


def test_null_with_exact_permutation_stays_at_or_below_alpha() -> None:
    rates = _rates(_spec(test="permutation"), generators=400, n=8, cells=1, effect=0.0)
    significant = rates["holds"] + rates["contradicted"]
    assert 0.015 <= significant <= 0.08, rates  # exact and discrete: at most α, sd 0.011 at 400 draws


def test_holm_keeps_contradictions_over_cells_below_alpha() -> None:
    # four null cells: uncorrected, some cell would be "contradicted" in 1 − 0.975⁴ ≈ 10% of studies
    rates = _rates(_spec(per="depth"), generators=400, n=5, cells=4, effect=0.0)
    assert rates["contradicted"] <= 0.055 and rates["holds"] <= 0.01, rates


def test_holm_across_claims_keeps_a_study_of_null_claims_below_alpha() -> None:
    # three null claims, each tested at α: some claim "holds" or is "contradicted" in about
    # 1 − 0.95³ ≈ 14% of studies; across the study (Holm over claims) in at most α of them
    specs = [_spec(where={"depth": depth}).model_copy(update={"name": f"c{depth}"}) for depth in (1, 2, 3)]
    any_claim = any_study = 0
    generators = 400
    for g in range(generators):
        results = evaluate_claims(specs, _null_frame(np.random.default_rng(g), 5, 3, 0.0), 0.05)
        any_claim += any(r.verdict != "inconclusive" for r in results)
        any_study += any(r.study_verdict != "inconclusive" for r in results)
    assert 0.08 <= any_claim / generators <= 0.21, any_claim  # sd 0.017 at 400 draws
    assert any_study / generators <= 0.075, any_study


def test_three_claims_at_p_0_03_hold_each_but_not_across_the_study() -> None:
    from scipy import stats

    a, b = {0: 1.0, 1: 2.3, 2: 3.1, 3: 4.0}, {0: 0.2, 1: 1.1, 2: 2.9, 3: 3.1}
    p = stats.ttest_rel(list(a.values()), list(b.values())).pvalue
    assert 0.05 / 3 < p < 0.05
    specs = [_spec().model_copy(update={"name": f"c{k}"}) for k in range(3)]
    results = evaluate_claims(specs, _pair_frame(a, b), 0.05)
    assert [r.verdict for r in results] == ["holds"] * 3
    assert [r.study_verdict for r in results] == ["inconclusive"] * 3
    assert all(r.p == pytest.approx(p) and r.p_study == pytest.approx(3 * p) for r in results)
    alone = evaluate_claims(specs[:1], _pair_frame(a, b), 0.05)[0]
    assert alone.study_verdict == "holds" and alone.p_study == pytest.approx(p)  # one claim: nothing to correct


def test_planted_effect_is_found_over_generator_seeds() -> None:
    rates = _rates(_spec(per="depth"), generators=300, n=5, cells=2, effect=1.5)
    assert rates["holds"] >= 0.9 and rates["contradicted"] == 0.0, rates


def test_exact_permutation_with_two_seeds_says_it_cannot_reach_alpha() -> None:
    frame = _null_frame(np.random.default_rng(0), n=2, cells=1, effect=5.0)
    result = evaluate_claim(_spec(test="permutation"), frame, 0.05)
    assert result.verdict == "inconclusive"
    assert "smallest attainable p is 0.5" in result.comparisons[0].reason


# --------------------------------------------------------------------------- sampled studies


def test_importance_of_a_sampled_study_ranks_the_planted_param_first(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    n = 40
    lr = 10 ** rng.uniform(-4, -2, n)
    free_bits = rng.uniform(0.0, 2.0, n)
    trials = pd.DataFrame({
        "trial_id": [f"t{k}" for k in range(n)], "status": ["finished"] * (n - 2) + ["failed", "diverged"],
        "label": "VAE", "variant": "", "seed": 0, "lr": lr, "free_bits": free_bits,
        "warmup_epochs": rng.integers(0, 3, n), "test_elbo": -100 + 8.0 * np.log10(lr) + 0.2 * free_bits + rng.normal(0, 0.1, n),
    })
    drivers = what_drives(trials, "test_elbo", sampled=True)
    assert drivers is not None and drivers.kind == "importance"
    assert drivers.table["axis"].iloc[0] == "lr" and drivers.table["importance"].iloc[0] > 0.8
    assert drivers.n_trials == n - 2 and "2 trial(s) not finished" in drivers.notes[0]
    path = tmp_path / "pc.png"
    parallel_coordinates(trials, drivers).savefig(path)
    assert path.stat().st_size > 10_000


# --------------------------------------------------------------------------- edges of the tests


def _pair_frame(a: dict[int, float | None], b: dict[int, float | None], extra: str = "") -> pd.DataFrame:
    """Models A and B by seed; None: the trial failed. `extra` adds a model C whose seed 0 failed."""
    rows = [{"trial_id": f"{label}-s{seed}", "status": "failed" if value is None else "finished", "label": label,
             "variant": label, "seed": seed, "depth": 1, "test_ll_iw": np.nan if value is None else value}
            for label, side in (("A", a), ("B", b)) for seed, value in side.items()]
    if extra:
        rows.append({"trial_id": "C-s0", "status": "failed", "label": "C", "variant": "C", "seed": 0, "depth": 1,
                     "test_ll_iw": np.nan})
    return pd.DataFrame(rows)


def test_a_cell_without_spread_gets_the_exact_sign_flip_p_not_zero() -> None:
    from scipy import stats

    spread = evaluate_claim(_spec(), _pair_frame({0: 13.0, 1: 14.0}, {0: 10.0, 1: 10.0}), 0.05).comparisons[0]
    assert spread.p == pytest.approx(stats.ttest_rel([13.0, 14.0], [10.0, 10.0]).pvalue) and spread.p > 0.05
    steady = evaluate_claim(_spec(), _pair_frame({0: 13.0, 1: 13.0}, {0: 10.0, 1: 10.0}), 0.05).comparisons[0]
    assert steady.p == 0.5 and steady.verdict == "inconclusive"  # 2 of the 2² sign flips reach +3: not p = 0
    assert "no spread: all 2 paired differences equal +3.00" in steady.reason and "2/2^2" in steady.reason
    six = evaluate_claim(_spec(), _pair_frame(dict.fromkeys(range(6), 13.0), dict.fromkeys(range(6), 10.0)), 0.05)
    assert six.comparisons[0].p == pytest.approx(2 / 2**6) and six.verdict == "holds"
    welch = evaluate_claim(_spec(), _pair_frame({0: 13.0, 1: 13.0}, {5: 10.0, 6: 10.0}), 0.05).comparisons[0]
    assert welch.paired is False and welch.p == pytest.approx(2 / 6)  # 2 of C(4, 2) relabellings
    assert "exact permutation p 2/C(4, 2)" in welch.reason


def test_one_failed_trial_keeps_the_cell_paired_on_the_shared_seeds() -> None:
    from scipy import stats

    a = {0: 1.0, 1: 2.1, 2: 2.9, 3: 4.2, 4: None}
    b = {0: 0.1, 1: 1.0, 2: 2.2, 3: 3.0, 4: 3.5}
    result = evaluate_claim(_spec(), _pair_frame(a, b), 0.05)
    c = result.comparisons[0]
    shared = [0, 1, 2, 3]
    assert c.paired is True and (c.n_a, c.n_b) == (4, 4)
    assert c.p == pytest.approx(stats.ttest_rel([a[s] for s in shared], [b[s] for s in shared]).pvalue)
    assert c.p < stats.ttest_ind([a[s] for s in shared], list(b.values()), equal_var=False).pvalue  # Welch's cost
    assert result.left_out == [
        "1 trial(s) failed, not tested: A-s4",
        "all trials vs B: paired on the 4 seeds both sides share; 1 trial(s) without a partner, not tested: B-s4 (seed 4)",
    ]


def test_left_out_names_only_the_trials_of_the_claims_own_cells() -> None:
    frame = _pair_frame({0: 1.0, 1: 2.0, 2: 3.5}, {0: 0.5, 1: 1.0, 2: 2.0}, extra="C")
    assert evaluate_claim(_spec(), frame, 0.05).left_out == []  # C's failed trial is no side of A > B
    every_other = evaluate_claim(_spec().model_copy(update={"b": []}), frame, 0.05)
    assert every_other.left_out == ["1 trial(s) failed, not tested: C-s0"]


# --------------------------------------------------------------------------- seeds that would decide it


# the last: an effect seven sds wide, where scipy's noncentral t gives NaN and power.py integrates
@pytest.mark.parametrize(("effect", "sd", "alpha"), [(0.5, 0.8, 0.05), (1.2, 1.0, 0.05), (0.3, 0.25, 0.01), (0.475, 0.0685, 0.05)])
def test_seeds_needed_gives_80_percent_power_in_simulation(effect: float, sd: float, alpha: float) -> None:
    from scipy import stats

    from vaelab.report.power import one_sample_power, seeds_advice

    n = seeds_advice(effect, (sd,), 2, alpha, permutation=False).needed
    assert n is not None and one_sample_power(effect, sd, n, alpha) >= 0.8 > one_sample_power(effect, sd, n - 1, alpha)
    draws = 4000
    diffs = np.random.default_rng(20240611).normal(effect, sd, (draws, n))
    simulated = float((stats.ttest_1samp(diffs, 0.0, axis=1).pvalue < alpha).mean())
    se = (0.8 * 0.2 / draws) ** 0.5  # 0.0063
    assert abs(simulated - one_sample_power(effect, sd, n, alpha)) < 3 * se, (n, simulated)
    assert simulated > 0.8 - 3 * se, (n, simulated)


def test_welch_seeds_needed_gives_80_percent_power_in_simulation() -> None:
    from scipy import stats

    from vaelab.report.power import seeds_advice, welch_power

    effect, sd_a, sd_b, alpha = 1.0, 0.6, 1.1, 0.05
    n = seeds_advice(effect, (sd_a, sd_b), 2, alpha, permutation=False).needed
    assert n is not None and welch_power(effect, sd_a, sd_b, n, alpha) >= 0.8 > welch_power(effect, sd_a, sd_b, n - 1, alpha)
    rng = np.random.default_rng(11)
    a, b = rng.normal(effect, sd_a, (4000, n)), rng.normal(0.0, sd_b, (4000, n))
    simulated = float((stats.ttest_ind(a, b, axis=1, equal_var=False).pvalue < alpha).mean())
    assert abs(simulated - welch_power(effect, sd_a, sd_b, n, alpha)) < 3 * (0.16 / 4000) ** 0.5, (n, simulated)


def test_an_inconclusive_cell_says_how_many_seeds_would_decide_it() -> None:
    frame = _pair_frame({0: 1.0, 1: 2.0, 2: 3.0}, {0: 0.7, 1: 2.1, 2: 2.4})
    c = evaluate_claim(_spec(), frame, 0.05).comparisons[0]
    diffs = np.array([0.3, -0.1, 0.6])
    from vaelab.report.power import one_sample_power

    assert c.verdict == "inconclusive" and c.seeds.needed is not None and c.seeds.needed > 3
    assert one_sample_power(diffs.mean(), diffs.std(ddof=1), c.seeds.needed, 0.05) >= 0.8
    assert c.seeds.text.startswith(f"{c.seeds.needed} seeds give 80% power at α=0.05")
    tiny = evaluate_claim(_spec(), _pair_frame({0: 1.01, 1: 1.98, 2: 3.02}, {0: 1.0, 1: 2.0, 2: 3.0}), 0.05)
    assert tiny.comparisons[0].seeds.needed is None and tiny.comparisons[0].seeds.short == "> 100"
    assert "too small to matter" in tiny.comparisons[0].seeds.text
    steady = evaluate_claim(_spec(), _pair_frame({0: 13.0, 1: 13.0}, {0: 10.0, 1: 10.0}), 0.05).comparisons[0]
    assert steady.seeds.needed == 6  # the first n whose sign-flip floor 2/2ⁿ is below α
    held = evaluate_claim(_spec(), _pair_frame(dict.fromkeys(range(6), 13.0), dict.fromkeys(range(6), 10.0)), 0.05)
    assert held.comparisons[0].seeds.needed is None and held.comparisons[0].seeds.text == ""


def test_seeds_needed_in_claims_parquet_and_the_outputs(report, store: str) -> None:
    rows = _claims(report)
    assert pq.read_schema(report.out_dir / "claims.parquet").field("seeds_needed").type == "int64"
    decided = rows[rows["verdict"] != "inconclusive"]
    assert decided["seeds_needed"].isna().all() and (decided["seeds_advice"] == "").all()
    null = rows[rows["claim"] == "null"]
    assert (null["verdict"] == "inconclusive").all() and (null["seeds_advice"] != "").all()
    assert ((null["seeds_needed"] > 6) | null["seeds_advice"].str.contains("too small to matter")).all()
    for text in (report.tables_md.read_text(), report.index_html.read_text()):
        assert "how many seeds would give its test 80% power" in text and null["seeds_advice"].iloc[0] in text
    result = runner.invoke(app, ["claims", STUDY, "--tracking-uri", store])
    assert result.exit_code == 0 and "; seeds: " in result.output
    assert "; seeds: one seed: no spread to plan from" in result.output
