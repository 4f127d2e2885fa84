"""Explanation fidelity of a pruned model: do its LRP heatmaps still match the dense model's?

    dense = heatmaps(dense_model, x, targets)
    pruned = heatmaps(pruned_model, x, targets)   # same images, same explained classes
    fidelity(dense, pruned)  # {spearman_mean, spearman_std, iou10_mean, iou10_std}

Heatmaps are input-level LRP relevance (the same rules as the ``lrp`` criterion) summed over
channels. Per image, fidelity is the Spearman rank correlation of the two maps over all pixels and
the IoU of their top-10 % most relevant pixels; both are averaged over images.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.stats import rankdata
from torch import nn

from .importance._hooks import batches
from .importance.lrp import LRPExplainer


def heatmaps(
    model: nn.Module,
    x: torch.Tensor,
    targets: torch.Tensor | None = None,
    *,
    composite: str = "epsilon_plus_flat",
    batch_size: int = 16,
    **rule_options,
) -> torch.Tensor:
    """Input relevance ``(N, H, W)`` of the target class (None: the predicted class) per image.

    ``rule_options`` (epsilon, gamma, stabilizer) go to the LRP rules. ``model`` is not modified.
    """
    if targets is not None:
        targets = torch.as_tensor(targets, dtype=torch.long).reshape(-1)
    maps = []
    with LRPExplainer(model, x[:1], composite=composite, low=x.min(), high=x.max(), **rule_options) as ex:
        for sl in batches(len(x), batch_size):
            _, input_rel, _ = ex.relevance(x[sl], None if targets is None else targets[sl])
            maps.append(input_rel.sum(1).cpu())
    return torch.cat(maps)


def _rank_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman's rho per row (average ranks for ties). Two constant rows agree (1), one does not (0)."""
    ra = rankdata(a, axis=1, method="average")
    rb = rankdata(b, axis=1, method="average")
    ra -= ra.mean(1, keepdims=True)
    rb -= rb.mean(1, keepdims=True)
    na, nb = np.linalg.norm(ra, axis=1), np.linalg.norm(rb, axis=1)
    out = np.where(na * nb > 0, (ra * rb).sum(1) / np.maximum(na * nb, 1e-300), 0.0)
    return np.where((na == 0) & (nb == 0), 1.0, out)


def _topk_iou(a: np.ndarray, b: np.ndarray, fraction: float) -> np.ndarray:
    k = max(1, math.ceil(fraction * a.shape[1]))
    top_a = np.argpartition(-a, k - 1, axis=1)[:, :k]
    top_b = np.argpartition(-b, k - 1, axis=1)[:, :k]
    ious = []
    for ia, ib in zip(top_a, top_b, strict=True):
        inter = len(np.intersect1d(ia, ib, assume_unique=True))
        ious.append(inter / (2 * k - inter))
    return np.asarray(ious)


def fidelity(dense_maps: torch.Tensor, pruned_maps: torch.Tensor, top_fraction: float = 0.1) -> dict[str, float]:
    """Agreement of two stacks of heatmaps ``(N, H, W)`` of the same images and classes."""
    a = torch.as_tensor(dense_maps).detach().double().cpu()
    b = torch.as_tensor(pruned_maps).detach().double().cpu()
    if a.shape != b.shape or a.dim() < 2 or len(a) == 0:
        raise ValueError(f"fidelity needs two equal-shape stacks of heatmaps, got {tuple(a.shape)} and {tuple(b.shape)}")
    if not 0 < top_fraction <= 1:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
    a_np, b_np = a.flatten(1).numpy(), b.flatten(1).numpy()
    rho = _rank_correlation(a_np, b_np)
    iou = _topk_iou(a_np, b_np, top_fraction)
    return {
        "spearman_mean": float(rho.mean()),
        "spearman_std": float(rho.std()),
        "iou10_mean": float(iou.mean()),
        "iou10_std": float(iou.std()),
    }
