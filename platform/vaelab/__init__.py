"""vaelab: hyperparameter and ablation platform for deep hierarchical VAEs on Ray Tune + MLflow.

Kept light on purpose: importing `vaelab` imports neither torch, ray nor mlflow, so the CLI
starts fast and `vaelab validate` works without them. The entry points live in submodules:
`vaelab.config` (TrialConfig), `vaelab.train` (Trainer), `vaelab.studies` (YAML studies and
the Ray Tune runner), `vaelab.tracking` (MLflow), `vaelab.report`, `vaelab.cli`.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
