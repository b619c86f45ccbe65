"""What a newcomer met around `vaelab resume` and repeated runs:

- resume trains nothing MLflow already shows as ended, whatever Tune's saved state says,
  and the progress line counts a trial Tune stopped early as stopped, not done;
- `vaelab resume STUDY` finds the one run of that study, and lists the runs otherwise;
- two runs of one study stay apart in `vaelab query` (a run column, --run);
- resume makes the same dataset pre-flight check as run: one clean error, no Ray.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient
from ray.tune.experiment import Trial
from typer.testing import CliRunner

from vaelab.cli import app
from vaelab.config import trial_config
from vaelab.errors import RunnerError
from vaelab.studies import load_study, runner
from vaelab.studies.progress import progress_line
from vaelab.studies.storage import find_run_name, write_sidecar
from vaelab.studies.trial import CTX_KEY, STATUS_METRIC
from vaelab.tracking import runs as tracking_runs
from vaelab.tracking.connection import check_reachable
from vaelab.tracking.runs import TrialRun, finish_study_run, start_study_run
from vaelab.tracking.tags import TAG_RUN_NAME, TAG_TRIAL_KEY, TAG_VARIANT

cli = CliRunner()

TWO_TRIALS = """
  axes:
    variant:
      grid:
        - {label: A, batch_norm: false}
        - {label: B, batch_norm: true}
budgets:
  test: {epochs: 2}
search: {mode: grid, max_concurrent: 2}
resources: {cpu: 1, gpu: 0}
checkpoint_every: 1
"""


# --------------------------------------------------------------------------- progress line


def _trial(status: str, iteration: int, vaelab_status: str | None, epochs: int = 4) -> Trial:
    trial = Trial("cohort_trainable", stub=True, config={CTX_KEY: {"epochs": epochs}})
    trial.set_status(status)
    if iteration:
        trial.run_metadata.last_result = {"training_iteration": iteration, STATUS_METRIC: vaelab_status,
                                          "test_ll_iw": -90.0 - iteration}
    return trial


def test_progress_line_counts_a_trial_stopped_early_as_stopped_not_done() -> None:
    trials = [_trial(Trial.TERMINATED, 4, "finished"), _trial(Trial.TERMINATED, 4, "diverged"),
              _trial(Trial.TERMINATED, 2, "running"),  # Ctrl-C stopped it at epoch 2 of 4
              _trial(Trial.PENDING, 0, None)]  # never started
    line = progress_line(trials, "test_ll_iw", "max", 4, time.monotonic() - 10, {})
    assert "2/4 done" in line and "0 running" in line and "1 stopped" in line and "1 diverged" in line


# --------------------------------------------------------------------------- run names


def _sidecar(storage: Path, run_name: str, study: str, created: str, **extra: Any) -> None:
    meta = {"study": study, "run_name": run_name, "created": created, **extra}
    write_sidecar(str(storage / run_name), meta)


def test_resume_finds_a_run_by_its_study_name_and_lists_the_runs_otherwise(tmp_path: Path) -> None:
    storage = tmp_path / "ray_results"
    _sidecar(storage, "smoke-smoke-20261130-010000", "smoke", "2026-11-30T01:00:00")
    _sidecar(storage, "mnist-short-20261130-020000", "mnist", "2026-11-30T02:00:00")
    _sidecar(storage, "mnist-short-20261130-030000", "mnist", "2026-11-30T03:00:00")
    (storage / "not-a-study").mkdir()
    assert find_run_name(str(storage), "smoke") == "smoke-smoke-20261130-010000"
    assert find_run_name(str(storage), "mnist-short-20261130-020000") == "mnist-short-20261130-020000"
    with pytest.raises(RunnerError, match="matches several runs") as several:
        find_run_name(str(storage), "mnist")
    assert "mnist-short-20261130-030000, mnist-short-20261130-020000" in str(several.value)

    result = cli.invoke(app, ["resume", "nosuch", "--storage", str(storage)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "no vaelab study run 'nosuch'" in result.output
    assert all(name in result.output for name in ("smoke-smoke-20261130-010000", "mnist-short-20261130-030000"))


# --------------------------------------------------------------------------- query


@pytest.fixture
def two_runs(tracking_uri: str) -> str:
    """One study run twice (same trial ids, as the same grid gives), written without Ray."""
    uri = check_reachable(tracking_uri)
    for run_name, base in (("twice-test-1", -100.0), ("twice-test-2", -90.0)):
        info = start_study_run(uri, "twice", run_name, spec_hash="h", budget="test", study_yaml="name: twice\n")
        for depth in (1, 3):
            config = trial_config({"dataset": "digits", "depth": depth, "latent_dims": "8-4-2", "hidden_dims": "32-16-8"})
            run = TrialRun.open(info, f"t{depth}", run_name=f"depth={depth}", params=config.to_params(),
                                tags={TAG_VARIANT: "VAE", TAG_TRIAL_KEY: f"depth={depth}",
                                      TAG_RUN_NAME: run_name})
            run.log_epoch(1, {"epoch": 1, "test_ll_iw": base + depth})
            run.finish("finished")
        finish_study_run(info, "finished")
    return uri


def test_query_keeps_two_runs_of_a_study_apart(two_runs: str) -> None:
    newest = cli.invoke(app, ["query", "--study", "twice", "--format", "json", "--tracking-uri", two_runs])
    assert newest.exit_code == 0, newest.output  # the newest run, as report and claims read it
    assert {r["run_name"] for r in json.loads(newest.stdout)} == {"twice-test-2"}
    both = cli.invoke(app, ["query", "--study", "twice", "--all-runs", "--format", "json",
                            "--tracking-uri", two_runs])
    assert both.exit_code == 0, both.output
    records = json.loads(both.stdout)
    assert sorted((r["run_name"], r["trial_id"]) for r in records) == [
        ("twice-test-1", "t1"), ("twice-test-1", "t3"), ("twice-test-2", "t1"), ("twice-test-2", "t3")]

    one = cli.invoke(app, ["query", "--study", "twice", "--run", "twice-test-2", "--format", "json",
                           "--tracking-uri", two_runs])
    assert one.exit_code == 0, one.output
    assert {(r["run_name"], r["test_ll_iw"]) for r in json.loads(one.stdout)} == {
        ("twice-test-2", -89.0), ("twice-test-2", -87.0)}

    table = cli.invoke(app, ["query", "--study", "twice", "--run", "twice-test-1", "--where", "depth > 2",
                             "--tracking-uri", two_runs])
    assert table.exit_code == 0, table.output
    header, *rows = table.output.strip().splitlines()
    assert "run_name" in header and "depth" in header  # the axis shows although one row is left
    assert len(rows) == 1 and "twice-test-1" in rows[0] and " 3 " in rows[0] and "-97" in rows[0]


def test_query_errors_say_how_to_filter_typed_params(two_runs: str) -> None:
    mlflow_side = cli.invoke(app, ["query", "--study", "twice", "params.depth > 2", "--tracking-uri", two_runs])
    assert mlflow_side.exit_code == 2 and "Traceback" not in mlflow_side.output
    assert "--where" in mlflow_side.output and "vaelab.role" not in mlflow_side.output
    bad_where = cli.invoke(app, ["query", "--where", "dpth > 2", "--tracking-uri", two_runs])
    assert bad_where.exit_code == 2 and "dpth" in bad_where.output and "columns:" in bad_where.output
    no_run = cli.invoke(app, ["query", "--study", "twice", "--run", "nosuch", "--tracking-uri", two_runs])
    assert no_run.exit_code == 2 and "vaelab ls" in no_run.output
    no_study = cli.invoke(app, ["query", "--study", "nosuch", "--tracking-uri", two_runs])
    assert no_study.exit_code == 2 and "twice" in no_study.output


# --------------------------------------------------------------------------- pre-flight


def test_resume_checks_the_datasets_before_starting_ray(tmp_path: Path, tracking_uri: str) -> None:
    import ray

    storage = tmp_path / "ray_results"
    uri = check_reachable(tracking_uri)
    info = start_study_run(uri, "nodata", "nodata-test-1", spec_hash="h", budget="test", study_yaml="name: n\n")
    common = {"experiment_id": info.experiment_id, "parent_run_id": info.parent_run_id, "tracking_uri": uri,
              "resources": {"cpu": 1, "gpu": 0}}
    _sidecar(storage, "nodata-test-1", "nodata", "2026-11-30T01:00:00",
             datasets=[["mnist", str(tmp_path / "empty")]], **common)
    ray_before = ray.is_initialized()  # another test's session Ray may be up
    result = cli.invoke(app, ["resume", "nodata", "--storage", str(storage)])
    assert result.exit_code == 2, result.output
    assert "vaelab data fetch mnist" in result.output and "Traceback" not in result.output
    # refused before Ray started and before the study run was reopened (no timing threshold)
    assert ray.is_initialized() == ray_before and "resuming" not in result.output

    # a run whose sidecar predates the dataset list: the datasets come from its trial runs
    config = trial_config({"dataset": "mnist", "data_dir": str(tmp_path / "empty2"), "depth": 1})
    TrialRun.open(info, "t0", run_name="t0", params=config.to_params(), tags={}).finish("failed")
    _sidecar(storage, "nodata-test-2", "nodata", "2026-11-30T02:00:00", **common)
    result = cli.invoke(app, ["resume", "nodata-test-2", "--storage", str(storage)])
    assert result.exit_code == 2 and "empty2" in result.output and "Traceback" not in result.output


# --------------------------------------------------------------------------- no rerun


@pytest.mark.slow  # two tiny trials on Ray, then a resume: ~40 s on 2 cores
def test_resume_never_retrains_a_trial_mlflow_shows_as_ended(
    tmp_path: Path, ray_local: Any, write_study: Any, tracking_uri: str
) -> None:
    """Tune's saved state lags behind MLflow when Ctrl-C lands right after a trial's last
    epoch; here the state is edited to say both finished trials never ended. MLflow
    decides: resume says there is nothing to resume and trains nothing (attempts and end
    times stay as they were). The trial-side check for a cohort whose members ended while
    others did not is tests/test_trial_start.py's."""
    study = load_study(write_study("lagging", TWO_TRIALS))
    storage = tmp_path / "ray_results"
    first = runner.run_study(study, storage=str(storage), tracking_uri=tracking_uri, name="lagging-1",
                             report=False, progress=False, echo=lambda line: None)
    assert first.counts["finished"] == 2
    client = MlflowClient(tracking_uri)
    before = {r["trial_id"]: client.get_run(r["run_id"]) for r in first.trials}
    state = sorted((storage / "lagging-1").glob("experiment_state-*.json"))[-1]
    text = state.read_text()
    assert text.count('\\"status\\": \\"TERMINATED\\"') == 2, text[:500]
    state.write_text(text.replace('\\"status\\": \\"TERMINATED\\"', '\\"status\\": \\"PENDING\\"'))

    lines: list[str] = []
    again = runner.resume_study("lagging-1", str(storage), tracking_uri, report=False, progress=False,
                                echo=lines.append)
    assert again.ok and again.counts["finished"] == 2, lines
    assert lines[0].startswith("nothing to resume: every trial of study run lagging-1"), lines
    for trial_id, run in before.items():
        now = client.get_run(run.info.run_id)
        assert now.data.tags["vaelab.attempt"] == "1", trial_id  # never reopened
        assert now.info.end_time == run.info.end_time and now.data.tags["vaelab.status"] == "finished"


def test_query_parquet_reads_like_trials_parquet(two_runs: str, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = tmp_path / "q.parquet"
    result = cli.invoke(app, ["query", "--study", "twice", "--format", "parquet", "--out", str(out),
                              "--tracking-uri", two_runs])
    assert result.exit_code == 0, result.output
    schema = pq.read_schema(out)
    expected = {"mlflow_run_id": pa.string(), "run_name": pa.string(), "depth": pa.int64(), "epoch": pa.int64(),
                "rho": pa.float64(), "batch_norm": pa.bool_(), "test_ll_iw": pa.float64(),
                "data_dir": pa.string(), "init_from": pa.string()}  # null in every row, still typed
    for name, dtype in expected.items():
        assert schema.field(name).type == dtype, name
    assert "run_id" not in schema.names and schema.metadata is None


def test_study_runs_open_on_training_runs_and_record_the_codes_sha(two_runs: str, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Points 13 and 16: the MLflow UI's view, and the git SHA of the code that runs even
    when the study file (and the shell) are outside the repository."""
    import subprocess

    experiment = MlflowClient(two_runs).get_experiment_by_name("twice")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    monkeypatch.chdir(tmp_path)
    repo = Path(tracking_runs.__file__).resolve().parents[1]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    info = start_study_run(two_runs, "outside", "outside-1", spec_hash="h", budget="b",
                           study_yaml="name: outside\n", repo_dir=tmp_path)
    tags = MlflowClient(two_runs).get_run(info.parent_run_id).data.tags
    assert head and tags["vaelab.git_sha"].split("+")[0] == head
    assert tags["vaelab.study_git_sha"] == "unknown"  # tmp_path is no git repository
