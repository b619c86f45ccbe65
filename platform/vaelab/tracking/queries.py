"""Lookups of trial and study runs, below the write side: runs.py imports this module, never
the other way round.

`StudyRunInfo` names a study run's parent; `find_runs` (runs by tags) serves runs.py, and
`ended_trial_runs` a starting trial (its own runs by key). The runner's summary and
resume, and the CLI's `ls` / `query`, read trial runs as plain rows (`trial_row`). The
report's read side is read.py (whose param typing and run names this module reuses).
Imports mlflow where a client call is made.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

from vaelab.errors import TrackingError
from vaelab.tracking.bulk import filter_runs, open_source, quote
from vaelab.tracking.paging import PAGE_SIZE, all_pages
from vaelab.tracking.read import param_kind, study_run_name
from vaelab.tracking.connection import client_for
from vaelab.tracking.retry import with_retry
from vaelab.tracking.tags import (
    ROLE_STUDY,
    ROLE_TRIAL,
    TAG_ATTEMPT,
    TAG_BUDGET,
    TAG_COHORT,
    TAG_COHORTS_PLANNED,
    TAG_NODE,
    TAG_PARENT,
    TAG_ROLE,
    TAG_RUN_NAME,
    TAG_STATUS,
    TAG_STUDY,
    TAG_TRIAL_ID,
    TAG_TRIAL_KEY,
    TAG_TRIALS_PLANNED,
    TAG_VARIANT,
    trial_status,
)
from vaelab.tracking.uri import redact_uri, resolve_tracking_uri

if TYPE_CHECKING:  # pragma: no cover - typing only: mlflow is imported where a client call
    # is made, so a read on SQL never loads it
    from mlflow.tracking import MlflowClient


@dataclass(frozen=True)
class StudyRunInfo:
    """A study run's parent as plain strings: what its trials look up their runs under
    (written by runs.py, read by the lookups here), picklable into a Tune config."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    study: str


def find_runs(client: MlflowClient, experiment_id: str, tags: Mapping[str, str], with_retries: bool = True):
    """Active runs of the experiment whose tags equal `tags`, newest first."""
    clauses = " and ".join(f"tags.`{k}` = '{quote(v)}'" for k, v in tags.items())

    def call():
        return all_pages(lambda token: client.search_runs(
            [experiment_id], filter_string=clauses, max_results=PAGE_SIZE,
            order_by=["attributes.start_time DESC"], page_token=token))

    return with_retry(call, "search runs") if with_retries else call()


def list_trial_runs(info: StudyRunInfo) -> list[dict[str, Any]]:
    """The child runs of the study run `info`, one row each (see `trial_row`), newest first.

    Read in bulk (tracking/bulk.py): the runner's summary and resume read every trial run
    once per study, which through MLflow's run objects costs milliseconds a run."""
    source = open_source(info.tracking_uri)
    tags = {TAG_ROLE: ROLE_TRIAL, TAG_PARENT: info.parent_run_id}
    rows = [trial_row(r) for page in source.runs([info.experiment_id], tags) for r in page]
    return rows[::-1]


def trial_run_match(parent_run_id: str, trial_id: str) -> dict[str, str]:
    """The tags that single out one trial member's run under its study run: its own key, so
    finding it costs the same whatever the number of trial runs in the study."""
    return {TAG_TRIAL_ID: trial_id, TAG_PARENT: parent_run_id}


def ended_trial_runs(info: StudyRunInfo, trial_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """trial_id -> row (see `trial_row`) of those of `trial_ids` whose run under `info`
    already ended with a result (finished or diverged): a resumed or retried trial whose
    members all ended must not be trained again, whatever Tune's saved state says.

    One search per member, filtered by its trial id: every trial start asks this, so
    reading the whole study here would make a study's cost grow with its square. The run
    that decides is the oldest, the one `TrialRun.open` continues."""
    client = client_for(info.tracking_uri)
    ended = {}
    for trial_id in dict.fromkeys(trial_ids):
        runs = find_runs(client, info.experiment_id, trial_run_match(info.parent_run_id, trial_id))
        row = trial_row(runs[-1]) if runs else None
        if row is not None and row["status"] in ("finished", "diverged"):
            ended[trial_id] = row
    return ended


def search_trial_runs(
    tracking_uri: str, filter_string: str = "", study: Optional[str] = None, run: Optional[str] = None
) -> list[dict[str, Any]]:
    """Trial runs matching an MLflow search filter (`params.depth = '2' and metrics.test_elbo > -90`),
    in one study or in every study of the store; `run`: only the trials of that study run
    (its name as `vaelab run` printed it, or its MLflow run id). Each row's `run_name` names
    its study run.

    Read in bulk and a page at a time (tracking/bulk.py); the filter is MLflow's own
    evaluator, applied to each page, so its semantics are MLflow's."""
    uri = resolve_tracking_uri(tracking_uri)
    source = open_source(uri)
    filter_string = bool_literals_as_stored(filter_string)
    _check_filter(filter_string)
    if study:
        exp = source.experiment(study)
        if exp is None:
            known = ", ".join(e.name for e in _studies(source)) or "none"
            raise TrackingError(f"no study {study!r} in {redact_uri(uri)}; studies there: {known}")
        experiment_ids = [exp.experiment_id]
    else:
        experiment_ids = [e.experiment_id for e in _studies(source)]
    if run:
        parents = [p.info.run_id for page in source.runs(experiment_ids, {TAG_ROLE: ROLE_STUDY}) for p in page
                   if run in (study_run_name(p), p.info.run_id)]
        if not parents:
            raise TrackingError(f"no study run named {run!r} in {redact_uri(uri)} (`vaelab ls` lists the run names)")
        selections = [{TAG_ROLE: ROLE_TRIAL, TAG_PARENT: parent} for parent in parents]
    else:
        selections = [{TAG_ROLE: ROLE_TRIAL}]
    return [trial_row(r) for tags in selections for page in source.runs(experiment_ids, tags)
            for r in filter_runs(page, filter_string)]


_BOOL_PARAM = re.compile(r"(params\.(`?)(\w+)\2\s*(?:=|!=)\s*)'(true|false)'", re.IGNORECASE)


def bool_literals_as_stored(filter_string: str) -> str:
    """`params.batch_norm = 'true'` as MLflow holds it ('True'): a YAML `true`, written as the
    study file writes it, must find the runs. Only params that are booleans change."""
    def canonical(match: re.Match[str]) -> str:
        if param_kind(match.group(3)) != "bool":
            return match.group(0)
        return f"{match.group(1)}'{match.group(4).capitalize()}'"

    return _BOOL_PARAM.sub(canonical, filter_string)


def _check_filter(filter_string: str) -> None:
    """A filter MLflow cannot parse fails before anything is read, with a hint for params."""
    if not filter_string.strip():
        return
    from mlflow.exceptions import MlflowException

    try:
        filter_runs([], filter_string)  # MLflow parses the filter even for no runs
    except MlflowException as err:
        hint = ("; MLflow keeps params as strings (= != LIKE only, e.g. \"params.depth = '3'\"): "
                "compare typed values with --where \"depth > 2\"") if "params." in filter_string else ""
        raise TrackingError(f"bad filter {filter_string!r}: {err.message}{hint}") from err


def list_studies(tracking_uri: str) -> list[dict[str, Any]]:
    """One row per study run (parent run) in the store: study, run name, status, budget, #trials.

    Trials are counted per study run by the database (or a page at a time through a
    server), never loaded whole."""
    uri = resolve_tracking_uri(tracking_uri)
    source = open_source(uri)
    rows = []
    for exp in _studies(source):
        counts = source.count_children(exp.experiment_id)
        for page in source.runs([exp.experiment_id], {TAG_ROLE: ROLE_STUDY}):
            rows += [_study_row(exp.name, run, counts.get(run.info.run_id, 0)) for run in page]
    return sorted(rows, key=lambda r: (r["study"], r["started"]))


def _study_row(study: str, run: Any, trials: int) -> dict[str, Any]:
    tags = run.data.tags
    return {
        "study": study,
        "run_name": tags.get(TAG_RUN_NAME, run.info.run_name or ""),
        "status": tags.get(TAG_STATUS, run.info.status.lower()),
        "budget": tags.get(TAG_BUDGET, ""),
        "trials": trials,
        "planned": tags.get(TAG_TRIALS_PLANNED, ""),
        "cohorts": tags.get(TAG_COHORTS_PLANNED, ""),
        "started": time.strftime("%Y-%m-%d %H:%M", time.localtime((run.info.start_time or 0) / 1000)),
        "run_id": run.info.run_id,
    }


def _studies(source: Any) -> list[Any]:
    """The store's experiments but MLflow's own `Default`."""
    return [e for e in source.experiments() if e.name != "Default"]


def trial_row(run) -> dict[str, Any]:
    """A child run as plain data: ids, tags that matter, params (strings), last metric values."""
    tags = run.data.tags
    status = trial_status(tags.get(TAG_STATUS), run.info.status)
    return {
        "run_id": run.info.run_id,
        "study": tags.get(TAG_STUDY, ""),
        "run_name": tags.get(TAG_RUN_NAME, ""),
        "trial_id": tags.get(TAG_TRIAL_ID, ""),
        "trial_key": tags.get(TAG_TRIAL_KEY) or run.info.run_name or tags.get(TAG_TRIAL_ID, ""),
        "variant": tags.get(TAG_VARIANT, ""),
        "status": status,
        "mlflow_status": run.info.status,
        "cohort": tags.get(TAG_COHORT, ""),
        "attempt": int(tags.get(TAG_ATTEMPT, "1") or 1),
        "node": tags.get(TAG_NODE, ""),
        "parent_run_id": tags.get(TAG_PARENT, ""),
        "params": dict(run.data.params),
        "metrics": {k: float(v) for k, v in run.data.metrics.items()},
        "start_time": run.info.start_time,
        "end_time": run.info.end_time,
    }
