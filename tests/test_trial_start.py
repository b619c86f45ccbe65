"""What a trial does when it starts, in a study of any size and in a process Tune reuses.

- which of its members already ended is asked by each member's own trial id, so trial
  runs of the rest of the study neither change the answer nor get read;
- a retried member continues its run among many others, never a duplicate;
- each trial sets its CPU threads and drops earlier trials' compiled graphs (a reused
  process would otherwise stop compiling after 8 trials).

Real SQLite MLflow stores; no Ray (the study on Ray with reused processes is the grid
study of test_runner.py).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import pytest
import torch
from mlflow.tracking import MlflowClient

from vaelab.studies import trial
from vaelab.studies.plan import Member
from vaelab.tracking.queries import ended_trial_runs
from vaelab.tracking.runs import StudyRunInfo, TrialRun, start_study_run
from vaelab.tracking.tags import TAG_ATTEMPT, TAG_PARENT, TAG_TRIAL_ID

UNRELATED = 60


def open_run(info: StudyRunInfo, trial_id: str, status: str | None) -> TrialRun:
    run = TrialRun.open(info, trial_id, run_name=trial_id, params={"depth": 2}, tags={})
    run.log_epoch(1, {"epoch": 1, "test_elbo": -90.0})
    if status:
        run.finish(status)
    return run


def add_unrelated_runs(info: StudyRunInfo, count: int) -> None:
    """Ended trial runs of the same study run, written the quick way (no training)."""
    client = MlflowClient(info.tracking_uri)
    for i in range(count):
        tags = {"vaelab.role": "trial", TAG_TRIAL_ID: f"other-{i}", TAG_PARENT: info.parent_run_id,
                "vaelab.status": "finished"}
        run_id = client.create_run(info.experiment_id, tags=tags).info.run_id
        client.set_terminated(run_id, "FINISHED")


@pytest.fixture
def study(tracking_uri: str) -> dict[str, Any]:
    """A study run whose members a..f ended in various ways, and a second run of the study
    whose member `c` finished (a trial id is unique only under its own study run)."""
    info = start_study_run(tracking_uri, "startstudy", "run-1", spec_hash="0" * 64, budget="test",
                           study_yaml="name: startstudy\n")
    other = start_study_run(tracking_uri, "startstudy", "run-2", spec_hash="0" * 64, budget="test",
                            study_yaml="name: startstudy\n")
    runs = {tid: open_run(info, tid, status)
            for tid, status in (("a", "finished"), ("b", None), ("d", "diverged"), ("f", "failed"))}
    open_run(other, "c", "finished")
    return {"info": info, "runs": runs}


def record_filters(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every filter string MLflow is searched with from now on."""
    filters: list[str] = []
    search = MlflowClient.search_runs

    def spy(self: MlflowClient, *args: Any, **kwargs: Any) -> Any:
        filters.append(kwargs.get("filter_string", args[1] if len(args) > 1 else ""))
        return search(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "search_runs", spy)
    return filters


def test_ended_members_are_found_by_their_own_trial_ids(
    study: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    info, wanted = study["info"], ["a", "b", "c", "d", "f", "never-started"]
    before = ended_trial_runs(info, wanted)
    assert set(before) == {"a", "d"}
    assert before["a"]["status"] == "finished" and before["d"]["status"] == "diverged"
    assert before["a"]["run_id"] == study["runs"]["a"].run_id

    add_unrelated_runs(info, UNRELATED)
    filters = record_filters(monkeypatch)
    after = ended_trial_runs(info, wanted)
    assert {k: v["run_id"] for k, v in after.items()} == {k: v["run_id"] for k, v in before.items()}
    named = {re.search(rf"tags.`{TAG_TRIAL_ID}` = '([^']*)'", f).group(1) for f in filters}
    assert named == set(wanted)  # one search per member, each by its trial id
    assert all(f"tags.`{TAG_PARENT}` = '{info.parent_run_id}'" in f for f in filters)


def member(trial_id: str) -> Member:
    return Member(trial_key=trial_id, trial_id=trial_id, variant="", config={})


def test_a_cohort_whose_members_all_ended_is_not_trained_again(study: dict[str, Any]) -> None:
    info = study["info"]
    add_unrelated_runs(info, UNRELATED)
    ctx = {**dataclasses.asdict(info), "metric": "test_ll_iw"}
    ended = trial._ended_payload(ctx, [member("a"), member("d")])
    assert ended is not None and ended["members"] == 2 and ended["members_diverged"] == 1
    assert ended[trial.STATUS_METRIC] == "finished" and ended["test_elbo"] == -90.0
    assert math.isnan(ended["test_ll_iw"])  # never evaluated: Tune still gets its metric
    for unfinished in ("b", "f", "never-started"):  # running, failed, absent: trained (again)
        assert trial._ended_payload(ctx, [member("a"), member(unfinished)]) is None


def test_a_retried_member_continues_its_run_among_many(study: dict[str, Any]) -> None:
    info = study["info"]
    add_unrelated_runs(info, UNRELATED)
    client = MlflowClient(info.tracking_uri)
    count = len(client.search_runs([info.experiment_id], max_results=1000))
    again = TrialRun.open(info, "b", run_name="b", params={"depth": 2}, tags={})
    assert again.run_id == study["runs"]["b"].run_id and again.last_step == 1
    assert client.get_run(again.run_id).data.tags[TAG_ATTEMPT] == "2"
    assert len(client.search_runs([info.experiment_id], max_results=1000)) == count


def test_each_trial_sets_its_own_cpu_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Threads are process-wide: the allotment of the trial that starts wins, whatever an
    earlier trial in the same process set."""
    kept = torch.get_num_threads()
    try:
        for allotted, left_behind in ((3.0, 1), (1.0, 3), (0.5, 2)):
            torch.set_num_threads(left_behind)
            monkeypatch.setattr(trial, "ray_assigned_cpus", lambda a=allotted: a)
            assert trial.prepare_process() == max(1, int(allotted)) == torch.get_num_threads()
    finally:
        torch.set_num_threads(kept)


class Step:
    """A trial's compiled step: a bound method of a new object each trial, like CohortStep."""

    def __init__(self, scale: float) -> None:
        self.layer, self.scale = torch.nn.Linear(4, 4), scale

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        return (self.layer(x) * self.scale).sum()


def compile_trials(trials: int, forget: bool) -> bool:
    """Whether the compile cache refused a trial (the recompile limit) over `trials` trials."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    x = torch.randn(2, 4)
    for t in range(trials):
        if forget:
            assert trial.forget_compiled_trials()
        torch.compile(Step(float(t)).loss, backend="eager", dynamic=False)(x)
    return any("recompile" in reason.lower() for reason in counters["unimplemented"])


def test_compiled_steps_of_earlier_trials_are_forgotten() -> None:
    limit = 2  # torch's is 8: the same wall, met sooner
    with torch._dynamo.config.patch(recompile_limit=limit):
        assert compile_trials(limit + 2, forget=False)  # what a reused process met before
        assert not compile_trials(limit + 2, forget=True)
