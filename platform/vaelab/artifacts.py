"""A trained member's files (docs/ARCHITECTURE.md, `export_artifacts`): `model.pt`,
`unit_kl.json`, `latents.npz` (ICML Fig 7) and `prior_samples.npz` (ICML Fig 6b).

Imports torch, numpy and the model math only; the caller (the Ray trainable, `vaelab
train`) uploads them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .config import TrialConfig
from .evaluate import posterior_means
from .evaluator import Evaluator


def member_state_dict(model: torch.nn.Module, member: int) -> dict[str, torch.Tensor]:
    """Member `member`'s slice of every cohort tensor, (1, ...) each: a standalone model."""
    return {k: v[member:member + 1].detach().cpu().clone() for k, v in model.state_dict().items()}


def export_member(evaluator: Evaluator, member: int, config: TrialConfig, unit_kl: list[dict],
                  diverged: bool, epoch: int, out_dir: str | Path, n_latents: int = 2000,
                  n_prior: int = 64) -> list[Path]:
    """Writes the member's files into out_dir and returns their paths; a diverged member
    gets only model.pt and unit_kl.json (its latents would be NaN)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, data = evaluator.model, evaluator.data
    paths = [out / "model.pt", out / "unit_kl.json"]
    torch.save({"state_dict": member_state_dict(model, member),
                "config": config.model_dump(mode="json")}, paths[0])
    paths[1].write_text(json.dumps(unit_kl))
    if diverged:
        return paths
    evaluator.prepare(epoch)
    gens = evaluator.generators(epoch, 5)
    x = data.test_x[:n_latents]
    means = posterior_means(model, x, gens)  # per layer (S, n, z_i)
    latents = {f"layer_{i + 1}": m[member].cpu().numpy() for i, m in enumerate(means)}
    np.savez_compressed(out / "latents.npz", labels=data.test_y[:n_latents].cpu().numpy(), **latents)
    samples = {f"layer_{i}": model.generate_from_layer(i, n_prior, gens)[member].cpu().numpy()
               for i in range(1, model.depth + 1)}
    np.savez_compressed(out / "prior_samples.npz", image_shape=np.array(data.image_shape), **samples)
    return paths + [out / "latents.npz", out / "prior_samples.npz"]
