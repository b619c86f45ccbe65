"""A small study written into a real MLflow SQLite store, following docs/ARCHITECTURE.md.

`make_study(root)` logs:
- an older parent run (tag vaelab.role=study) with one trial: the report must ignore both;
- the study's parent run: tags vaelab.study / role / git_sha / spec_hash / budget / versions /
  status and a `study.yaml` artifact whose `report:` section has two tables;
- trial runs (tag mlflow.parentRunId, vaelab.role=trial, vaelab.trial_id, vaelab.variant,
  vaelab.status, vaelab.node, vaelab.cohort; params = TrialConfig.to_params(); metrics per
  epoch with step = epoch; artifacts config.yaml, unit_kl.json, latents.npz,
  prior_samples.npz) for 3 variants x depth {2, 5} x seeds {0, 1}, plus one failed trial,
  one diverged trial, two rho-sweep trials, one trial stopped early by ASHA, and one trial
  that re-logs its last epoch (as a retried trial does).

Final metric values follow simple formulas kept in `StudyFixture.finals`, so tests can
compute table cells by hand. Imports only mlflow, numpy, yaml and vaelab.config.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from vaelab.config import TrialConfig

STUDY = "icml-mini"
EPOCHS = 4
EVAL_EPOCHS = (2, 4)
T0 = 1_700_000_000_000  # ms; every timestamp is explicit so the store is reproducible
VARIANTS: dict[str, dict[str, Any]] = {
    "VAE": {"inference": "vae", "batch_norm": False, "warmup_epochs": 0},
    "VAE+BN": {"inference": "vae", "batch_norm": True, "warmup_epochs": 0},
    "LVAE+BN+WU": {"inference": "lvae", "batch_norm": True, "warmup_epochs": 2},
}
VARIANT_BONUS = {"VAE": 0.0, "VAE+BN": 3.0, "LVAE+BN+WU": 5.0}
# active units per layer of the 5-layer models (seed adds to layer 1)
ACTIVE_UNITS = {
    "VAE": [18, 1, 0, 0, 0],
    "VAE+BN": [21, 8, 3, 2, 1],
    "LVAE+BN+WU": [40, 20, 7, 3, 2],
}

REPORT_SECTION: dict[str, Any] = {
    "notes": "Smoke budget: 4 epochs on digits, far from the papers' 2000 epochs.",
    "tables": [
        {
            "name": "ll_by_depth",
            "title": "Test log-likelihood by latent dims",
            "rows": "latent_dims",
            "columns": "variant",
            "value": "test_ll_iw",
            "where": {"rho": 1.0},
            "paper": {"source": "lvae-nips", "table": "table2", "dataset": "omniglot", "metric": "test_ll_iw5000"},
        },
        {
            "name": "active_units",
            "title": "Active units per layer (5 layers)",
            "rows": "layer",
            "columns": "variant",
            "value": "active_units_layer",
            "where": {"depth": 5, "rho": 1.0},
            "paper": {
                "source": "lvae-icml",
                "table": "table2",
                "dataset": "mnist",
                "metric": "active_units_layer",
                "variant_map": {"LVAE+BN+WU": "LADDER+BN+WU"},
            },
        },
    ],
    "figures": [],
}


@dataclass
class TrialPlan:
    trial_id: str
    variant: str
    depth: int
    seed: int
    status: str = "finished"  # finished | failed | diverged | stopped
    rho: float = 1.0
    relog_last_epoch: bool = False

    def config(self) -> TrialConfig:
        return TrialConfig(
            dataset="digits",
            depth=self.depth,
            seed=self.seed,
            rho=self.rho,
            epochs=EPOCHS,
            eval_every=2,
            eval_iw=50,
            **VARIANTS[self.variant],
        )


@dataclass
class StudyFixture:
    root: Path
    tracking_uri: str
    study: str
    parent_run_id: str
    plans: list[TrialPlan]
    run_ids: dict[str, str] = field(default_factory=dict)  # trial_id -> run id
    finals: dict[str, dict[str, float]] = field(default_factory=dict)  # trial_id -> final metrics

    def plan(self, trial_id: str) -> TrialPlan:
        return next(p for p in self.plans if p.trial_id == trial_id)


# --------------------------------------------------------------------------- values


def final_metrics(plan: TrialPlan) -> dict[str, float]:
    """The metrics a trial logs at its last evaluation (epoch EPOCHS)."""
    test_ll = -100.0 + 2.0 * plan.depth + VARIANT_BONUS[plan.variant] + 0.37 * plan.seed
    units = ACTIVE_UNITS[plan.variant][: plan.depth]
    units = [units[0] + plan.seed] + units[1:]
    kl_layers = [10.0 / i + 0.1 * plan.seed for i in range(1, plan.depth + 1)]
    if plan.rho < 1.0:
        kl_layers[-1] = 4.0 if plan.rho < 0.7 else 0.02  # phase transition
    metrics = {
        "test_ll_iw": test_ll,
        "test_elbo": test_ll - 3.0,
        "train_elbo": test_ll - 2.0,
        "kl_total": sum(kl_layers),
        "active_units": float(sum(units)),
        "peak_mem_mb": 12.0,
    }
    for i in range(1, plan.depth + 1):
        metrics[f"kl_layer_{i}"] = kl_layers[i - 1]
        metrics[f"active_units_layer_{i}"] = float(units[i - 1])
        metrics[f"kl_std_normal_layer_{i}"] = 30.0 / i
    return metrics


def epoch_metrics(plan: TrialPlan, epoch: int) -> dict[str, float]:
    """Every metric logged at `epoch` (ARCHITECTURE: per epoch, on eval epochs, last epoch)."""
    metrics = {
        "epoch": float(epoch),
        "beta": min(1.0, epoch / 2.0) if plan.variant == "LVAE+BN+WU" else 1.0,
        "lr": 1e-3,
        "train_loss": 100.0 / epoch,
        "steps_per_s": 50.0,
        "wall_time_s": 1.5 * epoch,
    }
    if epoch in EVAL_EPOCHS:
        final = final_metrics(plan)
        scale = epoch / EPOCHS
        for key, value in final.items():
            if key == "test_ll_iw" and epoch != EPOCHS:
                continue
            metrics[key] = value if key.startswith("active_units") else value * (2.0 - scale)
    return metrics


# --------------------------------------------------------------------------- plans


def study_plans() -> list[TrialPlan]:
    plans = []
    for variant in VARIANTS:
        for depth in (2, 5):
            for seed in (0, 1):
                plans.append(TrialPlan(f"t{len(plans)}", variant, depth, seed))
    _find(plans, "LVAE+BN+WU", 2, 1).relog_last_epoch = True
    plans.append(TrialPlan(f"t{len(plans)}", "VAE+BN", 5, 2, status="diverged"))
    plans.append(TrialPlan(f"t{len(plans)}", "VAE", 2, 2, status="failed"))
    plans.append(TrialPlan(f"t{len(plans)}", "VAE", 2, 0, rho=0.5))
    plans.append(TrialPlan(f"t{len(plans)}", "VAE", 2, 0, rho=0.8))
    plans.append(TrialPlan(f"t{len(plans)}", "VAE+BN", 2, 2, status="stopped"))  # ASHA
    return plans


def _find(plans: list[TrialPlan], variant: str, depth: int, seed: int) -> TrialPlan:
    return next(p for p in plans if (p.variant, p.depth, p.seed) == (variant, depth, seed))


# --------------------------------------------------------------------------- writing


def make_study(root: Path) -> StudyFixture:
    root.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment(STUDY, artifact_location=(root / "artifacts").as_uri())
    old_parent = _parent_run(client, experiment_id, root, T0, report={"notes": "old study run"})
    _trial_run(client, experiment_id, old_parent, TrialPlan("t0", "VAE", 2, 0), root, T0 + 10)
    parent = _parent_run(client, experiment_id, root, T0 + 1_000_000, report=REPORT_SECTION)
    fixture = StudyFixture(root, uri, STUDY, parent, study_plans())
    for k, plan in enumerate(fixture.plans):
        run_id = _trial_run(client, experiment_id, parent, plan, root, T0 + 1_000_100 + 1000 * k)
        fixture.run_ids[plan.trial_id] = run_id
        fixture.finals[plan.trial_id] = logged_finals(plan)
    client.set_terminated(parent, "FINISHED", end_time=T0 + 2_000_000)
    return fixture


def make_minimal_study(root: Path, study: str = "one-depth", tracking_uri: str | None = None) -> StudyFixture:
    """Two seeds of one model, no artifacts: most figures must be skipped with a reason.

    `tracking_uri`: an existing store to add the experiment to (a new SQLite store takes
    seconds to migrate).
    """
    root.mkdir(parents=True, exist_ok=True)
    uri = tracking_uri or f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment(study, artifact_location=(root / "artifacts").as_uri())
    report = {"figures": ["ll_vs_depth", "unit_kl_heatmaps", "kl_vs_rho", "active_units"]}
    parent = _parent_run(client, experiment_id, root, T0, report=report, study=study)
    plans = [TrialPlan("a1", "VAE", 2, 0), TrialPlan("a2", "VAE", 2, 1)]
    fixture = StudyFixture(root, uri, study, parent, plans)
    for k, plan in enumerate(plans):
        run_id = _trial_run(client, experiment_id, parent, plan, root, T0 + 100 + 1000 * k, artifacts=False, study=study)
        fixture.run_ids[plan.trial_id] = run_id
        fixture.finals[plan.trial_id] = logged_finals(plan)
    return fixture


def logged_finals(plan: TrialPlan) -> dict[str, float]:
    """The last value of every metric the trial logged."""
    finals: dict[str, float] = {}
    for epoch in _epochs(plan):
        finals.update(_logged_epoch(plan, epoch))
    return finals


def _epochs(plan: TrialPlan) -> range:
    return range(1, {"finished": EPOCHS, "diverged": 3, "failed": 1, "stopped": 2}[plan.status] + 1)


def _logged_epoch(plan: TrialPlan, epoch: int) -> dict[str, float]:
    metrics = epoch_metrics(plan, epoch)
    if plan.status == "diverged" and epoch == 3:
        metrics["train_loss"] = math.nan
        metrics["test_elbo"] = math.nan
    return metrics


def _parent_run(
    client: MlflowClient, experiment_id: str, root: Path, start: int, report: dict, study: str = STUDY
) -> str:
    tags = {
        "vaelab.study": study,
        "vaelab.role": "study",
        "vaelab.git_sha": "0123abcd",
        "vaelab.spec_hash": "feedbeef",
        "vaelab.budget": "smoke",
        "vaelab.versions": "torch=2.x ray=2.x mlflow=3.x",
        "vaelab.status": "finished",
    }
    run = client.create_run(experiment_id, start_time=start, tags=tags, run_name=f"study-{start}")
    study_yaml = {"name": study, "search_space": "icml.yaml", "seeds": [0, 1], "report": report}
    path = root / f"study-{start}" / "study.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(study_yaml, sort_keys=False), encoding="utf-8")
    client.log_artifact(run.info.run_id, str(path))
    return run.info.run_id


def _trial_run(
    client: MlflowClient,
    experiment_id: str,
    parent: str,
    plan: TrialPlan,
    root: Path,
    start: int,
    artifacts: bool = True,
    study: str = STUDY,
) -> str:
    config = plan.config()
    tags = {
        "mlflow.parentRunId": parent,
        "vaelab.role": "trial",
        "vaelab.study": study,
        "vaelab.trial_id": plan.trial_id,
        "vaelab.variant": plan.variant,
        "vaelab.status": "running",
        "vaelab.node": "127.0.0.1",
        "vaelab.cohort": f"cohort-{plan.variant}-{plan.depth}",
    }
    run = client.create_run(experiment_id, start_time=start, tags=tags, run_name=plan.trial_id)
    run_id = run.info.run_id
    params = [Param(k, str(v)) for k, v in config.to_params().items()]
    client.log_batch(run_id, params=params)
    for epoch in _epochs(plan):
        _log_epoch(client, run_id, plan, epoch, start)
    if artifacts and plan.status != "failed":
        _log_artifacts(client, run_id, plan, config, root / "artifacts-src" / run_id)
    client.set_tag(run_id, "vaelab.status", plan.status)
    client.set_terminated(run_id, "FAILED" if plan.status == "failed" else "FINISHED", end_time=start + 900)
    return run_id


def _log_epoch(client: MlflowClient, run_id: str, plan: TrialPlan, epoch: int, start: int) -> None:
    stamp = start + 100 * epoch
    metrics = _logged_epoch(plan, epoch)
    if plan.relog_last_epoch and epoch == EPOCHS:
        # a retried trial logs its last epoch twice; the later value must win
        stale = [Metric(k, v - 10.0, stamp, epoch) for k, v in metrics.items() if k == "test_elbo"]
        client.log_batch(run_id, metrics=stale)
        stamp += 1
    client.log_batch(run_id, metrics=[Metric(k, v, stamp, epoch) for k, v in metrics.items()])


def _log_artifacts(client: MlflowClient, run_id: str, plan: TrialPlan, config: TrialConfig, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(plan.seed + 10 * plan.depth)
    dims = config.z_dims
    (folder / "config.yaml").write_text(yaml.safe_dump(config.to_params()), encoding="utf-8")
    unit_kl = [
        {"epoch": epoch, "layer": i + 1, "kl": [float(v) for v in np.exp(-np.arange(dim) / (3.0 + epoch)) * 2.0]}
        for epoch in EVAL_EPOCHS
        if epoch <= _epochs(plan).stop - 1
        for i, dim in enumerate(dims)
    ]
    (folder / "unit_kl.json").write_text(json.dumps(unit_kl), encoding="utf-8")
    labels = np.repeat(np.arange(10), 4)
    latents = {f"layer_{i + 1}": rng.normal(size=(40, dim)) + labels[:, None] * 0.3 for i, dim in enumerate(dims)}
    np.savez(folder / "latents.npz", labels=labels, **latents)
    samples = {f"layer_{i + 1}": rng.uniform(size=(16, 64)) for i in range(len(dims))}
    np.savez(folder / "prior_samples.npz", image_shape=np.array([8, 8]), **samples)
    for name in ("config.yaml", "unit_kl.json", "latents.npz", "prior_samples.npz"):
        client.log_artifact(run_id, str(folder / name))
