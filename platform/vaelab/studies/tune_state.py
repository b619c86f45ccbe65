"""Repair of a Tune experiment left behind by a killed driver, before `vaelab resume`.

Tune writes its experiment state (experiment_state-*.json) every few seconds, but deletes
a trial's checkpoints beyond `num_to_keep` the moment a newer one is registered. A driver
killed between the two leaves a state whose latest checkpoint of some trial is already
gone, and `Tuner.restore` then fails that trial ("Could not recover from checkpoint as it
does not exist on storage anymore") on every retry.

vaelab's checkpoints record their own epoch, step and RNG state (train.Trainer.save), so
any newer checkpoint of the same trial is a valid — and better — starting point: each
checkpoint the state names but the storage lacks is re-created as a copy of the newest
checkpoint in that trial's directory. Epochs the lost attempt already logged are not
logged again (trial._restore).

The experiment may be a local (or mounted) directory or s3://...: everything goes through
pyarrow.fs, the filesystems Tune itself uses. Tune records a checkpoint by its path inside
that filesystem ("/abs/exp/trial/checkpoint_000004" on disk, "bucket/exp/trial/..." on
S3). No Ray import; nothing is unpickled: the paths are read as bytes out of the
hex-encoded pickles Tune embeds in the JSON.
"""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Union

CHECKPOINT_DIR = re.compile(r"^checkpoint_\d{6}$")
STATE_FILE = re.compile(r"^experiment_state-.*\.json$")


def newest_state_file(experiment_dir: Path) -> Path | None:
    """The experiment state Tune restores from (the newest by name, which holds a timestamp)."""
    files = sorted(experiment_dir.glob("experiment_state-*.json"))
    return files[-1] if files else None


def referenced_checkpoints(state_file: Path) -> set[Path]:
    """Every checkpoint directory inside `state_file`'s experiment directory that the state names."""
    root = str(state_file.parent.resolve())
    return {Path(p) for p in _named_checkpoints(state_file.read_bytes(), root)}


def repair_missing_checkpoints(experiment: Union[Path, str]) -> list[tuple[Any, Any]]:
    """Re-create checkpoints the state names but the storage lacks; returns (missing, copied_from)
    as `Path`s for a local directory, `PurePosixPath`s inside the bucket for s3://.

    Only paths inside the experiment are touched, and only when the trial's directory
    still holds a newer checkpoint to copy."""
    fs, root = _filesystem(experiment)
    state = _newest_state(fs, root)
    if state is None:
        return []
    with fs.open_input_stream(state) as src:
        named = _named_checkpoints(src.read(), root)
    local = isinstance(experiment, Path) or "://" not in str(experiment)
    kind = Path if local else PurePosixPath
    repaired = []
    for path in sorted(named):
        source = _newer_checkpoint(fs, path)
        if source is None:
            continue
        _copy_dir(fs, source, path)
        repaired.append((kind(path), kind(source)))
    return repaired


def _filesystem(experiment: Union[Path, str]) -> tuple[Any, str]:
    """(pyarrow filesystem, the experiment's path inside it) for a directory or a URI."""
    import pyarrow.fs

    text = str(experiment)
    if "://" in text and not text.startswith("file://"):
        fs, inner = pyarrow.fs.FileSystem.from_uri(text)
        return fs, inner.rstrip("/")
    return pyarrow.fs.LocalFileSystem(), str(Path(text.removeprefix("file://")).resolve())


def _newest_state(fs: Any, root: str) -> str | None:
    import pyarrow.fs

    entries = fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
    states = sorted(e.path for e in entries if e.type == pyarrow.fs.FileType.File and STATE_FILE.match(e.base_name))
    return states[-1] if states else None


def _named_checkpoints(state: bytes, root: str) -> set[str]:
    """The checkpoint paths under `root` that the pickles inside the state JSON name. Matching
    from `root` itself also skips the pickled length byte before a string (which may be "/")."""
    pattern = re.compile(re.escape(root.encode()) + rb"/[\x20-\x7e]+?/checkpoint_\d{6}(?![0-9])")
    found: set[str] = set()
    for blob in _pickled_blobs(json.loads(state)):
        for match in pattern.finditer(blob):
            path = match.group().decode("ascii", "replace")
            if "/" not in path[len(root) + 1 :].rsplit("/", 1)[0]:  # root/TRIAL/checkpoint_N, nothing deeper
                found.add(path)
    return found


def _newer_checkpoint(fs: Any, path: str) -> str | None:
    """The trial's newest checkpoint when `path` is missing and a newer one exists, else None."""
    import pyarrow.fs

    name = path.rsplit("/", 1)[1]
    if not CHECKPOINT_DIR.match(name) or fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound:
        return None
    trial_dir = path.rsplit("/", 1)[0]
    siblings = fs.get_file_info(pyarrow.fs.FileSelector(trial_dir, allow_not_found=True))
    newer = sorted(e.path for e in siblings if e.type == pyarrow.fs.FileType.Directory
                   and CHECKPOINT_DIR.match(e.base_name) and e.base_name > name)
    return newer[-1] if newer else None


def _copy_dir(fs: Any, source: str, target: str) -> None:
    """Every file under `source` copied to the same place under `target` (on S3 a server-side copy)."""
    import pyarrow.fs

    fs.create_dir(target, recursive=True)
    for entry in fs.get_file_info(pyarrow.fs.FileSelector(source, recursive=True)):
        relative = entry.path[len(source) + 1 :]
        if entry.type == pyarrow.fs.FileType.Directory:
            fs.create_dir(f"{target}/{relative}", recursive=True)
        elif entry.type == pyarrow.fs.FileType.File:
            fs.copy_file(entry.path, f"{target}/{relative}")


def _pickled_blobs(node: Any) -> Iterator[bytes]:
    """The bytes of every CLOUDPICKLE_FALLBACK value, descending into JSON-in-strings
    (Tune stores each trial as a JSON string inside the JSON file)."""
    if isinstance(node, dict):
        if node.get("_type") == "CLOUDPICKLE_FALLBACK" and isinstance(node.get("value"), str):
            try:
                yield bytes.fromhex(node["value"])
            except ValueError:
                pass
        for value in node.values():
            yield from _pickled_blobs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _pickled_blobs(value)
    elif isinstance(node, str) and node.lstrip().startswith(("{", "[")):
        try:
            yield from _pickled_blobs(json.loads(node))
        except ValueError:
            pass
