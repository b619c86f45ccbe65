"""MLflow writing: the study's parent run, one child run per trial member, retried writes.

Every MLflow write of vaelab goes through this module (reading lives in tracking/read.py).
Conventions (docs/ARCHITECTURE.md): experiment = study name; a parent run per study
(`vaelab.role=study`); a child run per trial member (`vaelab.role=trial`, tag
`mlflow.parentRunId`), found again by tag `vaelab.trial_id` under the same parent so a
retried or restored trial continues its run instead of starting a duplicate.

Writes use `MlflowClient` directly (never the fluent active-run stack, which is per process
and would tangle the members of one cohort). Every call is retried with exponential backoff
on transient errors: many trial processes write one SQLite file, and a metric must never be
lost. Retries are idempotent: a batch keeps its timestamps across attempts and MLflow drops
an exact duplicate (key, timestamp, step, value).
"""

from __future__ import annotations

import logging
import math
import os
import random
import re
import socket
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from vaelab.errors import VaelabError

log = logging.getLogger(__name__)

T = TypeVar("T")

# MLflow prints "View run ... at: <tracking URI>/#/..." to stdout whenever a run ends on a
# server: noise from every trial, and a leak when the URI carries credentials.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
ROLE_STUDY = "study"
ROLE_TRIAL = "trial"
# vaelab.status values of a child run; `stopped` = ended early by a Tune scheduler (ASHA).
STATUSES = ("running", "finished", "failed", "diverged", "stopped")

TAG_ROLE = "vaelab.role"
TAG_STUDY = "vaelab.study"
TAG_TRIAL_ID = "vaelab.trial_id"
TAG_TRIAL_KEY = "vaelab.trial_key"
TAG_VARIANT = "vaelab.variant"
TAG_STATUS = "vaelab.status"
TAG_NODE = "vaelab.node"
TAG_COHORT = "vaelab.cohort"
TAG_RUN_NAME = "vaelab.run_name"
TAG_PARENT = "mlflow.parentRunId"
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"  # the UI's view: training runs, not GenAI traces
TAG_ATTEMPT = "vaelab.attempt"  # 1 on the first start, +1 each time a retry/restore reopens the run

# MLflow error codes that no retry can fix (the request itself is wrong).
_PERMANENT_CODES = frozenset(
    {
        "INVALID_PARAMETER_VALUE",
        "RESOURCE_DOES_NOT_EXIST",
        "RESOURCE_ALREADY_EXISTS",
        "ALREADY_EXISTS",
        "NOT_FOUND",
        "ENDPOINT_NOT_FOUND",
        "MALFORMED_REQUEST",
        "PERMISSION_DENIED",
        "UNAUTHENTICATED",
        "CUSTOMER_UNAUTHORIZED",
        "INVALID_STATE",
        "FEATURE_DISABLED",
        "NOT_IMPLEMENTED",
        "BAD_REQUEST",
    }
)
_TRANSIENT_CODES = frozenset(
    {"TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED",
     "ABORTED", "SERVICE_UNDER_MAINTENANCE", "COULD_NOT_ACQUIRE_LOCK", "IO_ERROR"}
)
_UNCLEAR_RETRY_S = 30.0  # e.g. INTERNAL_ERROR without a sign of contention
_TRANSIENT_TEXT = re.compile(
    r"database is locked|database table is locked|busy|temporarily|timed out|timeout|"
    r"connection|reset by peer|broken pipe|too many requests|\b50[234]\b|\b429\b",
    re.IGNORECASE,
)
_MAX_PARAMS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000
_MAX_PARAM_LENGTH = 6000
# Environment variable names whose values must never be written anywhere.
_SECRET_QUERY_KEYS = re.compile(r"(pass|secret|token|key|auth|cred|signature)", re.IGNORECASE)


class TrackingError(VaelabError):
    """The tracking server or database cannot be used (unreachable, misconfigured)."""


# --------------------------------------------------------------------------- URIs


def resolve_tracking_uri(uri: Optional[str] = None) -> str:
    """`uri`, else $MLFLOW_TRACKING_URI, else `sqlite:///mlflow.db`; SQLite paths made absolute.

    Trials run in a Ray working directory of their own, so a relative SQLite path would
    name a different (empty) database in every trial.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    path = sqlite_path(uri)
    if path is not None:
        return "sqlite:///" + str(path)
    if "://" not in uri:  # a bare directory: MLflow's deprecated file store
        raise TrackingError(
            f"tracking URI {uri!r} is a plain path (MLflow's file store, which errors since "
            "MLflow 3.13); use sqlite:///PATH/mlflow.db or http://HOST:PORT"
        )
    return uri


def sqlite_path(uri: str) -> Optional[Path]:
    """The absolute database path of a `sqlite:///...` URI, else None."""
    if not uri.startswith("sqlite:///"):
        return None
    raw = uri[len("sqlite:///") :].split("?", 1)[0]
    if raw in ("", ":memory:"):
        raise TrackingError("an in-memory SQLite tracking URI cannot be shared with trial processes")
    return Path(raw).expanduser().resolve()


def require_existing_store(uri: str) -> None:
    """Read-only commands (report, query, ls) must not create a tracking database: MLflow
    makes an empty SQLite file (~1 MB) on first contact with a path that does not exist."""
    path = sqlite_path(uri)
    if path is not None and not path.is_file():
        raise TrackingError(
            f"no tracking database at {path} (from {redact_uri(uri)}): run `vaelab run` here first, "
            "or point --tracking-uri / MLFLOW_TRACKING_URI at the mlflow.db your studies logged to"
        )


def redact_uri(uri: str) -> str:
    """The URI without credentials (user:password@, token=... query values): safe for tags and logs."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "<unparseable uri>"
    items = [item.partition("=") for item in parts.query.split("&") if item]
    secret_query = any(_SECRET_QUERY_KEYS.search(k) for k, _, _ in items)
    if "@" not in parts.netloc and not secret_query:
        return uri  # nothing to hide (and urlunsplit would rewrite sqlite:////abs as sqlite://abs)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = "&".join(
        f"{k}=***" if _SECRET_QUERY_KEYS.search(k) else f"{k}={v}" if sep else k for k, sep, v in items
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def has_credentials(uri: str) -> bool:
    """Whether the URI itself carries a secret (then it must travel only through env vars)."""
    return redact_uri(uri) != uri


# --------------------------------------------------------------------------- retries


def is_transient(err: BaseException) -> bool:
    """Whether retrying the same call later may succeed."""
    if isinstance(err, MlflowException):
        code = getattr(err, "error_code", "") or ""
        return code not in _PERMANENT_CODES or bool(_TRANSIENT_TEXT.search(str(err)))
    if isinstance(err, (ConnectionError, TimeoutError, sqlite3.OperationalError)):
        return True
    # SQLAlchemy / requests / urllib3 errors without importing them here.
    name = type(err).__name__
    if name in {"OperationalError", "ConnectionError", "Timeout", "ReadTimeout", "ProtocolError"}:
        return True
    return bool(isinstance(err, OSError) and _TRANSIENT_TEXT.search(str(err)))


def retry_deadline_s() -> float:
    """Total time one write may spend retrying (env VAELAB_TRACKING_RETRY_S, default 600 s)."""
    return float(os.environ.get("VAELAB_TRACKING_RETRY_S", "600"))


def with_retry(
    call: Callable[[], T],
    what: str,
    *,
    deadline_s: Optional[float] = None,
    first_delay_s: float = 0.05,
    max_delay_s: float = 10.0,
) -> T:
    """Run `call`; on a transient error wait (exponential backoff with jitter) and run it again.

    A permanent error, or a transient one past the deadline, is raised.
    """
    start = time.monotonic()
    budget = retry_deadline_s() if deadline_s is None else deadline_s
    delay = first_delay_s
    attempt = 0
    while True:
        attempt += 1
        try:
            return call()
        except Exception as err:  # noqa: BLE001 - classified below
            # An unexplained server-side error gets a short budget: it is rarely transient.
            limit = budget if _clearly_transient(err) else min(budget, _UNCLEAR_RETRY_S)
            if not is_transient(err) or time.monotonic() + delay > start + limit:
                raise
            if attempt in (3, 10, 30):
                log.warning("MLflow %s: attempt %d failed (%s); retrying", what, attempt, _short(err))
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, max_delay_s)


def _clearly_transient(err: BaseException) -> bool:
    if isinstance(err, MlflowException):
        code = getattr(err, "error_code", "") or ""
        return code in _TRANSIENT_CODES or bool(_TRANSIENT_TEXT.search(str(err)))
    return is_transient(err)


def _short(err: BaseException) -> str:
    text = scrub(str(err)).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200] if text else ''}"


_USERINFO = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^/\s@]+@", re.IGNORECASE)


def scrub(text: str) -> str:
    """`text` with any user:password@ of a URL in it replaced by ***@ (error messages quote URLs)."""
    return _USERINFO.sub(r"\1***@", text)


def client_for(tracking_uri: str) -> MlflowClient:
    """An MlflowClient for `tracking_uri`. Credentials in an http(s) URI move to MLflow's own
    environment variables (MLFLOW_TRACKING_USERNAME / _PASSWORD, unless already set) and the
    client gets the URI without them: MLflow quotes its URI in messages and run links."""
    parts = urlsplit(tracking_uri)
    if parts.scheme not in ("http", "https") or "@" not in parts.netloc:
        return MlflowClient(tracking_uri)
    userinfo, host = parts.netloc.rsplit("@", 1)
    user, _, password = userinfo.partition(":")
    os.environ.setdefault("MLFLOW_TRACKING_USERNAME", unquote(user))
    if password:
        os.environ.setdefault("MLFLOW_TRACKING_PASSWORD", unquote(password))
    return MlflowClient(urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment)))


# --------------------------------------------------------------------------- store set-up


def check_reachable(tracking_uri: str, timeout_s: float = 10.0) -> str:
    """Fail fast, before any trial starts, if the tracking store cannot be used.

    SQLite: the directory is created and must be writable; the schema is created here,
    once, so concurrent trial processes never race to migrate a fresh file. HTTP: the
    server's /health endpoint must answer. Returns the resolved URI.
    """
    uri = resolve_tracking_uri(tracking_uri)
    path = sqlite_path(uri)
    if path is not None:
        _prepare_sqlite(path)
        # Creating the schema of a fresh file is a migration: two processes doing it at
        # once corrupt it. vaelab processes take turns; trials only start after this.
        with _file_lock(path.parent / f"{path.name}-init.lock"):
            _connect(uri, timeout_s)
        return uri
    if uri.startswith(("http://", "https://")):
        _check_http(uri, timeout_s)
    _connect(uri, timeout_s)
    return uri


def _connect(uri: str, timeout_s: float) -> None:
    try:
        with _bounded_http(timeout_s):
            with_retry(lambda: client_for(uri).search_experiments(max_results=1), "connect", deadline_s=timeout_s)
    except Exception as err:  # noqa: BLE001 - any failure means unusable
        raise TrackingError(f"MLflow tracking store {redact_uri(uri)} is not usable: {_short(err)}") from err


@contextmanager
def _bounded_http(timeout_s: float) -> Iterator[None]:
    """MLflow's own HTTP retries off, and its request timeout bounded, for the block.

    A server that answers 500 (its database is down) would otherwise keep one request in
    MLflow's retry loop (7 retries, exponential backoff) for minutes: the check before any
    trial starts must fail in seconds. MLflow reads these variables on every request."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(max(1, math.ceil(timeout_s)))
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (POSIX flock) held for the block."""
    import fcntl

    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _prepare_sqlite(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise TrackingError(f"cannot create the directory of the tracking database {path}: {err}") from err
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise TrackingError(f"the tracking database {path} is not writable")
    if _on_network_filesystem(path.parent):
        log.warning("SQLite tracking database %s is on a network filesystem: locking may be unreliable", path)
        return
    # WAL lets readers proceed during a write and makes "database is locked" rare with
    # many writers; the mode is persistent in the file. MLflow itself sets a 20 s
    # busy_timeout on every session; the retries above cover what is left.
    try:
        with sqlite3.connect(path, timeout=30) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
    except sqlite3.Error as err:
        raise TrackingError(f"cannot open the tracking database {path}: {err}") from err


def _on_network_filesystem(path: Path) -> bool:
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return False
    best, fstype = "", ""
    target = str(path.resolve())
    for line in mounts:
        fields = line.split()
        if len(fields) >= 3 and (target == fields[1] or target.startswith(fields[1].rstrip("/") + "/")):
            if len(fields[1]) > len(best):
                best, fstype = fields[1], fields[2]
    return fstype.startswith(("nfs", "cifs", "smb", "fuse", "lustre", "gpfs", "ceph", "9p"))


def _check_http(uri: str, timeout_s: float) -> None:
    parts = urlsplit(uri)
    # urllib cannot take user:password in the netloc; credentials are not needed for /health.
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    health = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/") + "/health", "", ""))
    try:
        with urllib.request.urlopen(health, timeout=timeout_s) as resp:  # noqa: S310 - http(s) only
            if resp.status >= 400:
                raise TrackingError(f"MLflow server {redact_uri(uri)} answered {resp.status} on /health")
    except urllib.error.HTTPError as err:
        if err.code >= 500:
            raise TrackingError(f"MLflow server {redact_uri(uri)} answered {err.code} on /health") from err
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise TrackingError(
            f"MLflow tracking server {redact_uri(uri)} is unreachable ({reason}); start it "
            "(`mlflow server --host 127.0.0.1 --port 5000`) or pass --tracking-uri"
        ) from err


def default_artifact_location(tracking_uri: str, experiment_name: str) -> Optional[str]:
    """Artifacts of a SQLite-tracked study live beside the database, not in a trial's cwd."""
    path = sqlite_path(tracking_uri)
    if path is None:
        return None  # a server decides (proxied artifacts)
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", experiment_name).strip("_") or "study"
    return (path.parent / "mlartifacts" / slug).as_uri()


def get_or_create_experiment(client: MlflowClient, name: str, tracking_uri: str) -> str:
    """The experiment id of `name`, created if needed (safe when many processes race)."""

    def attempt() -> str:
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                raise TrackingError(
                    f"MLflow experiment {name!r} is deleted; restore it (`mlflow experiments restore`) "
                    "or permanently delete it (`mlflow gc`) first"
                )
            return exp.experiment_id
        try:
            return client.create_experiment(
                name, artifact_location=default_artifact_location(tracking_uri, name)
            )
        except MlflowException as err:
            if err.error_code == "RESOURCE_ALREADY_EXISTS":  # another process won the race
                found = client.get_experiment_by_name(name)
                if found is not None:
                    return found.experiment_id
            raise

    return with_retry(attempt, f"experiment {name!r}")


# --------------------------------------------------------------------------- provenance


def git_sha(start: Optional[Path] = None) -> str:
    """HEAD of the repository holding `start` (or the cwd), `+dirty` if modified; `unknown` without git."""
    cwd = str(start) if start else None
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")


def code_git_sha() -> str:
    """The SHA of the vaelab code that runs (the repository holding this package), whatever
    folder the study YAML or the shell is in."""
    return git_sha(Path(__file__).resolve().parents[1])


def library_versions() -> dict[str, str]:
    """Versions of the libraries that decide a result (read from metadata: nothing imported)."""
    out = {}
    for dist in ("vaelab", "torch", "ray", "mlflow", "optuna", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "absent"
    return out


def node_name() -> str:
    """`hostname/ip` of this process's machine (the ip a peer would use, loopback if alone)."""
    host = socket.gethostname()
    try:
        ip = socket.gethostbyname(host)
    except OSError:
        ip = "127.0.0.1"
    return f"{host}/{ip}"


# --------------------------------------------------------------------------- values


def param_strings(params: Mapping[str, Any]) -> dict[str, str]:
    """MLflow param values: `str(value)` ('True', 'None', '0.001', '64-32-16'), truncated to MLflow's limit."""
    return {k: str(v)[:_MAX_PARAM_LENGTH] for k, v in params.items()}


def to_metrics(values: Mapping[str, Any], step: int, timestamp_ms: int) -> list[Metric]:
    """Numeric entries of `values` as MLflow metrics (non-numbers are skipped; NaN/inf kept)."""
    out = []
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            try:
                value = float(value)  # numpy / torch scalars
            except (TypeError, ValueError):
                continue
        out.append(Metric(key=key, value=float(value), timestamp=timestamp_ms, step=step))
    return out


def _chunks(items: Sequence[T], size: int) -> Iterable[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _now_ms() -> int:
    return int(time.time() * 1000)


# --------------------------------------------------------------------------- the study run


@dataclass(frozen=True)
class StudyRunInfo:
    """What trials need to find their parent: plain strings, picklable into a Tune config."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    study: str


def start_study_run(
    tracking_uri: str,
    study: str,
    run_name: str,
    *,
    spec_hash: str,
    budget: str,
    study_yaml: str,
    tags: Optional[Mapping[str, str]] = None,
    params: Optional[Mapping[str, Any]] = None,
    repo_dir: Optional[Path] = None,
) -> StudyRunInfo:
    """Create the study's parent run: provenance tags, `study.yaml` artifact."""
    uri = resolve_tracking_uri(tracking_uri)
    client = client_for(uri)
    experiment_id = get_or_create_experiment(client, study, uri)
    # MLflow 3's UI opens an experiment without this tag in its GenAI (traces) view
    with_retry(lambda: client.set_experiment_tag(experiment_id, TAG_EXPERIMENT_KIND, "custom_model_development"),
               "tag experiment")
    versions = library_versions()
    all_tags = {
        TAG_ROLE: ROLE_STUDY,
        TAG_STUDY: study,
        TAG_RUN_NAME: run_name,
        TAG_STATUS: "running",
        "vaelab.git_sha": code_git_sha(),
        **({"vaelab.study_git_sha": git_sha(repo_dir)} if repo_dir else {}),  # the study file's repo
        "vaelab.spec_hash": spec_hash,
        "vaelab.budget": budget,
        "vaelab.versions": " ".join(f"{k}={v}" for k, v in versions.items()),
        "vaelab.host": node_name(),
        **{f"vaelab.version.{k}": v for k, v in versions.items()},
        **(tags or {}),
    }
    run = _create_run_once(client, experiment_id, all_tags, run_name, TAG_RUN_NAME, run_name, None)
    if params:
        _log_params(client, run.info.run_id, param_strings(params), existing={})
    with_retry(lambda: client.log_text(run.info.run_id, study_yaml, "study.yaml"), "log study.yaml")
    return StudyRunInfo(uri, experiment_id, run.info.run_id, study)


def find_study_run(tracking_uri: str, study: str, run_name: str) -> Optional[StudyRunInfo]:
    """The parent run of study `study` launched under `run_name`, if any."""
    uri = resolve_tracking_uri(tracking_uri)
    client = client_for(uri)
    exp = with_retry(lambda: client.get_experiment_by_name(study), "get experiment")
    if exp is None:
        return None
    runs = _search(client, exp.experiment_id, {TAG_ROLE: ROLE_STUDY, TAG_RUN_NAME: run_name})
    return StudyRunInfo(uri, exp.experiment_id, runs[0].info.run_id, study) if runs else None


def reopen_study_run(info: StudyRunInfo) -> None:
    """Mark a resumed study's parent run running again."""
    client = client_for(info.tracking_uri)
    _set_tags(client, info.parent_run_id, {TAG_STATUS: "running"})
    with_retry(lambda: client.update_run(info.parent_run_id, status="RUNNING"), "reopen parent run")


def finish_study_run(info: StudyRunInfo, status: str, tags: Optional[Mapping[str, str]] = None) -> None:
    """Close the parent run: `vaelab.status` (finished / failed / interrupted) plus summary tags."""
    client = client_for(info.tracking_uri)
    _set_tags(client, info.parent_run_id, {TAG_STATUS: status, **(tags or {})})
    mlflow_status = {"finished": "FINISHED", "interrupted": "KILLED"}.get(status, "FAILED")
    with_retry(
        lambda: client.set_terminated(info.parent_run_id, status=mlflow_status), "terminate parent run"
    )


def mark_stale_trials(info: StudyRunInfo, status_by_cohort: Mapping[str, str]) -> int:
    """After Tune ends: a child still `running` whose Tune trial is over gets the given status.

    A worker killed hard (OOM, lost node) past `max_failures`, or a trial stopped by a
    scheduler, never wrote its own end. Returns how many runs were updated.
    """
    client = client_for(info.tracking_uri)
    runs = _search(
        client, info.experiment_id,
        {TAG_ROLE: ROLE_TRIAL, TAG_PARENT: info.parent_run_id, TAG_STATUS: "running"},
    )
    changed = 0
    for run in runs:
        status = status_by_cohort.get(run.data.tags.get(TAG_COHORT, ""))
        if status:
            _set_tags(client, run.info.run_id, {TAG_STATUS: status})
            mlflow_status = "FINISHED" if status in ("finished", "stopped") else "FAILED"
            with_retry(
                lambda r=run: client.set_terminated(r.info.run_id, status=mlflow_status), "terminate run"
            )
            changed += 1
    return changed


# --------------------------------------------------------------------------- trial runs


@dataclass
class TrialRun:
    """One trial member's child run, opened inside the trial process.

    `open` finds the run again by `vaelab.trial_id` under the parent (a retried or restored
    trial continues it) or creates it. Epochs at or below `last_step` were already logged
    by an earlier attempt and are skipped, so the history has no repeats; an attempt that
    restarts from an older checkpoint re-trains those epochs without logging them twice.
    """

    client: MlflowClient
    run_id: str
    resumed: bool
    last_step: int = 0
    artifact_uri: str = ""
    logged_params: dict[str, str] = field(default_factory=dict)

    @classmethod
    def open(
        cls,
        info: StudyRunInfo,
        trial_id: str,
        *,
        run_name: str,
        params: Mapping[str, Any],
        tags: Mapping[str, str],
        node: Optional[str] = None,
    ) -> "TrialRun":
        client = client_for(info.tracking_uri)
        base_tags = {
            TAG_ROLE: ROLE_TRIAL,
            TAG_STUDY: info.study,
            TAG_TRIAL_ID: trial_id,
            TAG_PARENT: info.parent_run_id,
            **tags,
        }
        run = _create_run_once(
            client, info.experiment_id, base_tags, run_name, TAG_TRIAL_ID, trial_id, info.parent_run_id
        )
        resumed = run.info.status != "RUNNING" or bool(run.data.metrics) or bool(run.data.params)
        attempt = int(run.data.tags.get(TAG_ATTEMPT, "0") or 0) + 1
        trial = cls(
            client=client,
            run_id=run.info.run_id,
            resumed=resumed,
            last_step=_last_logged_step(client, run) if resumed else 0,
            artifact_uri=run.info.artifact_uri,
            logged_params=dict(run.data.params),
        )
        if run.info.status != "RUNNING":
            with_retry(lambda: client.update_run(trial.run_id, status="RUNNING"), "reopen run")
        trial.set_tags({TAG_STATUS: "running", TAG_NODE: node or node_name(), TAG_ATTEMPT: attempt, **tags})
        trial.log_params(params)
        return trial

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params not yet on the run (params are immutable in MLflow; a changed value is warned about)."""
        _log_params(self.client, self.run_id, param_strings(params), existing=self.logged_params)

    def log_epoch(self, epoch: int, metrics: Mapping[str, Any]) -> bool:
        """All of one epoch's metrics in one batch with step = epoch; False if already logged."""
        if epoch <= self.last_step:
            return False
        batch = to_metrics(metrics, step=epoch, timestamp_ms=_now_ms())
        for chunk in _chunks(batch, _MAX_METRICS_PER_BATCH):
            with_retry(lambda c=chunk: self.client.log_batch(self.run_id, metrics=c), f"log epoch {epoch}")
        self.last_step = epoch
        return True

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        _set_tags(self.client, self.run_id, tags)

    def log_artifacts(self, local_dir: Path, artifact_path: Optional[str] = None) -> None:
        with_retry(
            lambda: self.client.log_artifacts(self.run_id, str(local_dir), artifact_path),
            "log artifacts",
        )

    def log_text(self, text: str, artifact_file: str) -> None:
        with_retry(lambda: self.client.log_text(self.run_id, text, artifact_file), f"log {artifact_file}")

    def finish(self, status: str, tags: Optional[Mapping[str, Any]] = None) -> None:
        """Set `vaelab.status` (finished / diverged / failed / stopped) and end the MLflow run."""
        if status not in STATUSES:
            raise ValueError(f"unknown trial status {status!r}; expected one of {STATUSES}")
        self.set_tags({TAG_STATUS: status, **(tags or {})})
        mlflow_status = RunStatus.to_string(
            RunStatus.FINISHED if status in ("finished", "diverged", "stopped") else RunStatus.FAILED
        )
        with_retry(lambda: self.client.set_terminated(self.run_id, status=mlflow_status), "end run")


def _create_run_once(
    client: MlflowClient,
    experiment_id: str,
    tags: Mapping[str, str],
    run_name: str,
    key_tag: str,
    key_value: str,
    parent_run_id: Optional[str],
):
    """The run tagged `key_tag=key_value` (under `parent_run_id`), created only if absent.

    Each attempt searches before creating, so a create that succeeded but reported an
    error (a dropped HTTP response) is found rather than duplicated.
    """
    match = {key_tag: key_value}
    if parent_run_id:
        match[TAG_PARENT] = parent_run_id

    def attempt():
        found = _search(client, experiment_id, match, with_retries=False)
        if found:
            if len(found) > 1:
                log.warning("%d runs carry %s=%s; continuing the oldest", len(found), key_tag, key_value)
            return found[-1]
        # the REST store takes string values only (SQLite would coerce an int silently)
        return client.create_run(experiment_id, tags={k: str(v) for k, v in tags.items()}, run_name=run_name)

    return with_retry(attempt, f"find or create run {key_tag}={key_value}")


def _search(client: MlflowClient, experiment_id: str, tags: Mapping[str, str], with_retries: bool = True):
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


def _last_logged_step(client: MlflowClient, run) -> int:
    """The highest epoch already logged on the run (0 if none)."""
    keys = ["epoch"] if "epoch" in run.data.metrics else list(run.data.metrics)
    last = 0
    for key in keys:
        history = with_retry(lambda k=key: client.get_metric_history(run.info.run_id, k), "metric history")
        last = max([last, *(m.step for m in history)])
    return last


def _log_params(client: MlflowClient, run_id: str, params: Mapping[str, str], existing: dict[str, str]) -> None:
    new = {}
    for key, value in params.items():
        if key in existing:
            if existing[key] != value:
                log.warning("param %s is already %r on run %s; %r not logged", key, existing[key], run_id, value)
            continue
        new[key] = value
    items = [Param(k, v) for k, v in new.items()]
    for chunk in _chunks(items, _MAX_PARAMS_PER_BATCH):
        with_retry(lambda c=chunk: client.log_batch(run_id, params=c), "log params")
    existing.update(new)


def _set_tags(client: MlflowClient, run_id: str, tags: Mapping[str, Any]) -> None:
    items = [RunTag(k, str(v)) for k, v in tags.items()]
    for chunk in _chunks(items, _MAX_PARAMS_PER_BATCH):
        with_retry(lambda c=chunk: client.log_batch(run_id, tags=c), "set tags")


def finite(value: Any) -> bool:
    """Whether a metric value is a finite number."""
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


# --------------------------------------------------------------------------- lookups
# Small reads the runner's summary and the CLI's `ls` / `query` need right after writing;
# the report's read side is tracking/read.py.


def list_trial_runs(info: StudyRunInfo) -> list[dict[str, Any]]:
    """The child runs of the study run `info`, one row each (see `trial_row`)."""
    client = client_for(info.tracking_uri)
    runs = _search(client, info.experiment_id, {TAG_ROLE: ROLE_TRIAL, TAG_PARENT: info.parent_run_id})
    return [trial_row(r) for r in runs]


def ended_trial_runs(info: StudyRunInfo, trial_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """trial_id -> row (see `trial_row`) of those of `trial_ids` whose run under `info`
    already ended with a result (finished or diverged): a resumed or retried trial whose
    members all ended must not be trained again, whatever Tune's saved state says."""
    client = client_for(info.tracking_uri)
    wanted = set(trial_ids)
    runs = _search(client, info.experiment_id, {TAG_ROLE: ROLE_TRIAL, TAG_PARENT: info.parent_run_id})
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
