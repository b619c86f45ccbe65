"""Whole-study reads in time linear in the runs read: runs and metric histories in bulk.

Every read command (report, claims, query, ls) needs all runs of a study, each with its tags,
params and final metrics, and the report needs every metric history. Asking MLflow's client
run by run does not scale: `search_runs` builds a full entity per run (≈ 4 ms of CPU a run
on SQLite), and `get_metric_history` is one call per (run, metric) whose SQLite plan scans
every row of that metric key in the store, so a report grew with the square of the study.

Two sources give the same rows:

- `SqlRunSource`, for a database tracking URI (sqlite:///…, postgresql://…, mysql://…):
  set-based queries on MLflow's own tables (`runs`, `tags`, `params`, `latest_metrics`,
  `metrics`), a page of runs at a time, each table read through its run-id index. Read
  only; the tables' columns are checked first, and a store whose schema differs falls
  back to the API source.
- `ApiRunSource`, for a tracking server (http://…) or anything else: paged `search_runs`,
  and histories through the server's bulk-history endpoint (100 runs and one metric a
  call), falling back to one `get_metric_history` per (run, metric) where it is missing.

Rows have the shape of MLflow's `Run` (`.info.run_id`, `.data.tags` …), so MLflow's own
filter evaluator (`SearchUtils.filter`) applies a user's search filter to them unchanged.
"""

from __future__ import annotations

import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, Optional, Protocol, Sequence

import numpy as np
import pandas as pd
from vaelab.tracking.connection import client_for, require_existing_store
from vaelab.tracking.paging import PAGE_SIZE, pages
from vaelab.tracking.retry import with_retry
from vaelab.tracking.tags import ROLE_TRIAL, TAG_PARENT, TAG_ROLE

if TYPE_CHECKING:  # pragma: no cover - typing only: the SQL path never imports mlflow (seconds a command)
    from mlflow.tracking import MlflowClient

HISTORY_COLUMNS = ("run_id", "metric", "step", "value", "timestamp")  # one logged value a row
_DB_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
_SQL_PAGE = 900  # run ids per IN (...) list: below SQLite's oldest limit of 999 variables
# one JSON object of a run's (key, value) string pairs, by SQLAlchemy dialect name
_JSON_OBJECT_AGG = {
    "sqlite": "json_group_object({key}, value)",
    "postgresql": "CAST(json_object_agg({key}, value) AS TEXT)",
    "mysql": "JSON_OBJECTAGG({key}, value)",
}
_REST_BULK_RUNS = 100  # the server's limit of run ids per bulk-history call
_REST_BULK_MAX = 25000  # the server's limit of values per bulk-history call


@dataclass(frozen=True)
class RunInfo:
    """The attributes of a run that vaelab reads (names as on MLflow's RunInfo)."""

    run_id: str
    run_name: str
    experiment_id: str
    status: str
    start_time: Optional[int]
    end_time: Optional[int]
    artifact_uri: str
    lifecycle_stage: str = "active"
    user_id: str = ""

    @property
    def run_uuid(self) -> str:  # the alias MLflow's filter evaluator may ask for
        return self.run_id


@dataclass(frozen=True)
class RunData:
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)  # the last value logged per key


@dataclass(frozen=True)
class RunRecord:
    """One run: MLflow's `Run` shape, plain data."""

    info: RunInfo
    data: RunData


@dataclass(frozen=True)
class Experiment:
    experiment_id: str
    name: str


class RunSource(Protocol):
    """What the read side asks of a tracking store; each call is linear in what it returns."""

    def experiment(self, name: str) -> Optional[Experiment]: ...

    def experiments(self) -> list[Experiment]: ...

    def runs(self, experiment_ids: Sequence[str], tags: Mapping[str, str]) -> Iterator[list[RunRecord]]:
        """Active runs of the experiments whose tags equal `tags`, a page at a time, oldest first."""
        ...

    def histories(self, run_ids: Sequence[str], keys: Sequence[str]) -> Iterator[pd.DataFrame]:
        """Every logged value of the runs' metrics `keys` (HISTORY_COLUMNS), a batch at a time."""
        ...

    def count_children(self, experiment_id: str) -> dict[str, int]:
        """parent run id -> how many trial runs it has, counted without loading them."""
        ...


def is_database_uri(uri: str) -> bool:
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower()
    return scheme in _DB_SCHEMES


def open_source(tracking_uri: str) -> RunSource:
    """The fastest source for the store at `tracking_uri`: SQL on MLflow's tables for a
    database, else the API. A read never creates a tracking database, and credentials in
    the URI go where connection.client_for puts them, never into text."""
    require_existing_store(tracking_uri)
    if is_database_uri(tracking_uri):
        source = SqlRunSource.connect(tracking_uri)
        if source is not None:
            return source
    return ApiRunSource(client_for(tracking_uri))


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _metric_value(value: float, is_nan: Any) -> float:
    # MLflow stores NaN as value 0 with is_nan set (SQL has no NaN)
    return math.nan if is_nan else float(value)


# --------------------------------------------------------------------------- SQL


class SqlRunSource:
    """Set-based reads of MLflow's SQL tables (read only)."""

    _REQUIRED = {
        "runs": "run_uuid, name, experiment_id, status, start_time, end_time, artifact_uri, lifecycle_stage, user_id",
        "tags": "run_uuid, value",
        "params": "run_uuid, value",
        "latest_metrics": "run_uuid, value, is_nan",
        "metrics": "run_uuid, step, value, timestamp, is_nan",
        "experiments": "experiment_id, name, lifecycle_stage",
    }

    def __init__(self, engine: Any, has_workspaces: bool) -> None:
        self._engine = engine
        self._key = engine.dialect.identifier_preparer.quote("key")  # a reserved word in MySQL
        self._workspace = os.environ.get("MLFLOW_WORKSPACE", "default") if has_workspaces else None

    @classmethod
    def connect(cls, uri: str) -> Optional["SqlRunSource"]:
        """A source on the database at `uri`, or None when its tables are not MLflow's as known here."""
        import sqlalchemy

        engine = sqlalchemy.create_engine(uri, connect_args={"timeout": 60} if uri.startswith("sqlite") else {})
        try:
            with engine.connect() as con:
                for table, columns in cls._REQUIRED.items():
                    con.execute(sqlalchemy.text(f"SELECT {columns} FROM {table} WHERE 1 = 0"))
                has_workspaces = _has_column(con, "experiments", "workspace")
        except sqlalchemy.exc.SQLAlchemyError:
            engine.dispose()
            return None
        return cls(engine, has_workspaces)

    def _rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """All rows of one query as plain tuples, through the driver's own cursor: SQLAlchemy's
        per-row Result objects cost more than the query itself at millions of rows."""
        import sqlalchemy

        compiled = sqlalchemy.text(sql).compile(dialect=self._engine.dialect)
        bound = compiled.construct_params(dict(params or {}))
        args: Any = [bound[k] for k in compiled.positiontup] if compiled.positional else bound

        def call() -> list[tuple[Any, ...]]:
            raw = self._engine.raw_connection()
            try:
                cursor = raw.cursor()
                cursor.execute(str(compiled), args)
                return cursor.fetchall()
            finally:
                raw.close()

        return with_retry(call, "read the tracking database")

    def _experiment_filter(self) -> str:
        return " AND workspace = :workspace" if self._workspace else ""

    def experiment(self, name: str) -> Optional[Experiment]:
        rows = self._rows(
            "SELECT experiment_id, name FROM experiments WHERE name = :name AND lifecycle_stage = 'active'"
            + self._experiment_filter(), {"name": name, "workspace": self._workspace})
        return Experiment(str(rows[0][0]), rows[0][1]) if rows else None

    def experiments(self) -> list[Experiment]:
        rows = self._rows(
            "SELECT experiment_id, name FROM experiments WHERE lifecycle_stage = 'active'"
            + self._experiment_filter() + " ORDER BY experiment_id", {"workspace": self._workspace})
        return [Experiment(str(i), n) for i, n in rows]

    def runs(self, experiment_ids: Sequence[str], tags: Mapping[str, str]) -> Iterator[list[RunRecord]]:
        if not experiment_ids:
            return
        params: dict[str, Any] = {f"e{i}": int(e) for i, e in enumerate(experiment_ids)}
        where = [f"experiment_id IN ({', '.join(':' + k for k in params)})", "lifecycle_stage = 'active'"]
        for i, (key, value) in enumerate(tags.items()):
            # the tags primary key (key, run_uuid) serves this lookup: no scan of the runs
            where.append(f"run_uuid IN (SELECT run_uuid FROM tags WHERE {self._key} = :k{i} AND value = :v{i})")
            params.update({f"k{i}": key, f"v{i}": str(value)})
        infos = self._rows(
            f"SELECT {self._REQUIRED['runs']} FROM runs WHERE {' AND '.join(where)} ORDER BY start_time, run_uuid",
            params)
        for chunk in _chunks(infos, _SQL_PAGE):
            yield self._records(chunk)

    def _records(self, infos: Sequence[Any]) -> list[RunRecord]:
        ids = [row[0] for row in infos]
        tags, params, metrics = self._by_run("tags", ids), self._by_run("params", ids), self._latest(ids)
        return [
            RunRecord(
                RunInfo(run_id=r[0], run_name=r[1] or "", experiment_id=str(r[2]), status=r[3] or "",
                        start_time=r[4], end_time=r[5], artifact_uri=r[6] or "",
                        lifecycle_stage=r[7] or "active", user_id=r[8] or ""),
                RunData(tags=tags.get(r[0], {}), params=params.get(r[0], {}), metrics=metrics.get(r[0], {})),
            )
            for r in infos
        ]

    def _in(self, ids: Sequence[str]) -> tuple[str, dict[str, str]]:
        names = {f"r{i}": run_id for i, run_id in enumerate(ids)}
        return ", ".join(":" + k for k in names), names

    def _by_run(self, table: str, ids: Sequence[str]) -> dict[str, dict[str, str]]:
        """run id -> {key: value} of `tags` or `params` (string values both).

        Where the database can, each run's pairs come back as one JSON object: ~45 params a
        run would otherwise be ~45 result rows, and building rows is most of a read's cost."""
        marks, params = self._in(ids)
        aggregate = _JSON_OBJECT_AGG.get(self._engine.dialect.name)
        if aggregate is not None:
            rows = self._rows(f"SELECT run_uuid, {aggregate.format(key=self._key)} FROM {table}"
                              f" WHERE run_uuid IN ({marks}) GROUP BY run_uuid", params)
            return {run_id: json.loads(pairs) for run_id, pairs in rows}
        out: dict[str, dict[str, str]] = {}
        sql = f"SELECT run_uuid, {self._key}, value FROM {table} WHERE run_uuid IN ({marks})"
        for run_id, key, value in self._rows(sql, params):
            out.setdefault(run_id, {})[key] = value
        return out

    def _latest(self, ids: Sequence[str]) -> dict[str, dict[str, float]]:
        marks, params = self._in(ids)
        out: dict[str, dict[str, float]] = {}
        sql = f"SELECT run_uuid, {self._key}, value, is_nan FROM latest_metrics WHERE run_uuid IN ({marks})"
        for run_id, key, value, is_nan in self._rows(sql, params):
            out.setdefault(run_id, {})[key] = _metric_value(value, is_nan)
        return out

    def count_children(self, experiment_id: str) -> dict[str, int]:
        rows = self._rows(
            f"SELECT t.value, COUNT(*) FROM tags t JOIN runs r ON r.run_uuid = t.run_uuid"
            f" WHERE t.{self._key} = :parent AND r.experiment_id = :e AND r.lifecycle_stage = 'active'"
            f" AND r.run_uuid IN (SELECT run_uuid FROM tags WHERE {self._key} = :role AND value = :trial)"
            " GROUP BY t.value",
            {"parent": TAG_PARENT, "e": int(experiment_id), "role": TAG_ROLE, "trial": ROLE_TRIAL})
        return {parent: int(n) for parent, n in rows}

    def histories(self, run_ids: Sequence[str], keys: Sequence[str]) -> Iterator[pd.DataFrame]:
        # every key of the runs is read: a SQL store needs no list of them. NaN is stored
        # as 0 with is_nan set (SQL has no NaN): NULL here, NaN in the frame.
        for chunk in _chunks(list(run_ids), _SQL_PAGE):
            marks, params = self._in(chunk)
            rows = self._rows(
                f"SELECT run_uuid, {self._key}, step, CASE WHEN is_nan THEN NULL ELSE value END,"
                f" COALESCE(timestamp, 0) FROM metrics WHERE run_uuid IN ({marks})", params)
            yield history_frame(rows)


def _has_column(con: Any, table: str, column: str) -> bool:
    import sqlalchemy

    try:
        con.execute(sqlalchemy.text(f"SELECT {column} FROM {table} WHERE 1 = 0"))
    except sqlalchemy.exc.SQLAlchemyError:
        con.rollback()
        return False
    return True


def history_frame(rows: Sequence[tuple[Any, ...]]) -> pd.DataFrame:
    """(run_id, metric, step, value, timestamp) tuples as a typed frame (None value: NaN)."""
    frame = pd.DataFrame.from_records(rows, columns=list(HISTORY_COLUMNS)) if rows else \
        pd.DataFrame({c: [] for c in HISTORY_COLUMNS})
    return frame.astype({"step": np.int64, "value": np.float64, "timestamp": np.int64})


# --------------------------------------------------------------------------- API


class ApiRunSource:
    """The same reads through MLflow's client (a tracking server, or any other store)."""

    def __init__(self, client: MlflowClient, workers: int = 8) -> None:
        self._client = client
        self._workers = workers

    def experiment(self, name: str) -> Optional[Experiment]:
        exp = with_retry(lambda: self._client.get_experiment_by_name(name), "get experiment")
        if exp is None or exp.lifecycle_stage != "active":
            return None
        return Experiment(exp.experiment_id, exp.name)

    def experiments(self) -> list[Experiment]:
        found: list[Experiment] = []
        for page in pages(lambda token: with_retry(
                lambda: self._client.search_experiments(max_results=PAGE_SIZE, page_token=token),
                "search experiments")):
            found += [Experiment(e.experiment_id, e.name) for e in page]
        return found

    def runs(self, experiment_ids: Sequence[str], tags: Mapping[str, str]) -> Iterator[list[RunRecord]]:
        from mlflow.entities import ViewType

        if not experiment_ids:
            return
        clauses = " and ".join(f"tags.`{k}` = '{quote(v)}'" for k, v in tags.items())
        for page in pages(lambda token: with_retry(
                lambda: self._client.search_runs(
                    list(experiment_ids), filter_string=clauses, run_view_type=ViewType.ACTIVE_ONLY,
                    max_results=PAGE_SIZE, order_by=["attributes.start_time ASC"], page_token=token),
                "search runs")):
            yield [record_of(run) for run in page]

    def count_children(self, experiment_id: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        for page in self.runs([experiment_id], {TAG_ROLE: ROLE_TRIAL}):
            for run in page:
                parent = run.data.tags.get(TAG_PARENT, "")
                counts[parent] = counts.get(parent, 0) + 1
        return counts

    def histories(self, run_ids: Sequence[str], keys: Sequence[str]) -> Iterator[pd.DataFrame]:
        jobs = [(list(chunk), key) for chunk in _chunks(list(run_ids), _REST_BULK_RUNS) for key in keys]
        with ThreadPoolExecutor(max_workers=self._workers) as pool:
            yield from pool.map(lambda job: self._bulk(*job), jobs)

    def _bulk(self, run_ids: list[str], key: str) -> pd.DataFrame:
        """One metric of up to 100 runs: the server's bulk endpoint, else one call per run."""
        rows = self._bulk_endpoint(run_ids, key)
        if rows is None:
            rows = [(run_id, m) for run_id in run_ids for m in with_retry(
                lambda r=run_id: self._client.get_metric_history(r, key), "metric history")]
        return history_frame([(r, key, int(m.step), float(m.value), int(m.timestamp or 0)) for r, m in rows])

    def _bulk_endpoint(self, run_ids: list[str], key: str) -> Optional[list[tuple[str, Any]]]:
        creds = host_creds(self._client)
        if creds is None:
            return None
        from mlflow.entities import Metric
        from mlflow.utils.rest_utils import http_request

        def call() -> Any:
            return http_request(creds, "/ajax-api/2.0/mlflow/metrics/get-history-bulk", "GET",
                                params={"run_id": run_ids, "metric_key": key, "max_results": _REST_BULK_MAX})

        response = with_retry(call, "metric history (bulk)")
        if response.status_code != 200:
            return None
        values = response.json().get("metrics", [])
        if len(values) >= _REST_BULK_MAX:  # cut off by the server: ask run by run instead
            return None
        return [(v["run_id"], Metric(key, v.get("value", math.nan), v.get("timestamp", 0), v.get("step", 0)))
                for v in values]


def host_creds(client: MlflowClient) -> Any:
    """The REST credentials of a client talking to a tracking server (None for other stores)."""
    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    get_creds = getattr(store, "get_host_creds", None)
    return get_creds() if callable(get_creds) else None


def quote(value: str) -> str:
    """A value inside single quotes in an MLflow search filter."""
    return str(value).replace("\\", "\\\\").replace("'", "\\'")


def record_of(run: Any) -> RunRecord:
    """An MLflow `Run` entity as a plain RunRecord."""
    info = run.info
    return RunRecord(
        RunInfo(run_id=info.run_id, run_name=info.run_name or "", experiment_id=str(info.experiment_id),
                status=info.status, start_time=info.start_time, end_time=info.end_time,
                artifact_uri=info.artifact_uri or "", lifecycle_stage=info.lifecycle_stage or "active",
                user_id=info.user_id or ""),
        RunData(tags=dict(run.data.tags), params=dict(run.data.params),
                metrics={k: float(v) for k, v in run.data.metrics.items()}),
    )


def filter_runs(runs: Iterable[RunRecord], filter_string: str) -> list[RunRecord]:
    """MLflow's own search-filter semantics (`params.depth = '2' and metrics.x > 1`) on plain runs.

    Raises MlflowException (INVALID_PARAMETER_VALUE) for a filter MLflow cannot parse.
    """
    runs = list(runs)
    if not filter_string.strip():
        return runs
    from mlflow.exceptions import MlflowException
    from mlflow.utils.search_utils import SearchUtils

    try:
        return SearchUtils.filter(runs, filter_string)
    except MlflowException:
        raise
    except (ValueError, TypeError, AttributeError) as err:
        raise MlflowException(str(err), error_code="INVALID_PARAMETER_VALUE") from err
