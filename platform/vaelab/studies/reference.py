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
from vaelab.report.spec import ClaimSpec, FigureName, PaperRef, ReportSpec, TableSpec
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
    "report": "the report's tables, claims, figures and notes (see The report section below)",
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
# The `report:` section: key path -> (meaning, an example as written in a study).
REPORT_KEYS: dict[str, tuple[str, str]] = {
    "report.alpha": ("the level every claim is tested at, each on its own and, in a second verdict, all the "
                     "study's claims together (Holm across claims)", "alpha: 0.05"),
    "report.claims": ("the papers' claims as comparisons the grid can answer (report.claims below)",
                      "claims: [{name: warmup_helps, ...}]"),
    "report.tables": ("ablation tables: rows x columns of a final metric, mean ± std over seeds "
                      "(report.tables below)", "tables: [{name: ll, rows: latent_dims, columns: variant, "
                      "value: test_ll_iw}]"),
    "report.figures": ("figures to draw (names below); empty: every figure the data allows",
                       "figures: [ll_vs_depth, curves]"),
    "report.notes": ("free text at the top of the report (budget caveats and the like)",
                     "notes: Smoke run; numbers are not comparable to the papers."),
    # tables
    "report.tables.name": ("the table's name (letters, digits, _ -): its heading when it has no title, its LaTeX label",
                           "name: test_ll_iw"),
    "report.tables.title": ("the caption", "title: Test log-likelihood L_5000 by latent layers and variant"),
    "report.tables.rows": ("what the rows are: a trial parameter, `variant`, or `layer` (rows 1..L plus a "
                           "total; `value` is then a per-layer metric prefix)", "rows: latent_dims"),
    "report.tables.columns": ("what the columns are: a trial parameter or `variant`", "columns: variant"),
    "report.tables.value": ("the final metric in each cell (with rows: layer, a prefix such as "
                            "active_units_layer)", "value: test_ll_iw"),
    "report.tables.aggregate": ("how seeds are combined: mean ± std, with n", "aggregate: mean_std"),
    "report.tables.better": ("which way is better: the best cell of each row is bold", "better: lower"),
    "report.tables.where": ("only trials whose parameters have these values", "where: {depth: 5}"),
    "report.tables.paper": ("the paper's numbers beside each cell (report.tables.paper below)",
                            "paper: {source: lvae-icml, table: table1, dataset: mnist, metric: test_ll_iw5000}"),
    "report.tables.row_order": ("row order, values as shown; values not named follow",
                                'row_order: ["64", "64-32", "64-32-16"]'),
    "report.tables.column_order": ("column order, values as shown; values not named follow",
                                   "column_order: [VAE, VAE+BN, VAE+BN+WU, LADDER+BN+WU]"),
    # tables[].paper
    "report.tables.paper.source": ("the paper, as paper_results.csv names it", "source: lvae-icml"),
    "report.tables.paper.table": ("the paper's table", "table: table2"),
    "report.tables.paper.dataset": ("the dataset of the paper's rows", "dataset: mnist"),
    "report.tables.paper.metric": ("the paper's metric (per-layer tables: the prefix, e.g. active_units_layer)",
                                   "metric: test_ll_iw5000"),
    "report.tables.paper.finetune": ("which fine-tuning row of the paper (none: before fine-tuning)",
                                     "finetune: annlr_mc1_iw1"),
    "report.tables.paper.variant_map": ("the study's variant label -> the paper's, where they differ",
                                        "variant_map: {LVAE+BN+WU: LADDER+BN+WU}"),
    # claims
    "report.claims.name": ("the claim's name (letters, digits, _ -)", "name: warmup_helps"),
    "report.claims.statement": ("the claim in words", "statement: VAE+BN+WU > VAE+BN on test_ll_iw at every depth"),
    "report.claims.source": ("where the paper says it", 'source: "ICML 2016 §4, Fig 3c"'),
    "report.claims.metric": ("the final metric compared", "metric: test_ll_iw"),
    "report.claims.axis": ("compare form: the dimension `a` and `b` are levels of (a parameter or variant)",
                           "axis: inference"),
    "report.claims.a": ("compare form: the level claimed better (greater, or less with direction: less); for a "
                        "numeric parameter also `on` (every non-zero value) or `off` (0), levels every budget keeps: "
                        "a budget rescales warmup_epochs (warmup_fraction) but never turns warm-up on or off, so "
                        "`axis: warmup_epochs, a: on, b: [off]` holds in every budget where `a: 200` does in one",
                        "a: VAE+BN+WU"),
    "report.claims.b": ("compare form: the levels `a` beats (`on` / `off` as for `a`); empty: every other level "
                        "of `axis`", "b: [VAE+BN]"),
    "report.claims.threshold": ("threshold form (instead of `a`): the metric is beyond this value",
                                "threshold: 0.1"),
    "report.claims.direction": ("greater or less: which side of `b` / `threshold` the claim puts `a` / the metric",
                                "direction: less"),
    "report.claims.per": ("one test per value of this parameter (a cell each)", "per: latent_dims"),
    "report.claims.levels": ("only these values of `per` (`on` / `off` as for `a`)", "levels: [0.8, 0.9, 1.0]"),
    "report.claims.where": ("only trials whose parameters have these values (`on` / `off` as for `a`)",
                            "where: {depth: 4}"),
    "report.claims.combine": ("all: the claim holds when every cell holds (Holm-corrected); any: when one does",
                              "combine: any"),
    "report.claims.test": ("t: paired t-test by seed (Welch / one-sample t unpaired); permutation: exact "
                           "sign-flip / permutation test, which cannot reach alpha with few seeds (smallest p "
                           "2/2^n for n paired seeds: `vaelab validate` warns)", "test: permutation"),
}
FIGURE_MEANINGS = {
    "ll_vs_depth": "test log-likelihood vs number of latent layers, per variant (ICML Fig 3)",
    "unit_kl_heatmaps": "per-unit KL over the epochs, one panel per layer (ICML Fig 5)",
    "active_units": "active units per layer per variant, as bars (ICML Table 2)",
    "kl_std_normal": "KL(q(z_i|·) ‖ N(0, I)) per layer (ICML Fig 6a)",
    "latent_pca": "PCA of the posterior means per layer, coloured by label (ICML Fig 7)",
    "prior_samples": "images generated with the prior injected at each layer (ICML Fig 6b)",
    "kl_vs_rho": "top-layer KL vs OU smoothing ρ: the phase transition (Hermite VAE Fig 1)",
    "curves": "training curves (test ELBO, total KL) per variant",
}
REPORT_SECTIONS: list[tuple[str, type[BaseModel]]] = [
    ("report", ReportSpec), ("report.tables", TableSpec), ("report.tables.paper", PaperRef),
    ("report.claims", ClaimSpec),
]
REPORT_EXAMPLE = """\
report:
  notes: Short budget; compare with the papers at the paper budget only.
  alpha: 0.05
  tables:
    - name: test_ll_iw
      title: Test log-likelihood L_5000 (ICML Fig 3c)
      rows: latent_dims
      columns: variant
      value: test_ll_iw
      row_order: ["64", "64-32", "64-32-16"]
      paper: {source: lvae-icml, table: table1, dataset: mnist, metric: test_ll_iw5000}
    - name: active_units
      rows: layer
      columns: variant
      value: active_units_layer
      where: {depth: 5}
  claims:
    - name: warmup_helps
      statement: VAE+BN+WU > VAE+BN on test_ll_iw at every depth
      source: "ICML 2016 §4, Fig 3c"
      metric: test_ll_iw
      a: VAE+BN+WU
      b: [VAE+BN]
      per: latent_dims
    - name: top_kl_collapses
      statement: top-layer KL < 0.1 nats for rho >= 0.8
      source: "Hermite VAE §5.1.1, Fig 1"
      metric: kl_layer_4
      threshold: 0.1
      direction: less
      where: {depth: 4}
      per: rho
      levels: [0.8, 0.9, 1.0]
  figures: [ll_vs_depth, curves]
"""
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
    for title, model in REPORT_SECTIONS:  # editors show these on hover
        for key, prop in defs.get(model.__name__, {}).get("properties", {}).items():
            prop.setdefault("description", REPORT_KEYS[f"{title}.{key}"][0])
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
              "Allowed in `fixed`, `axes`, `overrides`, budgets, `vaelab run --set` and `vaelab train --set` "
              "(`seed` comes from `seeds`). Precedence, lowest first: default < `fixed` < axes < `overrides` < "
              "`checkpoint_every` < budget < `vaelab run --set` < `seeds`. A `--set` of an axis's name pins that "
              "axis (`--set depth=2`; a bundled axis takes a label: `--set variant=VAE+BN`); a `--set` of a "
              "parameter the items of a bundled axis differ in is refused, since it would train the same model "
              "under two names; the run's first lines say what each `--set` overrode.", "",
              _row("parameter", "type", "default", "range"), _row("---", "---", "---", "---")]
    for name, field in TrialConfig.model_fields.items():
        lines.append(_row(f"`{name}`", type_text(field.annotation), _default_text(field), _bounds_text(field)))
    lines += ["", *_report_reference()]
    return "\n".join(lines)


def _report_reference() -> list[str]:
    """The `report:` section: every key of tables, claims, figures and notes, an example each."""
    lines = ["## The report section", "",
             "`report:` says what `vaelab report` (and the report at the end of `vaelab run`) writes: "
             "ablation tables, the papers' claims tested over seeds (`vaelab claims`), figures and notes. "
             "`vaelab validate` refuses a table or claim naming a metric, parameter, variant or level the "
             "budget's grid lacks. A whole section:", "", "```yaml", REPORT_EXAMPLE.rstrip("\n"), "```", ""]
    for title, model in REPORT_SECTIONS:
        lines += [f"### {title}" + ("[]" if title != "report" and not title.endswith("paper") else ""), "",
                  _row("key", "type", "default", "meaning", "example"), _row("---", "---", "---", "---", "---")]
        for key, field in model.model_fields.items():
            meaning, example = REPORT_KEYS[f"{title}.{key}"]
            lines.append(_row(f"`{key}`", type_text(field.annotation), _default_text(field), meaning, f"`{example}`"))
        lines.append("")
    lines += ["### report.figures", "", "Names of `figures:` (a figure the data cannot make is skipped, and "
              "the report says why):", "", _row("figure", "what it shows"), _row("---", "---")]
    lines += [_row(f"`{name}`", FIGURE_MEANINGS[name]) for name in typing.get_args(FigureName)]
    return lines + [""]


def missing_meanings() -> list[str]:
    """Model fields and figure names the reference has no meaning for (a test keeps this empty)."""
    study = [f"{title}.{key}" for title, model in SECTIONS for key in model.model_fields if key not in MEANINGS]
    report = [f"{title}.{key}" for title, model in REPORT_SECTIONS for key in model.model_fields
              if f"{title}.{key}" not in REPORT_KEYS]
    figures = [f"report.figures: {name}" for name in typing.get_args(FigureName) if name not in FIGURE_MEANINGS]
    return study + report + figures
