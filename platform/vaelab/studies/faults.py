"""Fault injection for tests only: a trial process that exits hard once, after a checkpoint.

`fault_from_env` reads the test's settings on the driver (they travel in the study context);
`maybe_inject_fault` is called by the trial function after each report. Imports nothing of vaelab.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Optional

# Fault injection for tests only: the trial process exits hard after reporting a
# checkpoint at epoch >= VAELAB_TEST_KILL_AT_EPOCH, once (the marker file records it).
KILL_EPOCH_ENV = "VAELAB_TEST_KILL_AT_EPOCH"
KILL_MARKER_ENV = "VAELAB_TEST_KILL_MARKER"


def maybe_inject_fault(ctx: Mapping[str, Any], epoch: int, checkpointed: bool) -> None:
    fault = ctx.get("fault")
    if not fault or not checkpointed or epoch < int(fault["kill_at_epoch"]):
        return
    try:
        fd = os.open(fault["marker"], os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return  # killed once already
    os.write(fd, f"killed at epoch {epoch} pid {os.getpid()}\n".encode())
    os.close(fd)
    os._exit(1)


def fault_from_env() -> Optional[dict[str, Any]]:
    epoch, marker = os.environ.get(KILL_EPOCH_ENV), os.environ.get(KILL_MARKER_ENV)
    if not epoch or not marker:
        return None
    return {"kill_at_epoch": int(epoch), "marker": str(Path(marker).resolve())}
