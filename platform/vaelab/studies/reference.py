"""The study-file reference and its JSON Schema, generated from the pydantic models.

`vaelab schema` prints either; the committed copies (docs/study-schema.md,
docs/study.schema.json) are checked against these functions by the tests, so a key or a
trial parameter added to the models shows up in both, or the tests fail. Keys, types,
defaults and ranges come from the models; the one-line meanings of the study's own keys
are written here (a test fails when a model field has none).
"""

from __future__ import annotations

import json
import types
import typing
from typing import Any, Literal, Union

from pydantic import BaseModel

from vaelab.config import TrialConfig
from vaelab.report.spec import ReportSpec
from vaelab.studies.schema import (
    AXIS_KINDS,
    BUDGET_SPECIAL,
    SPEC_PARAMS,
    AxisSpec,
    CohortSpec,
    FailureSpec,
    ResourcesSpec,
    SchedulerSpec,
    SearchSpaceSpec,
    SearchSpec,
    StudySpec,
)

SCHEMA_ID = "https://vaelab.invalid/study.schema.json"  # an identifier, not a download

MEANINGS: dict[str, str] = {
    # study
    "name": "the study's name: its MLflow experiment and its report folder (letters, digits, _ . -)",
    "description": "free text",
    "search_space": "a search-space file (path relative to the study) or the search space itself (below)",
    "overrides": "trial parameters set for every trial; an override of a scalar axis pins it",
    "budgets": "budget name -> trial parameters it sets (epochs, eval_iw, ...) plus num_samples, "
               "warmup_fraction, seeds; absent: one budget `default` that sets nothing",
    "default_budget": "the budget `vaelab run` uses without --budget (needed when there are several)",
    "seeds": "every trial is run once per seed",
    "search": "how the space is searched (below)",
    "resources": "CPUs / GPUs per Ray Tune trial (below)",
    "cohort": "trials differing only in seed, rho, warm-up, free bits trained together in one set of kernels",
    "failure": "retries of a trial whose worker dies",
    "checkpoint_every": "epochs between checkpoints (default: each trial's own checkpoint_every)",
    "report": "tables, figures and notes of the report (see report/spec.py)",
    # search space
    "search_space.name": "a name for the search space (informational)",
    "search_space.description": "free text",
    "fixed": "trial parameters every trial gets",
    "axes": "axis name -> one of the axis kinds below; a grid of mappings is a bundled axis "
            "(each item sets several parameters, `label` names it)",
    "exclude": "partial matches (parameter -> value; `label` matches variant labels) of trials to drop",
    # search
    "mode": "grid: every combination; random: num_samples draws; optuna: TPE proposes trials while running",
    "metric": "what random/optuna optimise and the progress line's `best` (default test_ll_iw)",
    "direction": "max or min (default: max for log-likelihoods)",
    "num_samples": "points drawn by random / optuna (a budget may override)",
    "max_concurrent": "Ray Tune trials at once (default: as resources allow)",
    "seed": "seeds the random sampler / optuna, not the trials",
    "scheduler": "early stopping: {type: asha, grace_period, reduction_factor}",
    "type": "asha (ray.tune.schedulers.ASHAScheduler)",
    "grace_period": "epochs before a trial can be stopped",
    "reduction_factor": "ASHA's reduction factor",
    # resources, cohort, failure
    "cpu": "CPUs per Tune trial",
    "gpu": "GPUs per Tune trial (a fraction below 1 packs trials on one GPU)",
    "size": "members per cohort (trials trained in one set of kernels)",
    "max_failures": "retries per trial (-1: forever)",
}
AXIS_MEANINGS = {
    "grid": "every listed value (mappings: a bundled axis)",
    "choice": "one listed value per random/optuna sample",
    "uniform": "[low, high], uniform",
    "loguniform": "[low, high], uniform in log space",
    "randint": "[low, high): an integer, high excluded (as ray.tune.randint)",
}
BUDGET_MEANINGS = {
    "num_samples": "random/optuna points for this budget",
    "warmup_fraction": "warm-up as a fraction of the budget's epochs (trials whose warm-up is on)",
    "seeds": "the seeds for this budget",
}
SECTIONS: list[tuple[str, type[BaseModel]]] = [
    ("Study file", StudySpec), ("search_space", SearchSpaceSpec), ("search", SearchSpec),
    ("search.scheduler", SchedulerSpec), ("resources", ResourcesSpec), ("cohort", CohortSpec),
    ("failure", FailureSpec),
]


# --------------------------------------------------------------------------- JSON Schema


def _dims_schema() -> dict[str, Any]:
    return {"anyOf": [{"type": "array", "items": {"type": "integer", "minimum": 1}},
                      {"type": "string", "pattern": r"^\d+([-,]\d+)*$"}, {"type": "integer", "minimum": 1}],
            "description": "sizes, bottom layer first: [64, 32, 16] or '64-32-16'"}


def trial_param_schemas() -> dict[str, Any]:
    """JSON Schema of every trial parameter a study may set (seed comes from `seeds`)."""
    schema = TrialConfig.model_json_schema()
    params = {}
    for name, prop in schema["properties"].items():
        if name not in SPEC_PARAMS:
            continue
        prop = dict(prop)
        prop.pop("title", None)
        params[name] = {**_dims_schema(), "default": prop.get("default")} if name in ("latent_dims", "hidden_dims") else prop
    return params


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a study file (YAML editors use it for completion and checks)."""
    study = StudySpec.model_json_schema(ref_template="#/$defs/{model}")
    space = SearchSpaceSpec.model_json_schema(ref_template="#/$defs/{model}")
    defs = {**study.pop("$defs", {}), **space.pop("$defs", {})}
    params = trial_param_schemas()
    param_map = {"type": "object", "properties": params, "additionalProperties": False}
    space["properties"]["fixed"] = {**param_map, "description": MEANINGS["fixed"]}
    defs["SearchSpaceSpec"] = space
    budget = {"type": "object", "additionalProperties": False, "properties": {
        **params,
        "num_samples": {"type": "integer", "minimum": 1, "description": BUDGET_MEANINGS["num_samples"]},
        "warmup_fraction": {"type": "number", "minimum": 0, "maximum": 1,
                            "description": BUDGET_MEANINGS["warmup_fraction"]},
        "seeds": {"type": "array", "items": {"type": "integer", "minimum": 0}, "description": BUDGET_MEANINGS["seeds"]},
    }}
    props = study["properties"]
    props["search_space"] = {"anyOf": [{"type": "string"}, {"$ref": "#/$defs/SearchSpaceSpec"}],
                             "description": MEANINGS["search_space"]}
    props["overrides"] = {**param_map, "description": MEANINGS["overrides"]}
    props["budgets"] = {"type": "object", "additionalProperties": budget, "minProperties": 1,
                        "description": MEANINGS["budgets"]}
    for section in (props, space["properties"]):
        for key, prop in section.items():
            prop.setdefault("description", MEANINGS.get(key, ""))
            prop.pop("title", None)
    return {**study, "$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID,
            "title": "vaelab study", "$defs": defs}


def json_schema_text() -> str:
    return json.dumps(json_schema(), indent=1, sort_keys=True) + "\n"


# --------------------------------------------------------------------------- Markdown


def type_text(annotation: Any) -> str:
    """An annotation as a reader of YAML thinks of it: `int`, `one of: a, b`, `sizes`."""
    if annotation is Any:
        return "any"
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        inner = " or ".join(type_text(a) for a in args)
        return f"{inner} or null" if len(args) < len(typing.get_args(annotation)) else inner
    if origin is Literal:
        return "one of: " + ", ".join(str(v) for v in typing.get_args(annotation))
    if origin is typing.Annotated:
        return type_text(typing.get_args(annotation)[0])
    if origin is tuple:
        return "sizes (64-32-16)"
    if origin in (list, dict):
        args = typing.get_args(annotation)
        if origin is dict:
            return "mapping" if not args else f"mapping of {type_text(args[1])}"
        return f"list of {type_text(args[0])}" if args else "list"
    if isinstance(annotation, type):
        return annotation.__name__ if not issubclass(annotation, BaseModel) else "mapping (below)"
    return str(annotation)


def _default_text(field: Any) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "(below)"
    if isinstance(value, tuple):
        return "-".join(str(v) for v in value)
    return "null" if value is None else json.dumps(value, default=str) if isinstance(value, (dict, list)) else str(value)


def _bounds_text(field: Any) -> str:
    symbols = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<", "min_length": "at least"}
    parts = [f"{symbols[attr]} {getattr(meta, attr)}" for meta in field.metadata
             for attr in symbols if getattr(meta, attr, None) is not None]
    return ", ".join(parts)


def _row(*cells: str) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def markdown_reference() -> str:
    """docs/study-schema.md: every study key, axis kind and trial parameter."""
    lines = ["# Study file reference", "",
             "Generated from vaelab's pydantic models by `vaelab schema --format markdown` (do not edit: "
             "`tests/test_schema_reference.py` fails when this file is stale). The JSON Schema for editors "
             "is `docs/study.schema.json` (`vaelab schema`); `vaelab validate FILE` checks a study "
             "completely, trial by trial.", ""]
    for title, model in SECTIONS:
        lines += [f"## {title}", "", _row("key", "type", "default", "meaning"), _row("---", "---", "---", "---")]
        for key, field in model.model_fields.items():
            meaning = MEANINGS.get(f"{title}.{key}", MEANINGS.get(key, ""))
            lines.append(_row(f"`{key}`", type_text(field.annotation), _default_text(field), meaning))
        lines.append("")
    lines += ["## Axis kinds", "", "Each axis under `axes:` is a mapping with exactly one of these keys, "
              "e.g. `depth: {grid: [1, 2, 3]}`.", "", _row("kind", "values"), _row("---", "---")]
    lines += [_row(f"`{kind}`", AXIS_MEANINGS[kind]) for kind in AXIS_KINDS]
    lines += ["", "## Budget keys", "", "A budget sets trial parameters (below) and these:", "",
              _row("key", "meaning"), _row("---", "---")]
    lines += [_row(f"`{key}`", BUDGET_MEANINGS[key]) for key in BUDGET_SPECIAL]
    lines += ["", "## Trial parameters", "",
              "Allowed in `fixed`, `axes`, `overrides`, budgets and `vaelab train --set` (`seed` comes from "
              "`seeds`). Precedence, lowest first: default < `fixed` < axes < `overrides` < "
              "`checkpoint_every` < budget < `seeds`.", "",
              _row("parameter", "type", "default", "range"), _row("---", "---", "---", "---")]
    for name, field in TrialConfig.model_fields.items():
        lines.append(_row(f"`{name}`", type_text(field.annotation), _default_text(field), _bounds_text(field)))
    lines += ["", f"The `report:` section: {', '.join(f'`{k}`' for k in ReportSpec.model_fields)} "
              "(see `platform/vaelab/report/spec.py`).", ""]
    return "\n".join(lines)


def missing_meanings() -> list[str]:
    """Model fields the reference has no meaning for (a test keeps this empty)."""
    return [f"{title}.{key}" for title, model in SECTIONS for key in model.model_fields if key not in MEANINGS]
