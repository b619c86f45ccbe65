"""The report's Parquet files: explicit, stable Arrow schemas; deterministic rows.

`trials.parquet` — one row per trial run:

    study          string   the study (experiment) name
    trial_id       string   tag vaelab.trial_id
    mlflow_run_id  string
    variant        string   tag vaelab.variant as logged ("" when the trial has no label)
    status         string   finished | diverged | failed | stopped | running
    cohort         string   tag vaelab.cohort (null when absent)
    node           string   tag vaelab.node (null when absent)
    run            string   the study run's name (`vaelab run` printed it; null without one)
    budget         string   the study run's budget (null when unknown)
    git_sha        string   the SHA of the vaelab code the study ran (null when unknown)
    <param>        every TrialConfig field, in declaration order, always present (null
                   when a run did not log it): int -> int64, float -> float64,
                   bool -> bool, str / Literal -> string, dims tuples -> string
                   in the papers' notation ('64-32-16'); params TrialConfig does not know
                   follow, in natural order, as string
    <metric>       every final metric (the last logged value), natural order
                   (kl_layer_2 before kl_layer_10): counts (epoch, active_units,
                   active_units_layer_<i>) int64, the rest float64; a metric whose name
                   is already a column (the per-epoch `lr` beside the `lr` param) is
                   named `<name>_final`
    wall_time_s    float64  the last logged wall_time_s metric, else MLflow's run
                   duration, else null

`curves.parquet` — every metric history, long format:

    trial_id string, epoch int64 (the MLflow step), metric string, value float64

`units.parquet` — per-unit KL over evaluation epochs (from unit_kl.json):

    trial_id string, epoch int64, layer int64 (1 = bottom), unit int64 (0-based index
    within the layer), kl float64

Rows are sorted by trial_id (natural order), then run id / metric / epoch / layer / unit.
NaN (a diverged trial's last values) is stored as null — Arrow compares NaN unequal to
itself, and a null is what a reader's SQL expects; the status column says why. The
files hold no timestamps and no pandas metadata, so regenerating from the same MLflow
content gives equal tables (`pyarrow.Table.equals`).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from vaelab.config import TrialConfig
from vaelab.report.order import natural_key
from vaelab.tracking.read import TrialRun, param_kind
from vaelab.tracking.tags import TAG_COHORT, TAG_NODE

FIXED_COLUMNS = ("study", "trial_id", "mlflow_run_id", "variant", "status", "cohort", "node", "run", "budget",
                 "git_sha")
NULLABLE_FIXED = frozenset({"cohort", "node", "run", "budget", "git_sha"})
COUNT_METRICS = re.compile(r"^(epoch|active_units|active_units_layer_\d+)$")  # whole numbers: int64
_KIND_TYPES = {
    "int": pa.int64(),
    "float": pa.float64(),
    "bool": pa.bool_(),
    "str": pa.string(),
    "dims": pa.string(),
}

CURVES_SCHEMA = pa.schema(
    [
        pa.field("trial_id", pa.string(), nullable=False),
        pa.field("epoch", pa.int64(), nullable=False),
        pa.field("metric", pa.string(), nullable=False),
        pa.field("value", pa.float64()),
    ]
)
UNITS_SCHEMA = pa.schema(
    [
        pa.field("trial_id", pa.string(), nullable=False),
        pa.field("epoch", pa.int64(), nullable=False),
        pa.field("layer", pa.int64(), nullable=False),
        pa.field("unit", pa.int64(), nullable=False),
        pa.field("kl", pa.float64()),
    ]
)


def trial_sort_key(trial: TrialRun) -> tuple[Any, ...]:
    return (natural_key(trial.trial_id), trial.run_id)


# --------------------------------------------------------------------------- trials


def param_columns(trials: Iterable[TrialRun]) -> list[str]:
    """Every TrialConfig field (declaration order), then unknown params (natural order)."""
    known = list(TrialConfig.model_fields)
    extra = {name for t in trials for name in t.params if name not in TrialConfig.model_fields}
    return known + sorted(extra - set(FIXED_COLUMNS), key=natural_key)


def metric_columns(trials: Iterable[TrialRun], taken: set[str]) -> dict[str, str]:
    """final metric name -> column name, in natural order (wall_time_s has its own column)."""
    names = sorted({m for t in trials for m in t.metrics if m != "wall_time_s"}, key=natural_key)
    return {m: (f"{m}_final" if m in taken else m) for m in names}


def metric_type(name: str) -> pa.DataType:
    return pa.int64() if COUNT_METRICS.match(name) else pa.float64()


def trials_schema(params: list[str], metrics: Mapping[str, str]) -> pa.Schema:
    fields = [pa.field(name, pa.string(), nullable=name in NULLABLE_FIXED) for name in FIXED_COLUMNS]
    fields += [pa.field(name, _KIND_TYPES[param_kind(name)]) for name in params]
    fields += [pa.field(column, metric_type(metric)) for metric, column in metrics.items()]
    fields.append(pa.field("wall_time_s", pa.float64()))
    return pa.schema(fields)


def trials_table(study: str, trials: Iterable[TrialRun], run: Mapping[str, str | None] | None = None) -> pa.Table:
    """The trials.parquet table (see the module docstring for its schema); `run`: the
    study run's `run`, `budget` and `git_sha` (absent: null)."""
    trials = sorted(trials, key=trial_sort_key)
    params = param_columns(trials)
    metrics = metric_columns(trials, set(FIXED_COLUMNS) | set(params))
    schema = trials_schema(params, metrics)
    columns: dict[str, list[Any]] = {
        "study": [study] * len(trials),
        "trial_id": [t.trial_id for t in trials],
        "mlflow_run_id": [t.run_id for t in trials],
        "variant": [t.variant for t in trials],
        "status": [t.status for t in trials],
        "cohort": [t.tags.get(TAG_COHORT) for t in trials],
        "node": [t.tags.get(TAG_NODE) for t in trials],
        **{key: [(run or {}).get(key)] * len(trials) for key in ("run", "budget", "git_sha")},
    }
    for name in params:
        columns[name] = [t.params.get(name) for t in trials]
    for metric, column in metrics.items():
        values = [_nan_to_null(t.metrics.get(metric)) for t in trials]
        columns[column] = [None if v is None else round(v) for v in values] if COUNT_METRICS.match(metric) else values
    columns["wall_time_s"] = [_wall_time(t) for t in trials]
    return pa.Table.from_pydict(columns, schema=schema)


def _wall_time(trial: TrialRun) -> float | None:
    logged = _nan_to_null(trial.metrics.get("wall_time_s"))
    return logged if logged is not None else trial.duration_s


def _nan_to_null(value: float | None) -> float | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


def rows_table(records: list[dict[str, Any]]) -> pa.Table:
    """Query rows (one dict per trial run: ids, typed params, final metrics) as Arrow with
    trials.parquet's column names and types, so `vaelab query --format parquet` and a
    report's trials.parquet read alike; a column null in every row keeps its type."""
    names = list(dict.fromkeys(k for r in records for k in r))
    arrays, fields = [], []
    for name in names:
        dtype = _column_type(name)
        values = [_nan_to_null(v) if isinstance(v, float) else v for v in (r.get(name) for r in records)]
        if dtype == pa.int64():
            values = [None if v is None else round(v) for v in values]
        elif dtype == pa.string():
            values = [None if v is None else str(v) for v in values]
        arrays.append(pa.array(values, type=dtype))
        fields.append(pa.field(name, dtype))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _column_type(name: str) -> pa.DataType:
    if name in TrialConfig.model_fields:
        return _KIND_TYPES[param_kind(name)]
    if name in FIXED_COLUMNS or name in ("trial_key", "run_name"):
        return pa.string()
    return metric_type(name.removesuffix("_final"))


# --------------------------------------------------------------------------- curves


def curves_table(trials: Iterable[TrialRun], histories: pd.DataFrame) -> pa.Table:
    """curves.parquet: one row per (trial, metric, epoch), from the histories read in bulk
    (columns run_id, metric, step, value; one row per (run_id, metric, step)).

    Ordered by trial (natural order, then run id), metric (natural order), epoch: the
    order is computed once per trial and per metric name, then applied to every row by
    integer codes (millions of rows at 10,000 trials)."""
    ordered = sorted(trials, key=trial_sort_key)
    runs = pd.Categorical(histories["run_id"], categories=[t.run_id for t in ordered])  # code -1: not a trial
    names = sorted(histories["metric"].unique(), key=natural_key)
    metrics = pd.Categorical(histories["metric"], categories=names)
    steps = histories["step"].to_numpy(dtype=np.int64)
    keep = np.flatnonzero(runs.codes >= 0)
    order = keep[np.lexsort((steps[keep], metrics.codes[keep], runs.codes[keep]))]
    trial_ids = np.array([t.trial_id for t in ordered] or [""], dtype=object)[runs.codes[order]]
    return pa.Table.from_arrays(
        [
            pa.array(trial_ids, pa.string()),
            pa.array(steps[order], pa.int64()),
            pa.array(np.asarray(names + [""], dtype=object)[metrics.codes[order]], pa.string()),
            pa.array(histories["value"].to_numpy(dtype=np.float64)[order], pa.float64(), from_pandas=True),
        ],
        schema=CURVES_SCHEMA,
    )


# --------------------------------------------------------------------------- units


def unit_kl_columns(path: Path) -> tuple[list[int], list[int], list[int], list[float]]:
    """One trial's unit_kl.json ([{epoch, layer, kl: [...]}, ...]) as the columns epoch,
    layer, unit, kl of units.parquet, sorted by epoch, layer, unit.

    When an (epoch, layer) entry appears twice (a retried trial), the later one wins.
    """
    entries = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a list of {{epoch, layer, kl}} entries")
    latest: dict[tuple[int, int], list[float]] = {}
    for entry in entries:
        latest[(int(entry["epoch"]), int(entry["layer"]))] = [float(v) for v in entry["kl"]]
    epochs: list[int] = []
    layers: list[int] = []
    units: list[int] = []
    kl: list[float] = []
    for (epoch, layer), values in sorted(latest.items()):
        epochs += [epoch] * len(values)
        layers += [layer] * len(values)
        units += range(len(values))
        kl += values
    return epochs, layers, units, kl


def units_table(trials: Iterable[TrialRun], columns_by_run: Mapping[str, tuple[list, list, list, list]]) -> pa.Table:
    """units.parquet from each trial run's columns (`unit_kl_columns`), in trial order; NaN
    is stored as null."""
    trial_ids: list[str] = []
    epochs: list[int] = []
    layers: list[int] = []
    units: list[int] = []
    kl: list[float] = []
    for trial in sorted(trials, key=trial_sort_key):
        if trial.run_id not in columns_by_run:
            continue
        e, layer, u, k = columns_by_run[trial.run_id]
        trial_ids += [trial.trial_id] * len(e)
        epochs += e
        layers += layer
        units += u
        kl += k
    return pa.Table.from_arrays(
        [pa.array(trial_ids, pa.string()), pa.array(epochs, pa.int64()), pa.array(layers, pa.int64()),
         pa.array(units, pa.int64()), pa.array(np.asarray(kl, dtype=np.float64), pa.float64(), from_pandas=True)],
        schema=UNITS_SCHEMA,
    )


# --------------------------------------------------------------------------- io


def write_parquet(table: pa.Table, path: Path) -> Path:
    """Write atomically (temp file + rename), without schema metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table.replace_schema_metadata(None), tmp)
    os.replace(tmp, path)
    return path
