"""What `vaelab run --set`, `resume`, the run's counts and the CLI's run names promise a user:

- `--set` is the top layer of every trial (over `fixed`, study `overrides` and the budget),
  pins an axis it names, is refused in words when it would make two trials identical, and
  the run's first lines say what it overrode;
- a study with cohorts is counted as trials in cohorts, and a cohort's time once;
- `vaelab resume` of a finished run says there is nothing to resume, before data checks or Ray;
- a stopped study's summary shows its cohorts' members alike (`interrupted`);
- `--run` takes a unique start of a run's name; `claims --from` says how to name a study file.

Real parts throughout: study files on disk, SQLite MLflow stores, local Ray for the run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient
from ray.tune.experiment import Trial
from typer.testing import CliRunner

from vaelab.cli import app
from vaelab.config import trial_config
from vaelab.errors import SpecError
from vaelab.studies import expand_trials, load_study, resolved_yaml
from vaelab.studies.expand import command_line_notes
from vaelab.studies.progress import process_seconds, progress_line, summary_table, time_line, trial_count
from vaelab.studies.storage import write_sidecar
from vaelab.studies.trial import COHORT_KEY, STATUS_METRIC
from vaelab.tracking.connection import check_reachable
from vaelab.tracking.runs import TrialRun, finish_study_run, start_study_run
from vaelab.tracking.tags import TAG_COHORT, TAG_RUN_NAME, TAG_TRIAL_KEY

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "ablations" / "smoke.yaml"
cli = CliRunner()

# Two variants x two seeds, trained as one cohort per variant; the budget sets epochs.
COHORT_STUDY = """
  axes:
    variant:
      grid:
        - {label: A, batch_norm: false}
        - {label: B, batch_norm: true}
budgets:
  b: {epochs: 1, eval_iw: 5}
seeds: [0, 1]
cohort: {size: 2}
search: {mode: grid, max_concurrent: 2}
resources: {cpu: 1, gpu: 0}
checkpoint_every: 1
"""


# --------------------------------------------------------------------------- --set: the expanded trials


def test_set_wins_over_the_budget_fixed_and_checkpoint_every() -> None:
    plain = expand_trials(load_study(SMOKE, "smoke"))
    sets = {"epochs": 12, "eval_iw": 7, "checkpoint_every": 3}
    trials = expand_trials(load_study(SMOKE, "smoke", overrides=sets))
    assert len(trials) == len(plain) == 11
    assert {(t.config["epochs"], t.config["eval_iw"], t.config["checkpoint_every"]) for t in trials} == {(12, 7, 3)}
    # the budget's warmup_fraction still scales warm-up, now of the epochs asked for
    assert {t.config["warmup_epochs"] for t in trials if t.variant.endswith("+WU")} == {round(0.2 * 12, 6)}
    assert {t.config["eval_every"] for t in trials} == {5}  # what --set leaves alone stays the budget's


def test_resolved_study_rebuilds_the_trials_a_set_made(tmp_path: Path) -> None:
    study = load_study(SMOKE, "smoke", overrides={"epochs": 12})
    resolved = tmp_path / "study.yaml"
    resolved.write_text(resolved_yaml(study))
    again = expand_trials(load_study(resolved))
    assert [(t.trial_id, t.config["epochs"]) for t in again] == [(t.trial_id, 12) for t in expand_trials(study)]


def test_set_of_an_axis_pins_it_and_the_notes_say_what_each_set_overrode() -> None:
    assert len(expand_trials(load_study(SMOKE, "smoke", overrides={"depth": 2}))) == 4
    assert {t.variant for t in expand_trials(load_study(SMOKE, "smoke", overrides={"variant": "VAE+BN"}))} == {"VAE+BN"}
    notes = command_line_notes(SMOKE, "smoke", {"epochs": 12, "depth": 2, "lr": 0.01, "kl_eval_samples": 4,
                                                "warmup_epochs": 3})
    assert notes == [
        "--set epochs=12 overrides budget smoke's epochs=30 and search_space.fixed.epochs=2000",
        "--set depth=2 pins axis depth (of 1, 2, 3)",
        "--set lr=0.01 overrides search_space.fixed.lr=0.001",
        "--set kl_eval_samples=4 sets kl_eval_samples (default 32)",
        "--set warmup_epochs=3 overrides budget smoke's warmup_fraction=0.2 and the items of axis variant",
    ]


def test_set_that_would_make_variants_identical_is_refused_in_words() -> None:
    with pytest.raises(SpecError) as caught:
        load_study(SMOKE, "smoke", overrides={"batch_norm": True})
    text = str(caught.value)
    assert text.startswith("command line: --set batch_norm: true — would make trials identical")
    assert "variant=VAE,depth=1,seed=0 and variant=VAE+BN,depth=1,seed=0" in text
    assert "--set variant=LABEL" in text
    # with the axis pinned to one item nothing collapses: the set applies
    pinned = expand_trials(load_study(SMOKE, "smoke", overrides={"variant": "VAE", "batch_norm": True}))
    assert {t.config["batch_norm"] for t in pinned} == {True}


@pytest.mark.parametrize(
    ("sets", "expected"),
    [
        (["epochz=3"], "command line: --set epochz: 3 — unknown trial parameter 'epochz' (did you mean 'epochs'?)"),
        (["epochs=0"], "command line: --set epochs: 0 — epochs must be >= 1"),
        (["variant=VAEX"], "command line: --set variant: VAEX — no variant labelled 'VAEX'"),
        (["warmup_epochs=3"], "command line: --set warmup_epochs: 3 — would make trials identical"),
    ],
)
def test_run_with_a_bad_set_is_one_clean_error_before_anything_starts(tmp_path: Path, sets: list[str], expected: str) -> None:
    args = [arg for item in sets for arg in ("--set", item)]
    result = cli.invoke(app, ["run", str(SMOKE), *args, "--tracking-uri", f"sqlite:///{tmp_path}/m.db",
                              "--storage", str(tmp_path / "ray_results")])
    assert result.exit_code == 2, result.output
    assert expected in result.output and "Traceback" not in result.output
    assert not (tmp_path / "m.db").exists() and not (tmp_path / "ray_results").exists()


# --------------------------------------------------------------------------- counts and times


def test_counts_say_trials_in_cohorts_and_a_cohort_counts_its_time_once() -> None:
    assert trial_count(11, 11) == "11 trials"
    assert trial_count(16, 2) == "16 trials in 2 cohorts"
    assert trial_count(2, 1) == "2 trials in 1 cohort"
    rows = [_row("a0", "c1", 30.0), _row("a1", "c1", 30.0), _row("a2", "c1", 12.0),  # a diverged member stops early
            _row("b0", "c2", 20.0), _row("b1", "c2", 20.0)]
    assert process_seconds(rows) == {"c1": 30.0, "c2": 20.0}
    line = time_line([0.0, 10.0, 70.0, 80.0], rows)
    assert "(50 s of it training and evaluating, summed over 2 cohorts of 5 trials;" in line
    assert "summed over 2 trials;" in time_line([0.0, 1.0, 2.0, 3.0], [_row("x", "", 1.0), _row("y", "", 1.0)])


def test_progress_line_counts_cohorts_as_cohorts() -> None:
    members = [{"trial_key": f"seed={s}", "config": {"epochs": 4}} for s in (0, 1)]
    trial = Trial("cohort_trainable", stub=True, config={COHORT_KEY: {"index": 0, "members": members}})
    trial.set_status("TERMINATED")
    trial.run_metadata.last_result = {"training_iteration": 4, STATUS_METRIC: "finished"}
    assert "] 1/1 cohorts done · 0 running" in progress_line([trial], "test_ll_iw", "max", 1, 0.0, {})


def test_a_stopped_studys_summary_shows_every_unfinished_member_as_interrupted() -> None:
    rows = [_row("seed=0", "c1", 3.0, "stopped"), _row("seed=1", "c1", 3.0, "running"),
            _row("seed=2", "c2", 9.0, "finished")]
    table = summary_table(rows, "test_ll_iw", interrupted=True)
    status = {line.split()[0]: line.split()[-1] for line in table.splitlines()[2:]}
    assert status == {"seed=0": "interrupted", "seed=1": "interrupted", "seed=2": "finished"}
    assert "running" in summary_table(rows, "test_ll_iw")  # a live study shows MLflow's statuses


def _row(key: str, cohort: str, seconds: float, status: str = "finished") -> dict[str, Any]:
    return {"trial_key": key, "run_id": f"run-{key}", "cohort": cohort, "variant": "", "status": status,
            "params": {"seed": key[-1]}, "metrics": {"wall_time_s": seconds, "epoch": 1.0}}


# --------------------------------------------------------------------------- resume of a finished run


def _finished_run(tmp_path: Path, uri: str, members: int = 2) -> Path:
    """A study run of one cohort whose members all finished, as MLflow and the sidecar record it;
    the dataset it names has since gone."""
    info = start_study_run(uri, "done", "done-b-1", spec_hash="h", budget="b", study_yaml="name: done\n")
    config = trial_config({"dataset": "mnist", "data_dir": str(tmp_path / "gone"), "depth": 1, "epochs": 1})
    for index in range(members):
        run = TrialRun.open(info, f"t{index}", run_name=f"seed={index}", params=config.to_params(),
                            tags={TAG_COHORT: "cohort0", TAG_TRIAL_KEY: f"seed={index}", TAG_RUN_NAME: "done-b-1"})
        run.log_epoch(1, {"epoch": 1, "test_ll_iw": -90.0})
        run.finish("finished")
    finish_study_run(info, "finished")
    storage = tmp_path / "ray_results"
    write_sidecar(str(storage / "done-b-1"), {
        "format": 1, "study": "done", "budget": "b", "run_name": "done-b-1", "experiment_id": info.experiment_id,
        "parent_run_id": info.parent_run_id, "tracking_uri": uri, "resources": {"cpu": 1, "gpu": 0},
        "n_trials": 1, "n_members": 2, "datasets": [["mnist", str(tmp_path / "gone")]], "created": "2026-12-01T00:00:00",
    })
    return storage


def test_resume_of_a_finished_run_says_there_is_nothing_to_resume(tmp_path: Path, tracking_uri: str) -> None:
    import ray

    storage = _finished_run(tmp_path, check_reachable(tracking_uri))
    ray_before = ray.is_initialized()  # another test's session Ray may be up
    result = cli.invoke(app, ["resume", "done", "--storage", str(storage)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("nothing to resume: every trial of study run done-b-1 (study done) has "
                                    "ended in MLflow (2 finished); it has no report yet.")
    assert "`vaelab report done --run done-b-1`" in result.output
    assert ray.is_initialized() == ray_before and "mnist" not in result.output  # no data check, no Ray


def test_resume_of_a_run_with_a_cohort_not_yet_started_goes_on(tmp_path: Path, tracking_uri: str) -> None:
    storage = _finished_run(tmp_path, check_reachable(tracking_uri))
    sidecar = storage / "done-b-1" / "vaelab_study.json"
    meta = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**meta, "n_trials": 2, "n_members": 4}))  # a second cohort has no runs yet
    result = cli.invoke(app, ["resume", "done-b-1", "--storage", str(storage)])
    assert result.exit_code == 2 and "vaelab data fetch mnist" in result.output  # on to the data check


# --------------------------------------------------------------------------- run names and study files


@pytest.fixture
def two_runs(tracking_uri: str) -> str:
    uri = check_reachable(tracking_uri)
    for name in ("names-short-1", "names-smoke-1", "names-smoke-2"):
        info = start_study_run(uri, "names", name, spec_hash="h", budget="b", study_yaml="name: names\n")
        config = trial_config({"dataset": "digits", "depth": 1, "epochs": 1})
        run = TrialRun.open(info, f"t-{name}", run_name="depth=1", params=config.to_params(),
                            tags={TAG_RUN_NAME: name})
        run.finish("finished")
        finish_study_run(info, "finished")
    return uri


def test_run_takes_a_unique_start_of_a_run_name_and_refuses_an_ambiguous_one(two_runs: str) -> None:
    unique = cli.invoke(app, ["query", "--study", "names", "--run", "names-sh", "--tracking-uri", two_runs])
    assert unique.exit_code == 0, unique.output
    assert "names-short-1" in unique.output and "names-smoke" not in unique.output
    several = cli.invoke(app, ["query", "--study", "names", "--run", "names-sm", "--tracking-uri", two_runs])
    assert several.exit_code == 2 and "Traceback" not in several.output
    assert "--run 'names-sm' starts several runs of study names: names-smoke-2, names-smoke-1" in several.output
    none = cli.invoke(app, ["query", "--study", "names", "--run", "other", "--tracking-uri", two_runs])
    assert none.exit_code == 2 and "its runs: names-smoke-2, names-smoke-1, names-short-1" in none.output


def test_claims_from_a_folder_without_a_study_file_names_the_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = cli.invoke(app, ["claims", "mystudy", "--from", str(tmp_path)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "ablations/mystudy.yaml does not exist here; name the study's YAML with --study-file PATH" in result.output


# --------------------------------------------------------------------------- a real run


@pytest.mark.slow  # a cohort study on local Ray: ~40 s on 2 cores
def test_run_applies_set_over_the_budget_and_says_so(tmp_path: Path, ray_local: Any, write_study: Any,
                                                     tracking_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = write_study("setstudy", COHORT_STUDY)
    result = cli.invoke(app, ["run", str(path), "--budget", "b", "--set", "epochs=2", "--name", "setstudy-b-1",
                              "--tracking-uri", tracking_uri, "--storage", str(tmp_path / "ray_results"),
                              "--no-report"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "· 4 trials in 2 cohorts ·" in lines[0]
    assert lines[1] == "  --set epochs=2 overrides budget b's epochs=1"
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("setstudy")
    trials = client.search_runs([experiment.experiment_id], "tags.`vaelab.role` = 'trial'")
    assert len(trials) == 4 and {r.data.params["epochs"] for r in trials} == {"2"}
    assert {r.data.metrics["epoch"] for r in trials} == {2.0}
    parent = client.search_runs([experiment.experiment_id], "tags.`vaelab.role` = 'study'")[0]
    assert (parent.data.tags["vaelab.trials_planned"], parent.data.tags["vaelab.cohorts_planned"]) == ("4", "2")
    assert [ln for ln in lines if ln.startswith("time ")][0].count("summed over 2 cohorts of 4 trials") == 1
    again = cli.invoke(app, ["resume", "setstudy-b-1", "--storage", str(tmp_path / "ray_results")])
    assert again.exit_code == 0 and again.output.startswith("nothing to resume"), again.output
