"""Retries of MLflow calls: which errors are transient, and exponential backoff until a deadline.

Many trial processes write one SQLite file (or one server), and a metric must never be
lost, so every MLflow call of tracking/ goes through `with_retry`. Recognises MLflow's
exception by its module, without importing mlflow: a read on SQL needs none of it.
"""

from __future__ import annotations

import logging
import os
import random
import re
import sqlite3
import time
from typing import Callable, Optional, TypeVar

from vaelab.tracking.uri import scrub

log = logging.getLogger(__name__)

T = TypeVar("T")

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


def _is_mlflow_error(err: BaseException) -> bool:
    return any(c.__name__ == "MlflowException" and c.__module__ == "mlflow.exceptions" for c in type(err).__mro__)


def is_transient(err: BaseException) -> bool:
    """Whether retrying the same call later may succeed."""
    if _is_mlflow_error(err):
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
                log.warning("MLflow %s: attempt %d failed (%s); retrying", what, attempt, short_error(err))
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, max_delay_s)


def _clearly_transient(err: BaseException) -> bool:
    if _is_mlflow_error(err):
        code = getattr(err, "error_code", "") or ""
        return code in _TRANSIENT_CODES or bool(_TRANSIENT_TEXT.search(str(err)))
    return is_transient(err)


def short_error(err: BaseException) -> str:
    """The error's type and first line, credentials scrubbed: safe for logs and messages."""
    text = scrub(str(err)).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200] if text else ''}"
