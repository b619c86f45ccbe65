"""Where Tune keeps a study run: storage paths (local or s3:// ...), the check that an s3://
storage can be used before any trial starts, the vaelab sidecar file beside Tune's state, and
the stored runs `vaelab resume NAME` chooses from.

Imports pyarrow (its filesystems) only, lazily; no ray.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any, Mapping, Optional
from urllib.parse import parse_qs, urlsplit

from vaelab.errors import RunnerError
from vaelab.tracking.uri import has_credentials, redact_uri, scrub

SIDECAR = "vaelab_study.json"  # in the Tune experiment directory: what `resume` needs
REMOTE_SCHEMES = ("s3://", "gs://", "gcs://", "abfs://", "az://", "hdfs://")


def resolve_storage(storage: Optional[str]) -> str:
    """`./ray_results` by default; local paths absolute, s3:// etc. unchanged."""
    storage = storage or os.environ.get("VAELAB_STORAGE") or "ray_results"
    if storage.startswith(REMOTE_SCHEMES):
        return storage.rstrip("/")
    if storage.startswith("file://"):
        storage = storage[len("file://") :]
    return str(Path(storage).expanduser().resolve())


def is_remote_storage(storage: str) -> bool:
    return storage.startswith(REMOTE_SCHEMES)


def join_path(storage: str, name: str) -> str:
    return f"{storage}/{name}" if is_remote_storage(storage) else str(Path(storage) / name)


def _filesystem(path: str):
    import pyarrow.fs

    if is_remote_storage(path):
        return pyarrow.fs.FileSystem.from_uri(path)
    return pyarrow.fs.LocalFileSystem(), path


def path_exists(path: str) -> bool:
    import pyarrow.fs

    fs, inner = _filesystem(path)
    return fs.get_file_info(inner).type != pyarrow.fs.FileType.NotFound


# pyarrow's wording of S3 failures (AWS error names, curl's) -> what went wrong
_UNREACHABLE = ("NETWORK_CONNECTION", "curlCode", "Could not connect", "Couldn't connect", "Connection refused",
                "Timeout", "timed out", "Could not resolve")
_DENIED = ("ACCESS_DENIED", "INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH", "InvalidAccessKeyId",
           "SignatureDoesNotMatch", "AccessDenied", "Forbidden", "403", "EXPIRED_TOKEN", "InvalidToken")
_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")


def check_storage(storage: str) -> None:
    """Before Ray starts: an s3:// storage must reach its endpoint with credentials it accepts,
    name a bucket that exists, and take a write. Each failure is one paragraph naming
    --storage and what to fix (no secret in it). Local paths are left to Tune."""
    if not storage.startswith("s3://"):
        return
    _refuse_credentials_in_text(storage)
    import pyarrow.fs

    try:
        fs, inner = _filesystem(storage)
    except (OSError, ValueError) as err:  # pyarrow.lib.ArrowInvalid is a ValueError
        raise RunnerError(f"--storage {redact_uri(storage)} is not a usable S3 URI: {_clean(err)}") from err
    bucket = inner.split("/", 1)[0]
    try:
        if fs.get_file_info(bucket).type == pyarrow.fs.FileType.NotFound:
            raise RunnerError(
                f"--storage {redact_uri(storage)}: bucket {bucket!r} does not exist at {s3_endpoint(storage)}. "
                f"Create it first (`aws s3 mb s3://{bucket}`, or the console of your S3 service), or fix the "
                "bucket name in --storage; vaelab does not create buckets"
            )
        probe = f"{inner}/.vaelab-write-check-{uuid.uuid4().hex[:12]}"
        with fs.open_output_stream(probe) as out:
            out.write(b"vaelab checks that it can write here before any trial starts\n")
        fs.delete_file(probe)
    except OSError as err:
        raise RunnerError(_storage_error(storage, err)) from err


def s3_endpoint(storage: str) -> str:
    """Where an s3:// storage goes, in words: the URI's endpoint_override, else the endpoint
    variable pyarrow reads, else AWS itself. Credentials in it are redacted."""
    override = parse_qs(urlsplit(storage).query).get("endpoint_override")
    if override:
        return f"endpoint {redact_uri(override[0])} (endpoint_override in --storage)"
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        if os.environ.get(name):
            return f"endpoint {redact_uri(os.environ[name])} ({name})"
    return "AWS S3 (no AWS_ENDPOINT_URL set)"


def _storage_error(storage: str, err: OSError) -> str:
    text, where = _clean(err), s3_endpoint(storage)
    if any(marker in text for marker in _UNREACHABLE):
        return (f"--storage {redact_uri(storage)}: the S3 {where} does not answer ({text}). Start the S3 "
                "server, or fix AWS_ENDPOINT_URL (MinIO and other S3-compatible servers) or the network "
                "between this machine and it")
    if any(marker in text for marker in _DENIED):
        return (f"--storage {redact_uri(storage)}: the S3 {where} refused this machine's credentials "
                f"({text}). Check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or the "
                "instance role): the key must exist there and be allowed to list, read and write the bucket")
    return f"--storage {redact_uri(storage)}: S3 at {where} cannot be used: {text}"


def _clean(err: BaseException) -> str:
    """An error's text without any credential: URL userinfo and the values of AWS_* secrets
    (an error may quote a request), and without pyarrow's request ids."""
    text = scrub(str(err)).strip()
    for name in _SECRET_ENV:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text.split(" (Request ID:", 1)[0].rstrip(".")


def _refuse_credentials_in_text(storage: str) -> None:
    """Tune records the storage path and the endpoint of its filesystem in the experiment state
    it keeps beside the checkpoints: a credential in either would be stored in the clear."""
    if has_credentials(storage):
        raise RunnerError(
            f"--storage {redact_uri(storage)} carries credentials, which Ray Tune would record in its "
            "experiment state: give them through AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, "
            "or the instance role) and pass --storage s3://BUCKET/PATH alone"
        )
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        value = os.environ.get(name, "")
        if value and has_credentials(value):
            raise RunnerError(
                f"{name}={redact_uri(value)} carries credentials, which Ray Tune would record with the "
                f"storage of --storage {redact_uri(storage)}: put the keys in AWS_ACCESS_KEY_ID / "
                f"AWS_SECRET_ACCESS_KEY and set {name} to the endpoint alone (http://HOST:PORT)"
            )


def write_sidecar(experiment_path: str, meta: Mapping[str, Any]) -> None:
    fs, inner = _filesystem(experiment_path)
    fs.create_dir(inner, recursive=True)
    with fs.open_output_stream(f"{inner}/{SIDECAR}") as out:
        out.write(json.dumps(meta, indent=2, sort_keys=True).encode())


def read_sidecar(experiment_path: str) -> dict[str, Any]:
    fs, inner = _filesystem(experiment_path)
    try:
        with fs.open_input_stream(f"{inner}/{SIDECAR}") as src:
            return json.loads(src.read().decode())
    except (FileNotFoundError, OSError) as err:
        raise RunnerError(
            f"{experiment_path} holds no vaelab study ({SIDECAR} missing): check the name and --storage"
        ) from err


def stored_runs(storage: str) -> list[dict[str, Any]]:
    """The sidecars of every vaelab study run under `storage`, newest first."""
    import pyarrow.fs

    fs, inner = _filesystem(storage)
    try:
        entries = fs.get_file_info(pyarrow.fs.FileSelector(inner, allow_not_found=True))
    except OSError:
        return []
    runs = []
    for entry in entries:
        if entry.type != pyarrow.fs.FileType.Directory:
            continue
        try:
            runs.append(read_sidecar(join_path(storage, entry.base_name)))
        except (RunnerError, ValueError):
            continue
    return sorted(runs, key=lambda m: (m.get("created", ""), m.get("run_name", "")), reverse=True)


def find_run_name(storage: str, name: str) -> str:
    """The run `vaelab resume NAME` means: the run named NAME, else the only run whose name
    starts with NAME (a study name, or STUDY-BUDGET). Several or none: an error listing
    the runs there are."""
    if path_exists(join_path(storage, name)):
        return name
    runs = [m.get("run_name", "") for m in stored_runs(storage)]
    matches = [r for r in runs if r.startswith(name)]
    if len(matches) == 1:
        return matches[0]
    listed = ", ".join(matches or runs) or "none"
    if matches:
        raise RunnerError(f"{name!r} matches several runs in {storage}: {listed} (newest first); "
                          "name one of them")
    raise RunnerError(f"no vaelab study run {name!r} in {storage}; the runs there: {listed} "
                      "(or check --storage)")
