"""Tracking URIs: the default, SQLite paths made absolute, and credentials kept out of text.

`redact_uri` / `scrub` make a URI or an error message safe for tags, logs and messages.
Plain string and path work: imports neither mlflow nor anything else of vaelab's but errors.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit, urlunsplit

from vaelab.errors import TrackingError

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
# URI query keys whose values must never be written anywhere (?token=..., ?password=...).
_SECRET_QUERY_KEYS = re.compile(r"(pass|secret|token|key|auth|cred|signature)", re.IGNORECASE)


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


_USERINFO = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^/\s@]+@", re.IGNORECASE)


def scrub(text: str) -> str:
    """`text` with any user:password@ of a URL in it replaced by ***@ (error messages quote URLs)."""
    return _USERINFO.sub(r"\1***@", text)
