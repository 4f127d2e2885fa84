"""Stage 9, **fidelity** (report phase): LRP heatmaps of the deployed vs the dense model on a few test
images (Spearman, top-10 % IoU). Reporting only: nothing is chosen from it, so it may read test."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .stage import Stage, live


@dataclass(frozen=True, kw_only=True)
class Fidelity(Stage):
    name = "fidelity"
    version = 1
    source: str  # digest of the stage holding the deployed weights (calibrate, else prune)
    n: int
    seed: int
    weights: Any = live()  # that stage's weights file
    ctx: Any = live()

    def run(self, workdir: Path) -> dict:
        import numpy as np
        import torch

        from toolchain.fidelity import fidelity, heatmaps
        from toolchain.models import load_checkpoint

        ctx = self.ctx
        pruned, _ = load_checkpoint(self.weights)
        test = ctx.ds.split("test")
        rng = np.random.default_rng(self.seed)
        pick = np.sort(rng.choice(len(test.labels), min(self.n, len(test.labels)), replace=False))
        x = ctx.preprocess(test.images[pick])
        y = torch.as_tensor(test.labels[pick], dtype=torch.long)
        return {"images": len(pick), "method": "lrp", **fidelity(heatmaps(ctx.model, x, y), heatmaps(pruned, x, y))}


def measure_fidelity(cfg, pipe, ctx, source, weights: Path) -> dict | None:
    """The fidelity result, or None with ``--fidelity-images 0``."""
    if cfg.fidelity_images <= 0:
        return None
    return Fidelity(source=source.key_digest, n=cfg.fidelity_images, seed=cfg.seed, weights=weights,
                    ctx=ctx)(pipe).data
