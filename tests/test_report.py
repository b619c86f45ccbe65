"""The report from a real MLflow SQLite store: Parquet, tables, figures, HTML.

The store is written by tests/report_fixtures.py following docs/ARCHITECTURE.md; the
report is built twice (once here, once in a subprocess that also checks that neither torch
nor ray was imported) and the two builds must agree.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import textwrap
from pathlib import Path
from urllib.parse import urlsplit

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from report_fixtures import EPOCHS, STUDY, StudyFixture, make_minimal_study, make_study
from vaelab.report.build import ReportResult, build_report
from vaelab.report.tables import TOTAL
from vaelab.tracking import read

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> StudyFixture:
    return make_study(tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def report(study: StudyFixture, tmp_path_factory: pytest.TempPathFactory) -> ReportResult:
    out = tmp_path_factory.mktemp("report") / STUDY
    return build_report(study.study, study.tracking_uri, out, cache_dir=study.root / "cache-a")


@pytest.fixture(scope="module")
def rebuilt(study: StudyFixture, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A second build in a fresh interpreter (fresh cache), reporting the modules it loaded."""
    out = tmp_path_factory.mktemp("rebuilt") / STUDY
    script = textwrap.dedent(
        f"""
        import json, sys
        from vaelab.report.build import build_report
        result = build_report({study.study!r}, {study.tracking_uri!r}, {str(out)!r},
                              cache_dir={str(study.root / 'cache-b')!r})
        heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'ray'))
        print(json.dumps({{"out": str(result.out_dir), "heavy": heavy}}))
        """
    )
    done = _run_python(script)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _run_python(script: str) -> subprocess.CompletedProcess:
    env_path = str(REPO / "platform")
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**_clean_env(), "PYTHONPATH": env_path},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def _finished_values(study: StudyFixture, metric: str, **match: object) -> list[float]:
    values = []
    for plan in study.plans:
        if plan.status == "finished" and all(getattr(plan, k) == v for k, v in match.items()):
            values.append(study.finals[plan.trial_id][metric])
    return values


# --------------------------------------------------------------------------- read side


def test_typed_params_follow_trialconfig_annotations() -> None:
    raw = {
        "depth": "5",
        "rho": "0.8",
        "warmup_epochs": "200.0",
        "batch_norm": "True",
        "latent_dims": "64-32-16",
        "data_dir": "None",
        "likelihood": "None",
        "dataset": "mnist",
        "lr": "1e-06",
        "custom_note": "hello",
    }
    typed = read.typed_params(raw)
    assert typed == {
        "depth": 5,
        "rho": 0.8,
        "warmup_epochs": 200.0,
        "batch_norm": True,
        "latent_dims": "64-32-16",
        "data_dir": None,
        "likelihood": None,
        "dataset": "mnist",
        "lr": 1e-06,
        "custom_note": "hello",
    }
    assert isinstance(typed["depth"], int) and isinstance(typed["warmup_epochs"], float)
    with pytest.raises(ValueError, match="depth"):
        read.parse_param("depth", "deep")


def test_read_study_finds_newest_parent_and_its_trials(study: StudyFixture) -> None:
    record = read.read_study(study.study, study.tracking_uri)
    assert record.parent is not None and record.parent.run_id == study.parent_run_id
    assert record.parent.study_yaml["report"]["tables"][0]["name"] == "ll_by_depth"
    assert {t.run_id for t in record.trials} == set(study.run_ids.values())  # not the old study's
    by_id = {t.trial_id: t for t in record.trials}
    assert by_id["t12"].status == "diverged" and by_id["t13"].status == "failed"
    assert by_id["t0"].params["depth"] == 2 and by_id["t0"].params["batch_norm"] is False
    assert any("study runs in the experiment" in w for w in record.warnings)


def test_unknown_study_is_a_clear_error(study: StudyFixture) -> None:
    with pytest.raises(read.StudyNotFoundError, match="no study 'nope'"):
        read.read_study("nope", study.tracking_uri)


def test_histories_keep_the_last_logged_value_per_step(study: StudyFixture) -> None:
    record = read.read_study(study.study, study.tracking_uri)
    relogged = next(p for p in study.plans if p.relog_last_epoch)
    trial = next(t for t in record.trials if t.trial_id == relogged.trial_id)
    history = read.history_of(read.read_histories(study.tracking_uri, [trial]), trial.run_id)
    steps = [step for step, _ in history["test_elbo"]]
    assert steps == [2, EPOCHS]
    assert history["test_elbo"][-1][1] == pytest.approx(study.finals[trial.trial_id]["test_elbo"])


def test_local_artifacts_are_read_in_place_and_only_when_asked(study: StudyFixture, tmp_path: Path) -> None:
    record = read.read_study(study.study, study.tracking_uri)
    trials = {t.trial_id: t for t in record.trials if t.trial_id in ("t0", "t13")}
    files = read.trial_artifacts(study.tracking_uri, trials.values(), tmp_path / "cache")
    found = {name: files.path(trials["t0"].run_id, name) for name in read.TRIAL_ARTIFACTS}
    assert all(p is not None and p.is_file() for p in found.values())
    # a SQLite store's artifacts are local folders: read where MLflow put them, no copy
    assert all(str(p).startswith(str(urlsplit(trials["t0"].artifact_uri).path)) for p in found.values())
    assert not (tmp_path / "cache").exists()
    assert all(files.path(trials["t13"].run_id, name) is None for name in read.TRIAL_ARTIFACTS)  # failed: none


def test_remote_artifacts_are_downloaded_once_per_ended_run(tmp_path: Path) -> None:
    """Through a real `mlflow server` (artifacts proxied, so the runs' roots are mlflow-artifacts:/ URIs)."""
    from cluster_helpers import TrackingServer, free_port
    from mlflow.tracking import MlflowClient

    server = TrackingServer(f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "served", tmp_path / "server.log",
                            port=free_port(), workers=1).start()
    try:
        client = MlflowClient(server.uri)
        exp = client.create_experiment("remote")
        run = client.create_run(exp, tags={"vaelab.role": "trial", "vaelab.trial_id": "t0"})
        client.log_text(run.info.run_id, "[]", "unit_kl.json")
        client.set_terminated(run.info.run_id)
        trial = next(t for t in read.read_study("remote", server.uri).trials if t.trial_id == "t0")
        assert trial.artifact_uri.startswith("mlflow-artifacts:")
        cache = tmp_path / "cache"
        first = read.trial_artifacts(server.uri, [trial], cache).path(trial.run_id, "unit_kl.json")
        assert first is not None and first.parent == cache / trial.run_id and first.read_text() == "[]"
        stamp = first.stat().st_mtime_ns
        missing = read.trial_artifacts(server.uri, [trial], cache).path(trial.run_id, "latents.npz")
        assert missing is None
        again = read.trial_artifacts(server.uri, [trial], cache).path(trial.run_id, "unit_kl.json")
        assert again == first and again.stat().st_mtime_ns == stamp  # the ended run's file is reused
    finally:
        server.stop()


# --------------------------------------------------------------------------- parquet


def test_trials_parquet_schema_and_typed_columns(report: ReportResult, study: StudyFixture) -> None:
    table = pq.read_table(report.trials_parquet)
    schema = table.schema
    expected = {
        "study": pa.string(),
        "trial_id": pa.string(),
        "mlflow_run_id": pa.string(),
        "variant": pa.string(),
        "status": pa.string(),
        "depth": pa.int64(),
        "latent_dims": pa.string(),
        "batch_norm": pa.bool_(),
        "warmup_epochs": pa.float64(),
        "rho": pa.float64(),
        "data_dir": pa.string(),
        "lr": pa.float64(),  # the param
        "lr_final": pa.float64(),  # the per-epoch metric of the same name
        "test_ll_iw": pa.float64(),
        "active_units_layer_2": pa.int64(),  # counts are whole numbers
        "epoch": pa.int64(),
        "run": pa.string(),
        "budget": pa.string(),
        "git_sha": pa.string(),
        "kl_layer_5": pa.float64(),
        "wall_time_s": pa.float64(),
    }
    for name, dtype in expected.items():
        assert schema.field(name).type == dtype, name
    assert schema.names[:5] == ["study", "trial_id", "mlflow_run_id", "variant", "status"]
    assert schema.names[-1] == "wall_time_s"
    assert schema.metadata is None  # no pandas metadata, no timestamps
    assert table.num_rows == len(study.plans)
    assert table.column("trial_id").to_pylist() == [f"t{i}" for i in range(len(study.plans))]  # t2 < t10
    frame = pd.read_parquet(report.trials_parquet)
    row = frame.set_index("trial_id").loc["t12"]
    assert row["status"] == "diverged" and row["variant"] == "VAE+BN"
    assert pd.isna(row["test_elbo"])  # NaN logged by the diverged trial is stored as null
    assert frame["depth"].dtype == "int64" and frame["batch_norm"].dtype == bool
    assert set(frame["budget"]) == {"smoke"} and set(frame["git_sha"]) == {"0123abcd"}
    assert not any(c.startswith("metrics.") for c in frame.columns)
    assert frame.set_index("trial_id").loc["t3", "test_ll_iw"] == pytest.approx(study.finals["t3"]["test_ll_iw"])
    assert frame.set_index("trial_id").loc["t3", "wall_time_s"] == pytest.approx(1.5 * EPOCHS)


def test_curves_and_units_parquet(report: ReportResult, study: StudyFixture) -> None:
    curves = pq.read_table(report.curves_parquet)
    assert curves.schema.names == ["trial_id", "epoch", "metric", "value"]
    assert [f.type for f in curves.schema] == [pa.string(), pa.int64(), pa.string(), pa.float64()]
    frame = curves.to_pandas()
    relogged = next(p for p in study.plans if p.relog_last_epoch).trial_id
    last = frame[(frame.trial_id == relogged) & (frame.metric == "test_elbo") & (frame.epoch == EPOCHS)]
    assert len(last) == 1 and last["value"].iloc[0] == pytest.approx(study.finals[relogged]["test_elbo"])
    assert sorted(frame[(frame.trial_id == "t0") & (frame.metric == "train_loss")].epoch) == [1, 2, 3, 4]

    units = pq.read_table(report.units_parquet)
    assert units.schema.names == ["trial_id", "epoch", "layer", "unit", "kl"]
    assert [f.type for f in units.schema] == [pa.string(), pa.int64(), pa.int64(), pa.int64(), pa.float64()]
    t2 = units.to_pandas().query("trial_id == 't2'")  # 5 layers 64-32-16-8-4, 2 eval epochs
    assert len(t2) == 2 * (64 + 32 + 16 + 8 + 4)
    assert sorted(t2.layer.unique()) == [1, 2, 3, 4, 5] and t2.unit.min() == 0


def test_parquet_readable_by_duckdb(report: ReportResult) -> None:
    duckdb = pytest.importorskip("duckdb")
    count = duckdb.sql(f"select count(*) from '{report.trials_parquet}' where status = 'finished'").fetchone()[0]
    assert count == 14


def test_regenerating_gives_equal_parquet_and_text(report: ReportResult, rebuilt: dict) -> None:
    other = Path(rebuilt["out"])
    for name in ("trials.parquet", "curves.parquet", "units.parquet"):
        assert pq.read_table(report.out_dir / name).equals(pq.read_table(other / name)), name
    assert report.tables_md.read_text() == (other / "tables.md").read_text()
    assert report.index_html.read_text() == (other / "index.html").read_text()


def test_no_torch_or_ray_on_import_or_build(rebuilt: dict) -> None:
    done = _run_python(
        "import sys, vaelab.report.build, vaelab.report.figures, vaelab.tracking.read\n"
        "from vaelab.report import build_report, ReportResult\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'ray')))"
    )
    assert done.stdout.strip() == "[]"
    assert rebuilt["heavy"] == []  # a whole build (figures, sklearn PCA included) too


# --------------------------------------------------------------------------- tables


def _table(report: ReportResult, name: str):
    return next(t for t in report.tables if t.spec.name == name)


def test_cell_is_mean_std_over_finished_seeds(report: ReportResult, study: StudyFixture) -> None:
    table = _table(report, "ll_by_depth")
    assert table.rows == ["64-32", "64-32-16-8-4"]
    assert table.columns == ["VAE", "VAE+BN", "LVAE+BN+WU"]
    values = _finished_values(study, "test_ll_iw", variant="VAE+BN", depth=5, rho=1.0)
    assert len(values) == 2  # the diverged third seed is not in n
    cell = table.cell("64-32-16-8-4", "VAE+BN")
    assert cell.n == 2
    assert cell.mean == pytest.approx(statistics.mean(values))
    assert cell.std == pytest.approx(statistics.stdev(values))
    assert cell.not_finished == (("diverged", 1),)
    text = f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f} (n=2; 1 diverged)"
    assert text in table.text("64-32-16-8-4", "VAE+BN")
    assert text in report.tables_md.read_text()
    # the rho sweep (where: rho = 1) and the failed seed stay out of VAE at 64-32
    vae = table.cell("64-32", "VAE")
    assert vae.n == 2 and vae.not_finished == (("failed", 1),)
    assert vae.mean == pytest.approx(statistics.mean(_finished_values(study, "test_ll_iw", variant="VAE", depth=2, rho=1.0)))


def test_best_per_row_is_bold(report: ReportResult) -> None:
    table = _table(report, "ll_by_depth")
    assert table.best == {("64-32", "LVAE+BN+WU"), ("64-32-16-8-4", "LVAE+BN+WU")}
    markdown = report.tables_md.read_text()
    best = table.cell("64-32", "LVAE+BN+WU").ours()
    assert f"**{best}**" in markdown
    assert f"<strong>{best}</strong>" in report.index_html.read_text()


def test_paper_numbers_sit_beside_the_right_cells(report: ReportResult) -> None:
    units = _table(report, "active_units")
    assert units.rows == [1, 2, 3, 4, 5, TOTAL]
    assert units.cell(2, "VAE+BN").paper == 9  # ICML Table 2, VAE+BN, layer 2
    assert units.cell(1, "VAE").paper == 20
    assert units.cell(TOTAL, "VAE+BN+WU") is None
    assert units.cell(TOTAL, "LVAE+BN+WU").paper == 81  # variant_map -> LADDER+BN+WU, `active_units`
    assert "paper 9" in units.text(2, "VAE+BN")
    total = units.cell(TOTAL, "VAE+BN")
    assert total.mean == pytest.approx(21.5 + 8 + 3 + 2 + 1)
    ll = _table(report, "ll_by_depth")
    assert ll.cell("64-32", "VAE+BN").paper == pytest.approx(-105.51)  # NIPS Table 2, omniglot
    assert ll.cell("64-32-16-8-4", "LVAE+BN+WU").paper == pytest.approx(-102.11)
    assert "· paper -105.51" in report.tables_md.read_text()


def test_failed_and_diverged_are_counted_and_named(report: ReportResult) -> None:
    assert report.status_counts == {"finished": 14, "diverged": 1, "failed": 1, "stopped": 1, "running": 0}
    assert _table(report, "ll_by_depth").cell("64-32", "VAE+BN").not_finished == (("stopped", 1),)
    ll = _table(report, "ll_by_depth")
    assert any(n.startswith("1 trial diverged") and "t12" in n for n in ll.notes)
    assert any(n.startswith("1 trial failed") and "t13" in n for n in ll.notes)
    for text in (report.tables_md.read_text(), report.index_html.read_text()):
        assert "1 trial diverged (not in n): t12" in text
        assert "1 trial failed (not in n): t13" in text
        assert "1 trial stopped early (not in n): t16" in text
        assert "17 trials: 14 finished, 1 diverged, 1 failed, 1 stopped" in text


def test_header_shows_notes_budget_and_git_sha(report: ReportResult) -> None:
    for text in (report.tables_md.read_text(), report.index_html.read_text()):
        assert "Smoke budget: 4 epochs on digits" in text  # report.notes of the newest study run
        assert "smoke" in text and "0123abcd" in text
        assert "old study run" not in text


# --------------------------------------------------------------------------- figures and html


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_MAGIC, path
    return struct.unpack(">II", head[16:24])


def test_figures_exist_and_are_not_trivial(report: ReportResult) -> None:
    assert set(report.figures) == {
        "ll_vs_depth", "unit_kl_heatmaps", "active_units", "kl_std_normal",
        "latent_pca", "prior_samples", "kl_vs_rho", "curves",
    }
    assert report.skipped_figures == {}
    for name, path in report.figures.items():
        width, height = _png_size(path)
        assert width >= 400 and height >= 300, name
        assert path.stat().st_size > 10_000, name  # more than an empty canvas
    html = report.index_html.read_text()
    for name in report.figures:
        assert f'src="figures/{name}.png"' in html
        assert (report.out_dir / "figures" / f"{name}.png").is_file()


def test_missing_data_skips_figures_with_a_reason(study: StudyFixture, tmp_path: Path) -> None:
    small = make_minimal_study(tmp_path / "store", tracking_uri=study.tracking_uri)
    result = build_report(small.study, small.tracking_uri, tmp_path / "out", cache_dir=tmp_path / "cache")
    assert set(result.figures) == {"active_units"}  # final metrics suffice for the bars
    assert result.skipped_figures["ll_vs_depth"] == "the study has one depth only (2)"
    assert "unit_kl.json" in result.skipped_figures["unit_kl_heatmaps"]
    assert "rho" in result.skipped_figures["kl_vs_rho"]
    html = result.index_html.read_text()
    assert "<code>ll_vs_depth</code> skipped: the study has one depth only (2)" in html
    assert "no tables" in html


def test_study_without_trials_still_reports(study: StudyFixture, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = study.tracking_uri
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("empty", artifact_location=(tmp_path / "art").as_uri())
    client.create_run(experiment, tags={"vaelab.role": "study", "vaelab.study": "empty"})
    result = build_report("empty", uri, tmp_path / "out", cache_dir=tmp_path / "cache")
    assert pq.read_table(result.trials_parquet).num_rows == 0
    assert pq.read_table(result.curves_parquet).num_rows == 0
    assert result.figures == {} and len(result.skipped_figures) == 8
    assert "0 trials" in result.index_html.read_text()
    assert any("study.yaml" in w for w in result.warnings)


def test_labels_are_derived_when_a_trial_has_none() -> None:
    from vaelab.report.collect import with_labels

    frame = pd.DataFrame(
        {
            "variant": ["", "VAE+BN", ""],
            "inference": ["ladder", "vae", "vae"],
            "batch_norm": [True, True, False],
            "warmup_epochs": [200.0, 0.0, 0.0],
        }
    )
    assert with_labels(frame)["label"].tolist() == ["LADDER+BN+WU", "VAE+BN", "VAE"]


def test_per_layer_table_over_mixed_depths_says_so(report: ReportResult) -> None:
    from vaelab.report.collect import with_labels
    from vaelab.report.spec import TableSpec
    from vaelab.report.tables import build_table

    trials = with_labels(pq.read_table(report.trials_parquet).to_pandas())
    spec = TableSpec(name="kl", rows="layer", columns="variant", value="kl_layer", better="lower")
    table = build_table(spec, trials)
    assert table.rows == [1, 2, 3, 4, 5, TOTAL]
    assert table.cell(5, "VAE+BN").n == 2  # only the 5-layer models have a layer 5
    assert table.cell(1, "VAE+BN").n == 4
    assert any("differ in more than the seed" in n and "depth" in n and "rho" in n for n in table.notes)


def test_index_html_is_self_contained(report: ReportResult) -> None:
    html = report.index_html.read_text()
    assert html.startswith("<!DOCTYPE html>")
    assert 'class="ablation"' in html and "http://" not in html and "https://" not in html
    assert html.count('<table class="ablation"') == len(report.tables)


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


@pytest.mark.slow
def test_index_html_renders_in_headless_chromium(report: ReportResult, tmp_path: Path) -> None:
    chromium = _chromium()
    if chromium is None:
        pytest.skip("chromium is not installed")
    flags = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,2000",
        "--virtual-time-budget=5000",
    ]
    url = report.index_html.resolve().as_uri()
    shot = tmp_path / "shot.png"
    subprocess.run(flags + [f"--screenshot={shot}", url], capture_output=True, timeout=120, check=False)
    assert shot.is_file(), "chromium wrote no screenshot"
    from matplotlib.image import imread

    pixels = imread(shot)
    assert pixels.shape[0] >= 1000 and pixels.shape[1] >= 1000
    assert float(pixels[..., :3].std()) > 0.05  # not a blank page

    dom = subprocess.run(flags + ["--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    assert 'class="ablation"' in dom and "VAE+BN" in dom
    assert dom.count('data-loaded="1"') == len(report.figures)  # every <img> loaded (naturalWidth > 0)
    assert 'class="missing"' not in dom
    shutil.copy(shot, tmp_path.parent / "chromium-shot.png")  # left for a human to look at

    # the check can fail: a copy of the report with one figure removed
    broken = tmp_path / "broken"
    shutil.copytree(report.out_dir, broken)
    (broken / "figures" / "curves.png").unlink()
    dom = subprocess.run(flags + ["--dump-dom", (broken / "index.html").as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    assert dom.count('data-loaded="0"') == 1 and "figure not found: figures/curves.png" in dom


# --------------------------------------------------------------------------- labels a reader can cite


def test_store_notices_stay_out_of_the_report_body(report: ReportResult) -> None:
    # the store holds an older study run with a trial of its own: a notice for the command line
    notices = [w for w in report.warnings if "other study runs" in w or "study runs in the experiment" in w]
    assert notices, report.warnings
    for text in (report.tables_md.read_text(), report.index_html.read_text()):
        assert "other study runs" not in text and "study runs in the experiment" not in text


def _label_trials() -> pd.DataFrame:
    """Two variants × adam_eps {1e-8, 1e-4} × seeds {0, 1}: integer active units, L_1000 bounds."""
    rows = []
    for variant, base in (("VAE+BN", 15), ("VAE+BN+WU", 35)):
        for eps in (1e-8, 1e-4):
            for seed in (0, 1):
                rows.append({"trial_id": f"{variant}-{eps:g}-{seed}", "status": "finished", "label": variant,
                             "variant": variant, "seed": seed, "adam_eps": eps, "latent_dims": "64-32-16-8-4",
                             "eval_iw": 1000, "active_units": float(base + (eps > 1e-6)),
                             "test_ll_iw": -85.0 - seed * 0.25, "test_elbo": -90.0})
    return pd.DataFrame(rows)


def _label_tables():
    from vaelab.report.spec import TableSpec
    from vaelab.report.tables import build_tables

    icml = {"source": "lvae-icml", "dataset": "mnist"}
    specs = [
        TableSpec(name="ll", title="Test log-likelihood L_K, 5 layers (paper: L_5000, ICML Table 1)", rows="adam_eps",
                  columns="variant", value="test_ll_iw", paper={**icml, "table": "table1", "metric": "test_ll_iw5000"}),
        TableSpec(name="elbo", title="Test ELBO L_1, 5 layers", rows="adam_eps", columns="variant", value="test_elbo"),
        TableSpec(name="au", title="Active units L_100", rows="adam_eps", columns="variant", value="active_units",
                  paper={**icml, "table": "table2", "metric": "active_units"}),
    ]
    return build_tables(specs, _label_trials())


def test_titles_rewrite_only_the_runs_own_bound() -> None:
    from vaelab.report.tables import own_bound

    ll, elbo, au = _label_tables()
    assert ll.title == "Test log-likelihood L_1000, 5 layers (paper: L_5000, ICML Table 1)"
    assert elbo.title == "Test ELBO L_1, 5 layers" and au.title == "Active units L_100"  # not an L_K table
    assert own_bound("Fine-tuned test L_5000, MC=1 IW=1 (ICML Table 1)", 20) == "Fine-tuned test L_20, MC=1 IW=1 (ICML Table 1)"
    assert own_bound("L_5000 beside L_1 (paper: L_5000)", 20) == "L_20 beside L_1 (paper: L_5000)"
    assert own_bound("Test ELBO (L_1) and (paper: L_5000)", 20) == "Test ELBO (L_1) and (paper: L_5000)"


def test_tables_tex_reads_as_a_papers_table() -> None:
    from vaelab.report.latex import render_latex

    tex = render_latex("labels", [], _label_tables())
    assert r"Test log-likelihood $\mathcal{L}_{1000}$, 5 layers (paper: $\mathcal{L}_{5000}$, ICML Table 1)" in tex
    assert r"Test ELBO $\mathcal{L}_{1}$, 5 layers" in tex and "L\\_" not in tex
    assert r"test log-likelihood $\mathcal{L}_{1000}$, mean" in tex and "test\\_ll\\_iw" not in tex
    assert r"paper: S\o{}nderby et al.\ (ICML 2016), Table 1" in tex and "lvae-icml" not in tex
    assert r" & \multicolumn{3}{c}{model} \\" in tex and r"\cmidrule(lr){2-4}" in tex  # VAE+BN+WU has a paper column
    assert r"Adam $\epsilon$ & VAE+BN & \multicolumn{2}{c}{VAE+BN+WU} \\" in tex
    # counts print as integers beside the paper's, and one column keeps one number format
    assert r"$10^{-8}$ & $15$ & $37$ & $\mathbf{35}$ & $61$ \\" in tex
    assert r"$10^{-4}$ & $16$ & $37$ & $\mathbf{36}$ & $61$ \\" in tex
    assert "0.0001" not in tex and "1e-08" not in tex and "15.00" not in tex


def test_tables_md_keeps_one_number_format_per_axis() -> None:
    from vaelab.report.markdown import table_markdown

    text = "\n".join(table_markdown(_label_tables()[2]))
    assert "| 1e-08 | " in text and "| 1e-04 | " in text and "0.0001" not in text
    assert "| 1e-08 | 15 (n=2) · paper 37 | **35** (n=2) · paper 61 |" in text
