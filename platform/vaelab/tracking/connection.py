"""Reaching the tracking store: an MlflowClient for a URI, and checks that the store can be used.

`check_reachable` fails fast before any trial starts (and prepares a SQLite file once, under a
file lock); `require_existing_store` keeps read-only commands from creating a database.
Imports mlflow's client; retries come from retry.py, URI rules from uri.py.
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator
from urllib.parse import unquote, urlsplit, urlunsplit

from vaelab.errors import TrackingError
from vaelab.tracking.retry import short_error, with_retry
from vaelab.tracking.uri import redact_uri, resolve_tracking_uri, sqlite_path

if TYPE_CHECKING:  # pragma: no cover - typing only; mlflow is imported where a client is made
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

# MLflow prints "View run ... at: <tracking URI>/#/..." to stdout whenever a run ends on a
# server: noise from every trial, and a leak when the URI carries credentials.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


def client_for(tracking_uri: str) -> MlflowClient:
    """An MlflowClient for `tracking_uri`. Credentials in an http(s) URI move to MLflow's own
    environment variables (MLFLOW_TRACKING_USERNAME / _PASSWORD, unless already set) and the
    client gets the URI without them: MLflow quotes its URI in messages and run links."""
    from mlflow.tracking import MlflowClient

    parts = urlsplit(tracking_uri)
    if parts.scheme not in ("http", "https") or "@" not in parts.netloc:
        return MlflowClient(tracking_uri)
    userinfo, host = parts.netloc.rsplit("@", 1)
    user, _, password = userinfo.partition(":")
    os.environ.setdefault("MLFLOW_TRACKING_USERNAME", unquote(user))
    if password:
        os.environ.setdefault("MLFLOW_TRACKING_PASSWORD", unquote(password))
    return MlflowClient(urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment)))


def require_existing_store(uri: str) -> None:
    """Read-only commands (report, query, ls) must not create a tracking database: MLflow
    makes an empty SQLite file (~1 MB) on first contact with a path that does not exist."""
    path = sqlite_path(uri)
    if path is not None and not path.is_file():
        raise TrackingError(
            f"no tracking database at {path} (from {redact_uri(uri)}): run `vaelab run` here first, "
            "or point --tracking-uri / MLFLOW_TRACKING_URI at the mlflow.db your studies logged to"
        )


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
        raise TrackingError(f"MLflow tracking store {redact_uri(uri)} is not usable: {short_error(err)}") from err


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
