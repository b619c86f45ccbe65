"""Reports of different study runs never collide, and read-only commands neither create a
tracking database nor show a traceback.

The store is the real SQLite MLflow store of tests/report_fixtures.py: the study has an
older study run (one trial) and a newer one (the full grid).
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from report_fixtures import STUDY, T0, StudyFixture, make_study
from vaelab.cli import app
from vaelab.errors import ReportError
from vaelab.report.build import RUN_MARKER, build_report

OLD_RUN = f"study-{T0}"  # the older study run's name (report_fixtures._parent_run)
NEW_RUN = f"study-{T0 + 1_000_000}"

runner = CliRunner()


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> StudyFixture:
    return make_study(tmp_path_factory.mktemp("store"))


def _run_ids(folder: Path) -> set[str]:
    return set(pq.read_table(folder / "trials.parquet", columns=["mlflow_run_id"]).column(0).to_pylist())


def test_each_run_gets_its_own_folder_and_another_run_is_never_overwritten(
    study: StudyFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    newest = build_report(study.study, study.tracking_uri, cache_dir=tmp_path / "cache")
    assert newest.out_dir == Path("reports") / STUDY / NEW_RUN
    old = build_report(study.study, study.tracking_uri, run=OLD_RUN, cache_dir=tmp_path / "cache")
    assert old.out_dir == Path("reports") / STUDY / OLD_RUN
    assert len(_run_ids(old.out_dir)) == 1 and _run_ids(newest.out_dir) == set(study.run_ids.values())
    assert json.loads((old.out_dir / RUN_MARKER).read_text())["run_name"] == OLD_RUN

    before = (newest.out_dir / "trials.parquet").read_bytes()
    with pytest.raises(ReportError, match="holds the report of another run"):
        build_report(study.study, study.tracking_uri, newest.out_dir, run=OLD_RUN, cache_dir=tmp_path / "cache")
    assert (newest.out_dir / "trials.parquet").read_bytes() == before  # untouched

    again = build_report(study.study, study.tracking_uri, newest.out_dir, cache_dir=tmp_path / "cache")
    assert _run_ids(again.out_dir) == set(study.run_ids.values())  # the same run may rebuild its folder
    replaced = build_report(study.study, study.tracking_uri, newest.out_dir, run=OLD_RUN, overwrite=True,
                            cache_dir=tmp_path / "cache")
    assert len(_run_ids(replaced.out_dir)) == 1


def test_a_folder_written_before_run_json_is_recognised_by_its_trial_runs(
    study: StudyFixture, tmp_path: Path
) -> None:
    """The committed evidence folders (reports/<study>/) have no run.json: rebuilding them
    from their own run with --out works, another run is refused."""
    legacy = tmp_path / STUDY
    build_report(study.study, study.tracking_uri, legacy, cache_dir=tmp_path / "cache")
    (legacy / RUN_MARKER).unlink()
    with pytest.raises(ReportError, match="trial runs that study run"):
        build_report(study.study, study.tracking_uri, legacy, run=OLD_RUN, cache_dir=tmp_path / "cache")
    assert not (legacy / RUN_MARKER).exists()
    result = runner.invoke(app, ["report", study.study, "--tracking-uri", study.tracking_uri, "--out", str(legacy)])
    assert result.exit_code == 0, result.output
    assert (legacy / RUN_MARKER).is_file()


def test_cli_report_picks_a_run_and_lists_the_runs_there_are(
    study: StudyFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VAELAB_CACHE_DIR", str(tmp_path / "cache"))
    picked = runner.invoke(app, ["report", study.study, "--run", OLD_RUN, "--tracking-uri", study.tracking_uri])
    assert picked.exit_code == 0, picked.output
    assert f"reports/{STUDY}/{OLD_RUN}" in picked.output

    unknown = runner.invoke(app, ["report", study.study, "--run", "nosuch", "--tracking-uri", study.tracking_uri])
    assert unknown.exit_code == 2 and "Traceback" not in unknown.output
    assert "no run named 'nosuch'" in unknown.output and OLD_RUN in unknown.output and NEW_RUN in unknown.output


def test_report_of_an_unknown_study_is_one_clean_error(study: StudyFixture) -> None:
    result = runner.invoke(app, ["report", "nosuch", "--tracking-uri", study.tracking_uri])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: no study 'nosuch' at ")
    assert "studies there: icml-mini" in result.output  # the names there are, to pick from
    assert "Traceback" not in result.output


@pytest.mark.parametrize("command", [["report", "smoke"], ["query", "--study", "smoke"], ["query"], ["ls"]])
def test_read_only_commands_never_create_a_tracking_database(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "nope.db"
    result = runner.invoke(app, [*command, "--tracking-uri", "sqlite:///nope.db"])
    assert not missing.exists() and list(tmp_path.iterdir()) == []
    assert "Traceback" not in result.output
    if command[0] == "ls":
        assert result.exit_code == 0 and "no studies recorded" in result.output
    else:
        assert result.exit_code == 2 and f"no tracking database at {missing}" in result.output
