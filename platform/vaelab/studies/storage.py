"""Where Tune keeps a study run: storage paths (local or s3:// ...), the vaelab sidecar file
beside Tune's state, and the stored runs `vaelab resume NAME` chooses from.

Imports pyarrow (its filesystems) only, lazily; no ray.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Optional

from vaelab.studies.plan import RunnerError

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
