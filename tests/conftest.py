"""Shared fixtures: a loopback-only local Ray, a throwaway SQLite MLflow store, tiny trials.

Environment set here, before anything imports ray: every Ray node binds 127.0.0.1
(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0), Ray reports no usage statistics, and no
MLFLOW_TRACKING_URI from the caller's shell leaks into a test.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
os.environ.pop("MLFLOW_TRACKING_URI", None)

# The smallest trial that still exercises every code path: 8x8 digits, two latent layers.
TINY_TRIAL: dict[str, Any] = {
    "dataset": "digits",
    "depth": 2,
    "latent_dims": "8-4",
    "hidden_dims": "32-16",
    "activation": "leaky_relu",
    "batch_size": 64,
    "train_subset": 256,
    "train_eval_size": 128,
    "eval_batch_size": 500,
    "eval_iw": 10,
    "eval_every": 1,
    "device": "cpu",
    "compile": "off",
}


@pytest.fixture(scope="session")
def ray_local() -> Iterator[Any]:
    """One local Ray for the whole session: 2 CPUs, no dashboard, every socket on 127.0.0.1."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    assert ray.util.get_node_ip_address() == "127.0.0.1"
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture
def tracking_uri(tmp_path: Path) -> str:
    """A fresh SQLite MLflow store in the test's own folder."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def study_yaml(directory: Path, name: str, body: str, fixed: dict[str, Any] | None = None) -> Path:
    """Write `directory/name.yaml`: a study whose search space fixes TINY_TRIAL (+ `fixed`);
    `body` holds the rest (axes indented under search_space, then budgets, search, ...)."""
    values = {**TINY_TRIAL, **(fixed or {})}
    fixed_yaml = "\n".join(f"    {k}: {_yaml_scalar(v)}" for k, v in values.items())
    text = f"name: {name}\nsearch_space:\n  fixed:\n{fixed_yaml}\n" + textwrap.dedent(body).lstrip("\n")
    path = directory / f"{name}.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="session")
def make_study() -> Callable[..., Path]:
    """make_study(directory, name, body, fixed=None) -> study YAML path (see study_yaml)."""
    return study_yaml


@pytest.fixture
def write_study(tmp_path: Path) -> Callable[..., Path]:
    """write_study(name, body, fixed=None) -> study YAML path in the test's tmp_path."""
    return lambda name, body, fixed=None: study_yaml(tmp_path, name, body, fixed)


def _yaml_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)
