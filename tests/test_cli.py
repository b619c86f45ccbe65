"""The `vaelab` command line: clean errors (exit 2, no traceback), `train`'s JSON line,
`validate`, `ls`, `query` in every format, early refusal of an unreachable tracking server.

Commands run in-process through typer's CliRunner, except `vaelab train`, which runs
the installed console script so that its real stdout is checked.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from typer.testing import CliRunner

from vaelab.cli import app
from vaelab.tracking.connection import check_reachable
from vaelab.tracking.runs import TrialRun, finish_study_run, start_study_run
from vaelab.tracking.tags import TAG_VARIANT

runner = CliRunner()

TINY_SETS = ["dataset=digits", "depth=2", "latent_dims=8-4", "hidden_dims=32-16", "epochs=2", "eval_iw=10",
             "train_subset=256", "train_eval_size=128", "batch_size=64", "eval_every=1", "lr=1.0e-3",
             "device=cpu", "compile=off"]
SPEC_METRICS = {"train_elbo", "test_elbo", "test_ll_iw", "kl_total", "kl_layer_1", "kl_layer_2",
                "active_units", "active_units_layer_1", "active_units_layer_2",
                "kl_std_normal_layer_1", "kl_std_normal_layer_2", "beta", "epoch", "steps_per_s",
                "wall_time_s"}


def invoke(*args: str) -> Any:
    return runner.invoke(app, list(args))


def vaelab_command() -> list[str]:
    script = Path(sys.executable).parent / "vaelab"
    return [str(script)] if script.exists() else [sys.executable, "-m", "vaelab.cli"]


# --------------------------------------------------------------------------- train


def test_train_prints_final_metrics_as_json_on_the_last_stdout_line(tmp_path: Path) -> None:
    sets = [arg for item in TINY_SETS for arg in ("--set", item)]
    done = subprocess.run([*vaelab_command(), "train", *sets, "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    final = json.loads(done.stdout.strip().splitlines()[-1])
    assert SPEC_METRICS <= set(final), SPEC_METRICS - set(final)
    assert final["epoch"] == 2 and final["status"] == "finished"
    assert "epoch 1/2" in done.stderr and "epoch 2/2" in done.stderr  # progress on stderr
    assert {p.name for p in (tmp_path / "out").iterdir()} >= {"model.pt", "unit_kl.json", "config.yaml"}


@pytest.mark.parametrize(
    "sets, expected",
    [
        (["depth=9"], "--set depth=9"),
        (["rho=1.5"], "--set rho=1.5"),
        (["no_such_param=3"], "unknown parameter 'no_such_param'"),
        (["depth"], "expected key=value"),
        (["inference=lvae", "depth=1"], "needs depth >= 2"),
    ],
)
def test_train_bad_set_is_a_clean_error(sets: list[str], expected: str) -> None:
    result = invoke("train", *[arg for item in sets for arg in ("--set", item)])
    assert result.exit_code == 2
    assert expected in result.output
    assert "Traceback" not in result.output


def test_train_missing_dataset_names_the_fetch_command(tmp_path: Path) -> None:
    result = invoke("train", "--set", "dataset=mnist", "--set", f"data_dir={tmp_path}", "--set", "epochs=1")
    assert result.exit_code == 2
    assert "vaelab data fetch mnist" in result.output and "Traceback" not in result.output


# --------------------------------------------------------------------------- validate


def test_validate_good_and_bad_files(tmp_path: Path, write_study: Any) -> None:
    good = write_study("goodstudy", """
  axes:
    lr: {grid: [1.0e-3, 2.0e-3]}
budgets:
  test: {epochs: 2}
""")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nsearch_space:\n  fixed: {depth: 9}\nbudgets: {b: {epochs: 1}}\n")
    ok = invoke("validate", str(good))
    assert ok.exit_code == 0 and f"OK {good}" in ok.output
    result = invoke("validate", str(good), str(bad))
    assert result.exit_code == 2
    assert "bad.yaml" in result.output and "depth" in result.output and "9" in result.output
    assert "Traceback" not in result.output


# --------------------------------------------------------------------------- run refusals


def test_run_refuses_an_unreachable_tracking_server_before_any_trial(tmp_path: Path, write_study: Any) -> None:
    study = write_study("unreachable", """
  axes:
    lr: {grid: [1.0e-3, 2.0e-3]}
budgets:
  test: {epochs: 2}
""")
    result = invoke("run", str(study), "--tracking-uri", "http://127.0.0.1:9", "--storage", str(tmp_path / "rr"))
    assert result.exit_code == 2
    assert "unreachable" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "rr").exists()  # nothing launched


def test_run_bad_study_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nsearch_space: {fixed: {rho: 2}}\nbudgets: {b: {epochs: 1}}\n")
    result = invoke("run", str(bad), "--tracking-uri", f"sqlite:///{tmp_path}/m.db")
    assert result.exit_code == 2 and "rho" in result.output and "Traceback" not in result.output


def test_resume_unknown_run_exits_2(tmp_path: Path) -> None:
    result = invoke("resume", "nothing-here", "--storage", str(tmp_path))
    assert result.exit_code == 2 and "no vaelab study" in result.output


# --------------------------------------------------------------------------- ls / query


@pytest.fixture
def small_store(tracking_uri: str) -> str:
    """Two finished trial runs and one diverged under one study run, written without Ray."""
    from vaelab.config import trial_config

    uri = check_reachable(tracking_uri)
    info = start_study_run(uri, "qstudy", "qstudy-test-1", spec_hash="h", budget="test", study_yaml="name: q\n")
    for index, (variant, depth, status) in enumerate([("VAE", 1, "finished"), ("LVAE", 2, "finished"),
                                                      ("VAE", 2, "diverged")]):
        config = trial_config({"dataset": "digits", "depth": depth, "inference": "lvae" if variant == "LVAE" else "vae",
                               "latent_dims": "8-4", "hidden_dims": "32-16", "epochs": 2})
        run = TrialRun.open(info, f"q{index}", run_name=f"variant={variant},depth={depth}",
                            params=config.to_params(), tags={TAG_VARIANT: variant})
        for epoch in (1, 2):
            value = float("nan") if status == "diverged" else -100.0 + 10 * depth + epoch
            run.log_epoch(epoch, {"epoch": epoch, "test_elbo": value, "test_ll_iw": value + 1})
        run.finish(status)
    finish_study_run(info, "finished")
    return uri


def test_ls_lists_recorded_and_local_studies(small_store: str, tmp_path: Path) -> None:
    (tmp_path / "ablations").mkdir()
    (tmp_path / "ablations" / "x.yaml").write_text("name: xstudy\nbudgets: {smoke: {}}\n")
    result = invoke("ls", "--tracking-uri", small_store, "--ablations", str(tmp_path / "ablations"))
    assert result.exit_code == 0, result.output
    assert "qstudy" in result.output and "qstudy-test-1" in result.output and "xstudy" in result.output
    line = next(ln for ln in result.output.splitlines() if "qstudy-test-1" in ln)
    assert " 3 " in f" {line} " and "finished" in line and "test" in line


def test_query_table_filters_with_mlflow_syntax(small_store: str) -> None:
    result = invoke("query", "params.depth = '2'", "--tracking-uri", small_store)
    assert result.exit_code == 0, result.output
    assert "LVAE" in result.output and "diverged" in result.output
    assert "q0" not in result.output  # depth 1 filtered out


def test_query_json_csv_parquet(small_store: str, tmp_path: Path) -> None:
    as_json = invoke("query", "--study", "qstudy", "--format", "json", "--tracking-uri", small_store)
    assert as_json.exit_code == 0, as_json.output
    records = json.loads(as_json.stdout)
    assert {r["trial_id"] for r in records} == {"q0", "q1", "q2"}
    by_id = {r["trial_id"]: r for r in records}
    assert by_id["q1"]["depth"] == 2 and by_id["q1"]["variant"] == "LVAE"  # params typed
    assert by_id["q1"]["test_elbo"] == -78.0 and by_id["q2"]["test_elbo"] is None  # NaN -> null
    assert by_id["q2"]["status"] == "diverged"

    as_csv = invoke("query", "metrics.test_elbo > -85", "--format", "csv", "--tracking-uri", small_store,
                    "--out", str(tmp_path / "q.csv"))
    assert as_csv.exit_code == 0, as_csv.output
    frame = pd.read_csv(tmp_path / "q.csv")
    assert list(frame["trial_id"]) == ["q1"]

    as_parquet = invoke("query", "--format", "parquet", "--out", str(tmp_path / "q.parquet"),
                        "--tracking-uri", small_store)
    assert as_parquet.exit_code == 0, as_parquet.output
    table = pd.read_parquet(tmp_path / "q.parquet")
    assert len(table) == 3 and {"trial_id", "variant", "status", "depth", "test_ll_iw"} <= set(table.columns)

    no_out = invoke("query", "--format", "parquet", "--tracking-uri", small_store)
    assert no_out.exit_code == 2 and "--out" in no_out.output


def test_query_of_a_study_reads_its_newest_run_unless_told_otherwise(small_store: str) -> None:
    """As report and claims do; --all-runs mixes the runs, and the run used is named."""
    from vaelab.config import trial_config

    newer = start_study_run(small_store, "qstudy", "qstudy-test-2", spec_hash="h", budget="test", study_yaml="name: q\n")
    config = trial_config({"dataset": "digits", "depth": 1, "batch_norm": True, "epochs": 2})
    run = TrialRun.open(newer, "n0", run_name="variant=VAE+BN", params=config.to_params(), tags={TAG_VARIANT: "VAE+BN"})
    run.log_epoch(1, {"epoch": 1, "test_elbo": -90.0})
    run.finish("finished")
    finish_study_run(newer, "finished")

    newest = invoke("query", "--study", "qstudy", "--format", "json", "--tracking-uri", small_store)
    assert newest.exit_code == 0, newest.output
    assert [r["trial_id"] for r in json.loads(newest.stdout)] == ["n0"]
    assert "run qstudy-test-2 (newest of 2; --run NAME for another, --all-runs for every run)" in newest.stderr
    mixed = invoke("query", "--study", "qstudy", "--all-runs", "--format", "json", "--tracking-uri", small_store)
    assert {r["trial_id"] for r in json.loads(mixed.stdout)} == {"q0", "q1", "q2", "n0"}
    # booleans as a study file writes them ('true'), though MLflow holds str(True)
    for literal in ("true", "True", "TRUE"):
        found = invoke("query", f"params.batch_norm = '{literal}'", "--format", "json", "--tracking-uri", small_store)
        assert [r["trial_id"] for r in json.loads(found.stdout)] == ["n0"], (literal, found.output)


def test_query_bad_filter_is_a_clean_error(small_store: str) -> None:
    result = invoke("query", "params.depth === 2", "--tracking-uri", small_store)
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_data_ls_lists_digits() -> None:
    result = invoke("data", "ls")
    assert result.exit_code == 0, result.output
    assert "digits" in result.output and "bundled" in result.output


def test_run_with_missing_dataset_fails_before_any_trial(tmp_path: Path, write_study: Any) -> None:
    study = write_study("nodata", """
  axes:
    lr: {grid: [1.0e-3, 2.0e-3]}
budgets:
  test: {epochs: 2}
""", fixed={"dataset": "mnist", "data_dir": str(tmp_path / "empty")})
    result = invoke("run", str(study), "--tracking-uri", f"sqlite:///{tmp_path}/m.db",
                    "--storage", str(tmp_path / "rr"))
    assert result.exit_code == 2, result.output
    assert "vaelab data fetch mnist" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "rr").exists()
