"""The metric names a trial reports (ARCHITECTURE.md), and what a wrong one says.

Used by the checks of `search.metric`, report tables and claims. Imports only
vaelab.config and wording.
"""

from __future__ import annotations

import re
from typing import Optional

from vaelab.config import MAX_DEPTH
from vaelab.studies.wording import suggest

# Metric names of ARCHITECTURE.md (per-epoch, evaluation epochs, last epoch only).
EPOCH_METRICS = frozenset({"epoch", "beta", "lr", "train_loss", "steps_per_s", "wall_time_s"})
EVAL_METRICS = frozenset({"train_elbo", "test_elbo", "kl_total", "active_units", "peak_mem_mb"})
FINAL_METRICS = frozenset({"test_ll_iw"})
LAYER_FAMILIES = ("kl_layer", "active_units_layer", "kl_std_normal_layer")


def metric_error(name: str, max_depth: int = MAX_DEPTH) -> Optional[str]:
    """None if `name` is a metric a trial reports (ARCHITECTURE.md), else why not."""
    if name in EPOCH_METRICS | EVAL_METRICS | FINAL_METRICS:
        return None
    layer = layer_metric(name)
    if layer is not None:
        return None if 1 <= layer[1] <= max_depth else f"layer {layer[1]} does not exist: trials here have at most {max_depth} layers"
    known = sorted(EPOCH_METRICS | EVAL_METRICS | FINAL_METRICS) + [f"{f}_<i>" for f in LAYER_FAMILIES]
    return f"unknown metric {name!r}{suggest(name, known)}; metrics: {', '.join(known)}"


def layer_metric(name: str) -> Optional[tuple[str, int]]:
    match = re.fullmatch(r"(" + "|".join(LAYER_FAMILIES) + r")_(\d+)", name)
    return (match.group(1), int(match.group(2))) if match else None
