"""Repair of a Tune experiment left behind by a killed driver, before `vaelab resume`.

Tune writes its experiment state (experiment_state-*.json) every few seconds, but deletes
a trial's checkpoints beyond `num_to_keep` the moment a newer one is registered. A driver
killed between the two leaves a state whose latest checkpoint of some trial is already
gone, and `Tuner.restore` then fails that trial ("Could not recover from checkpoint as it
does not exist on storage anymore") on every retry.

vaelab's checkpoints record their own epoch, step and RNG state (train.Trainer.save), so
any newer checkpoint of the same trial is a valid — and better — starting point: each
checkpoint the state names but the disk lacks is re-created as a copy of the newest
checkpoint in that trial's directory. Epochs the lost attempt already logged are not
logged again (trial._restore). No Ray import; nothing is unpickled: the paths are read
as bytes out of the hex-encoded pickles Tune embeds in the JSON.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any, Iterator

CHECKPOINT_DIR = re.compile(r"^checkpoint_\d{6}$")
# an absolute path ending in a checkpoint directory, inside pickled bytes
_PICKLED_PATH = re.compile(rb"/[\x21-\x7e][\x20-\x7e]*?/checkpoint_\d{6}(?![0-9])")


def newest_state_file(experiment_dir: Path) -> Path | None:
    """The experiment state Tune restores from (the newest by name, which holds a timestamp)."""
    files = sorted(experiment_dir.glob("experiment_state-*.json"))
    return files[-1] if files else None


def referenced_checkpoints(state_file: Path) -> set[Path]:
    """Every absolute checkpoint directory path the experiment state mentions."""
    data = json.loads(state_file.read_text())
    found: set[Path] = set()
    for blob in _pickled_blobs(data):
        # "/" + lstrip: a pickled string's length byte may itself be "/" (47)
        found.update(Path("/" + m.group().decode("ascii", "replace").lstrip("/"))
                     for m in _PICKLED_PATH.finditer(blob))
    return found


def repair_missing_checkpoints(experiment_dir: Path) -> list[tuple[Path, Path]]:
    """Re-create checkpoints the state names but the disk lacks; returns (missing, copied_from).

    Only paths inside `experiment_dir` are touched, and only when the trial's directory
    still holds a newer checkpoint to copy."""
    state = newest_state_file(experiment_dir)
    if state is None:
        return []
    root = experiment_dir.resolve()
    repaired = []
    for path in sorted(referenced_checkpoints(state)):
        if path.exists() or root not in path.parents or not CHECKPOINT_DIR.match(path.name):
            continue
        on_disk = sorted(p for p in path.parent.glob("checkpoint_*") if p.is_dir() and CHECKPOINT_DIR.match(p.name))
        newer = [p for p in on_disk if p.name > path.name]
        if not newer:
            continue
        shutil.copytree(newer[-1], path)
        repaired.append((path, newer[-1]))
    return repaired


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
