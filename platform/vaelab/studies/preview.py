"""What `vaelab validate` says about a valid study: trials per budget, a few trial keys,
and trials that would train the very same model (copies that waste a share of a study).

Two trials are copies when their configurations agree once settings that provably have
no effect are dropped: OU smoothing (rho, ou_samples, ou_target) acts on the
intermediate conditionals p(z_i | z_i+1), of which a one-layer model has none, and does
nothing at rho = 1; `bn_eval` means nothing without batch norm; latent and hidden sizes
past `depth` are never built.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from vaelab.studies.check_report import permutation_warnings
from vaelab.studies.expand import TrialSpec, expand_trials, load_study, trial_params
from vaelab.studies.schema import Study

PREVIEW_KEYS = 3
_OU = ("rho", "ou_samples", "ou_target")


def inert_params(config: Mapping[str, Any]) -> dict[str, str]:
    """param -> why it cannot change this trial's result."""
    inert: dict[str, str] = {}
    if int(config.get("depth", 5)) == 1:
        inert.update({p: "OU smoothing has no intermediate conditional at depth 1" for p in _OU})
    elif float(config.get("rho", 1.0)) == 1.0:
        inert.update({p: "OU smoothing is off at rho = 1" for p in _OU[1:]})
    if not config.get("batch_norm"):
        inert["bn_eval"] = "no batch norm"
    return inert


def effective_config(config: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """The configuration with inert settings dropped and sizes cut to depth (hashable)."""
    depth = int(config.get("depth", 5))
    inert = inert_params(config)
    out = {}
    for key, value in config.items():
        if key in inert:
            continue
        if key in ("latent_dims", "hidden_dims") and isinstance(value, (list, tuple)):
            value = tuple(value)[:depth]
        out[key] = repr(value)
    return tuple(sorted(out.items()))


def copies(trials: Sequence[TrialSpec]) -> list[list[TrialSpec]]:
    """Groups (of two or more) of trials that train the same model; file order."""
    groups: dict[tuple[tuple[str, str], ...], list[TrialSpec]] = defaultdict(list)
    for trial in trials:
        groups[effective_config(trial.config)].append(trial)
    return [group for group in groups.values() if len(group) > 1]


def _why(group: Sequence[TrialSpec]) -> str:
    first = group[0].config
    differing = sorted({k for t in group[1:] for k, v in t.config.items() if first.get(k) != v} & set(inert_params(first)))
    reasons = sorted({inert_params(first)[k] for k in differing})
    return f"{', '.join(differing)}: {'; '.join(reasons)}" if differing else "same settings"


def budget_lines(study: Study, budget: str) -> list[str]:
    """`budget smoke: 32 trials (16 distinct ...)`, then a warning per group of copies and
    per claim this budget's trials cannot decide."""
    if study.search.mode == "optuna":
        return [f"budget {budget}: {study.num_samples_for(budget)} optuna trials (proposed while running)"]
    trials = expand_trials(study, budget)
    epochs = sorted({int(t.config.get("epochs", 0)) for t in trials})
    groups = copies(trials)
    wasted = sum(len(g) - 1 for g in groups)
    line = f"budget {budget}: {len(trials)} trials, {'/'.join(map(str, epochs))} epochs"
    lines = [f"{line} — only {len(trials) - wasted} distinct" if wasted else line]
    for group in groups:
        keys = " = ".join(t.trial_key for t in group[:3]) + (" = …" if len(group) > 3 else "")
        lines.append(f"  warning: identical trials ({_why(group)}): {keys}")
    params = [trial_params(t) for t in trials]
    lines += [f"  warning: {text}" for text in permutation_warnings(study.report, params)]
    return lines


def study_preview(path: Path) -> list[str]:
    """Lines for a valid study file: per budget (default first) trial counts and copies,
    then the first trial keys of the default budget. [] for a search-space file."""
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or "search_space" not in data:
        return []
    study = load_study(path)
    budgets = [study.default_budget, *(b for b in study.budgets if b != study.default_budget)]
    lines = [line for name in budgets for line in budget_lines(study.with_budget(name), name)]
    if study.search.mode != "optuna":
        trials = expand_trials(study, study.default_budget)
        keys = [t.trial_key or "(one trial)" for t in trials[:PREVIEW_KEYS]]
        more = f", … ({len(trials) - PREVIEW_KEYS} more)" if len(trials) > PREVIEW_KEYS else ""
        lines.append(f"trials ({study.default_budget}): {', '.join(keys)}{more}")
    return lines
