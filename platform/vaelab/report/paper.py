"""The papers' published numbers (resources/paper_results.csv) and their lookup per cell.

The csv ships in the package: source, table, dataset, variant, latent_dims, finetune,
metric, value (one row per published number). A table cell is matched on the `PaperRef`
(source, table, dataset, finetune), the cell's variant label (through
`PaperRef.variant_map` when the study's label differs from the paper's, e.g.
LVAE+BN+WU -> LADDER+BN+WU for the ICML tables), its latent_dims and the metric.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from vaelab.report.spec import PaperRef

_RESOURCE = "paper_results.csv"


@dataclass(frozen=True)
class PaperRow:
    source: str
    table: str
    dataset: str
    variant: str
    latent_dims: str
    finetune: str
    metric: str
    value: float


@lru_cache(maxsize=1)
def paper_results() -> tuple[PaperRow, ...]:
    """Every row of the packaged paper_results.csv."""
    text = resources.files("vaelab").joinpath("resources", _RESOURCE).read_text(encoding="utf-8")
    rows = csv.DictReader(io.StringIO(text))
    return tuple(PaperRow(**{**row, "value": float(row["value"])}) for row in rows)


def paper_value(ref: PaperRef, variant: str, latent_dims: str, metric: str) -> float | None:
    """The published number for one cell, or None when the paper has none."""
    label = ref.variant_map.get(variant, variant)
    for row in paper_results():
        if (
            row.source == ref.source
            and row.table == ref.table
            and row.dataset == ref.dataset
            and row.finetune == ref.finetune
            and row.variant == label
            and row.latent_dims == latent_dims
            and row.metric == metric
        ):
            return row.value
    return None


def total_metric(per_layer_prefix: str) -> str:
    """The csv metric of a per-layer table's total row: active_units_layer -> active_units."""
    return per_layer_prefix.removesuffix("_layer")


def format_paper(value: float) -> str:
    return f"{value:g}"
