"""Every shipped preset: validates, and every trial of its `smoke` budget trains.

The default run validates each preset. The `slow` test trains every trial configuration of
each preset's smoke budget for one epoch with the training core, on small files in each
dataset's own on-disk format (IDX for MNIST / Fashion-MNIST, Burda's chardata.mat for
OMNIGLOT, norb.npz for NORB) written here, so it needs no download.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io

from test_data import make_mnist
from vaelab.config import trial_config
from vaelab.studies import expand_trials, load_study, validate_file
from vaelab.train import Trainer

REPO = Path(__file__).resolve().parents[1]
PRESETS = sorted(p for p in (REPO / "ablations").glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_preset_validates(preset: Path) -> None:
    assert validate_file(preset) == []
    study = load_study(preset)
    for budget in ("smoke", "short", "paper"):
        assert expand_trials(study, budget), budget


def write_datasets(root: Path) -> None:
    """Tiny real-format files for every dataset, under root/<name>/."""
    make_mnist(root / "mnist", n_train=300, n_test=50)
    make_mnist(root / "fashion-mnist", n_train=300, n_test=50, seed=1)
    rng = np.random.default_rng(0)
    (root / "omniglot").mkdir()
    scipy.io.savemat(root / "omniglot" / "chardata.mat", {
        "data": rng.random((784, 300)), "testdata": rng.random((784, 50)),
        "target": np.eye(50)[rng.integers(0, 50, 300)].T, "testtarget": np.eye(50)[rng.integers(0, 50, 50)].T,
    })
    (root / "norb").mkdir()
    np.savez(root / "norb" / "norb.npz", train_x=rng.integers(0, 256, (300, 32, 32), dtype=np.uint8),
             train_y=rng.integers(0, 5, 300), test_x=rng.integers(0, 256, (50, 32, 32), dtype=np.uint8),
             test_y=rng.integers(0, 5, 50))


def one_epoch(config: dict, data_root: Path, init_from: str | None) -> dict:
    values = config | {"data_dir": str(data_root / config["dataset"]), "epochs": 1, "train_subset": 0,
                       "eval_iw": 2, "train_eval_size": 20, "batch_size": 64}
    if values.get("init_from"):
        values["init_from"] = init_from
    trainer = Trainer([trial_config(values)])
    return list(trainer.run())[-1].metrics[0]


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_every_smoke_trial_trains(preset: Path, tmp_path: Path) -> None:
    write_datasets(tmp_path)
    trials = expand_trials(load_study(preset), "smoke")
    checkpoints: dict[str, str] = {}
    for trial in trials:
        init = None
        if trial.config.get("init_from"):  # fine-tuning: start from a model of the same architecture
            key = f"{trial.config['inference']}-{trial.config['depth']}"
            if key not in checkpoints:
                base = trial.config | {"init_from": None}
                pre = Trainer([trial_config(base | {"data_dir": str(tmp_path / base["dataset"]), "epochs": 1,
                                                    "eval_iw": 2, "train_eval_size": 0})])
                list(pre.run())
                checkpoints[key] = str(pre.export_artifacts(0, tmp_path / key)[0])
            init = checkpoints[key]
        metrics = one_epoch(trial.config, tmp_path, init)
        assert np.isfinite(metrics["test_elbo"]), trial.trial_key
        assert np.isfinite(metrics["test_ll_iw"]), trial.trial_key
