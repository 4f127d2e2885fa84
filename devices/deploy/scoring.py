"""Stages 2–3, **reference** and **importance**: which train images to explain, and every unit's score.

reference: ``n_per_class`` train images per class chosen by ``sampling`` among ``pool`` per class.
importance: ``criterion`` scores of every unit on those images → ``scores.safetensors``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .stage import Stage, live


@dataclass(frozen=True, kw_only=True)
class Reference(Stage):
    name = "reference"
    version = 1
    checkpoint: str  # sha256 of the dense weights
    data: str  # dataset fingerprint
    sampling: str
    n: int
    seed: int
    pool: int | None
    ctx: Any = live()

    def run(self, workdir: Path) -> dict:
        from toolchain.prune_eval import reference_inputs

        _, _, idx = reference_inputs(self.ctx, self.n, self.sampling, self.seed, pool_per_class=self.pool)
        return {"indices": idx.tolist()}


def reference_batch(ctx, indices):
    """``(x, y)``: the preprocessed reference images and their labels."""
    import numpy as np
    import torch

    idx = np.asarray(indices)
    train = ctx.ds.split("train")
    return ctx.preprocess(train.images[idx]), torch.as_tensor(train.labels[idx], dtype=torch.long)


@dataclass(frozen=True, kw_only=True)
class Importance(Stage):
    name = "importance"
    version = 1
    outputs = ("scores.safetensors", "scores.json")
    checkpoint: str
    data: str
    reference: str  # digest of the reference stage
    criterion: str
    ctx: Any = live()
    x: Any = live()  # reference_batch(ctx, reference indices)
    y: Any = live()
    layers: Any = live()

    def run(self, workdir: Path) -> dict:
        from toolchain.importance import get_criterion
        from toolchain.prune_eval import save_scores, score_units

        scores, seconds = score_units(self.ctx.model, get_criterion(self.criterion), self.x, self.y, self.layers)
        save_scores(workdir / "scores.safetensors", scores, {"criterion": self.criterion})
        return {"seconds": round(seconds, 2), "layers": len(self.layers)}


def load_importance(result) -> dict:
    from toolchain.prune_eval import load_scores

    scores, _ = load_scores(result.path / "scores.safetensors")
    return scores
