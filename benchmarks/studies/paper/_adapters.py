"""Thin adapters between the paper grid and the toolchain pieces it reuses.

Glue only: heatmaps and their comparison are ``toolchain.fidelity``'s; masks and evaluation are
``toolchain.prune_eval``'s.
"""

from __future__ import annotations

import numpy as np


def seed_dense(ev, dense: dict) -> None:
    """Give a ``prune_eval.RatioEvaluator`` the dense metrics computed once per model by the grid's prep
    task (same subsets), so that no cell re-evaluates the dense model on val and test.

    RatioEvaluator has no public setter for ratio 0; its per-(ratio, split) cache is the only hook.
    """
    for split in ("test", "val"):
        if split in dense:
            ev._cache[(0.0, split)] = dense[split]


def input_heatmaps(model, x, targets) -> np.ndarray:
    """Input-level LRP heatmaps ``(N, H, W)`` for ``targets`` (toolchain.fidelity.heatmaps)."""
    from toolchain.fidelity import heatmaps

    return heatmaps(model, x, targets).numpy().astype(np.float32)


def compare_heatmaps(dense: np.ndarray, pruned: np.ndarray, top_fraction: float = 0.1) -> dict:
    """toolchain.fidelity.fidelity under the grid's key names (``iou_*`` whatever the top fraction)."""
    from toolchain.fidelity import fidelity

    f = fidelity(dense, pruned, top_fraction=top_fraction)
    return {"spearman_mean": f["spearman_mean"], "spearman_std": f["spearman_std"], "iou_mean": f["iou10_mean"],
            "iou_std": f["iou10_std"], "n": int(len(dense)), "top_fraction": top_fraction}
