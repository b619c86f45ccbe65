"""Lookups of trial and study runs: the small reads right after writing, shared with the read side.

`find_runs` (runs by tags) serves runs.py; the runner's summary and resume, and the CLI's
`ls` / `query`, read trial runs as plain rows (`trial_row`). The report's read side is
read.py. Imports mlflow.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from vaelab.tracking.connection import client_for, require_existing_store
from vaelab.tracking.retry import with_retry
from vaelab.tracking.tags import (
    ROLE_STUDY,
    ROLE_TRIAL,
    STATUSES,
    TAG_ATTEMPT,
    TAG_COHORT,
    TAG_NODE,
    TAG_PARENT,
    TAG_ROLE,
    TAG_RUN_NAME,
    TAG_STATUS,
    TAG_STUDY,
    TAG_TRIAL_ID,
    TAG_TRIAL_KEY,
    TAG_VARIANT,
)
from vaelab.tracking.uri import TrackingError, redact_uri, resolve_tracking_uri

if TYPE_CHECKING:  # pragma: no cover - typing only (runs.py imports this module)
    from vaelab.tracking.runs import StudyRunInfo


def find_runs(client: MlflowClient, experiment_id: str, tags: Mapping[str, str], with_retries: bool = True):
    """Active runs of the experiment whose tags equal `tags`, newest first."""
    clauses = [f"tags.`{k}` = '{_quote(v)}'" for k, v in tags.items()]

    def call():
        runs, token = [], None
        while True:
            page = client.search_runs(
                [experiment_id],
                filter_string=" and ".join(clauses),
                max_results=1000,
                order_by=["attributes.start_time DESC"],
                page_token=token,
            )
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    return with_retry(call, "search runs") if with_retries else call()


def _quote(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("'", "\\'")


def list_trial_runs(info: StudyRunInfo) -> list[dict[str, Any]]:
    """The child runs of the study run `info`, one row each (see `trial_row`)."""
    client = client_for(info.tracking_uri)
    runs = find_runs(client, info.experiment_id, {TAG_ROLE: ROLE_TRIAL, TAG_PARENT: info.parent_run_id})
    return [trial_row(r) for r in runs]


def ended_trial_runs(info: StudyRunInfo, trial_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """trial_id -> row (see `trial_row`) of those of `trial_ids` whose run under `info`
    already ended with a result (finished or diverged): a resumed or retried trial whose
    members all ended must not be trained again, whatever Tune's saved state says."""
    client = client_for(info.tracking_uri)
    wanted = set(trial_ids)
    runs = find_runs(client, info.experiment_id, {TAG_ROLE: ROLE_TRIAL, TAG_PARENT: info.parent_run_id})
    rows = [trial_row(r) for r in runs if r.data.tags.get(TAG_TRIAL_ID) in wanted]
    return {row["trial_id"]: row for row in rows if row["status"] in ("finished", "diverged")}


def search_trial_runs(
    tracking_uri: str, filter_string: str = "", study: Optional[str] = None, run: Optional[str] = None
) -> list[dict[str, Any]]:
    """Trial runs matching an MLflow search filter (`params.depth = '2' and metrics.test_elbo > -90`),
    in one study or in every study of the store; `run`: only the trials of that study run
    (its name as `vaelab run` printed it). Each row's `run_name` names its study run."""
    uri = resolve_tracking_uri(tracking_uri)
    require_existing_store(uri)
    client = client_for(uri)
    if study:
        exp = with_retry(lambda: client.get_experiment_by_name(study), "get experiment")
        if exp is None:
            known = ", ".join(e.name for e in _all_experiments(client)) or "none"
            raise TrackingError(f"no study {study!r} in {redact_uri(uri)}; studies there: {known}")
        experiment_ids = [exp.experiment_id]
    else:
        experiment_ids = [e.experiment_id for e in _all_experiments(client)]
    if not experiment_ids:
        return []
    clause = f"tags.`{TAG_ROLE}` = '{ROLE_TRIAL}'"
    if run:
        clause += f" and tags.`{TAG_RUN_NAME}` = '{_quote(run)}'"
    user_filter = filter_string
    filter_string = f"{clause} and {filter_string}" if filter_string.strip() else clause

    def call():
        runs, token = [], None
        while True:
            page = client.search_runs(experiment_ids, filter_string=filter_string, max_results=1000,
                                      order_by=["attributes.start_time ASC"], page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    try:
        runs = with_retry(call, "search runs", deadline_s=30)
    except MlflowException as err:
        if err.error_code in ("INVALID_PARAMETER_VALUE", "BAD_REQUEST"):
            hint = ("; MLflow keeps params as strings (= != LIKE only, e.g. \"params.depth = '3'\"): "
                    "compare typed values with --where \"depth > 2\"") if "params." in user_filter else ""
            raise TrackingError(f"bad filter {user_filter!r}: {err.message}{hint}") from err
        raise
    if run and not runs and not user_filter.strip():
        raise TrackingError(f"no trial runs of a study run named {run!r} in {redact_uri(uri)} "
                            "(`vaelab ls` lists the run names)")
    return [trial_row(r) for r in runs]


def list_studies(tracking_uri: str) -> list[dict[str, Any]]:
    """One row per study run (parent run) in the store: study, run name, status, budget, #trials."""
    uri = resolve_tracking_uri(tracking_uri)
    require_existing_store(uri)
    client = client_for(uri)
    rows = []
    for exp in _all_experiments(client):
        runs = with_retry(
            lambda e=exp: client.search_runs([e.experiment_id], max_results=5000), "search runs"
        )
        trials_by_parent: dict[str, int] = {}
        for run in runs:
            if run.data.tags.get(TAG_ROLE) == ROLE_TRIAL:
                parent = run.data.tags.get(TAG_PARENT, "")
                trials_by_parent[parent] = trials_by_parent.get(parent, 0) + 1
        for run in runs:
            tags = run.data.tags
            if tags.get(TAG_ROLE) != ROLE_STUDY:
                continue
            rows.append({
                "study": exp.name,
                "run_name": tags.get(TAG_RUN_NAME, run.info.run_name or ""),
                "status": tags.get(TAG_STATUS, run.info.status.lower()),
                "budget": tags.get("vaelab.budget", ""),
                "trials": trials_by_parent.get(run.info.run_id, 0),
                "planned": tags.get("vaelab.trials_planned", ""),
                "started": time.strftime("%Y-%m-%d %H:%M", time.localtime((run.info.start_time or 0) / 1000)),
                "run_id": run.info.run_id,
            })
    return sorted(rows, key=lambda r: (r["study"], r["started"]))


def _all_experiments(client: MlflowClient):
    exps, token = [], None
    while True:
        page = with_retry(
            lambda t=token: client.search_experiments(max_results=1000, page_token=t), "search experiments"
        )
        exps.extend(e for e in page if e.name != "Default")
        token = page.token
        if not token:
            return exps


def trial_row(run) -> dict[str, Any]:
    """A child run as plain data: ids, tags that matter, params (strings), last metric values."""
    tags = run.data.tags
    tag_status = tags.get(TAG_STATUS, "")
    status = tag_status if tag_status in STATUSES else (
        "failed" if run.info.status in ("FAILED", "KILLED") else
        "finished" if run.info.status == "FINISHED" else "running"
    )
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
