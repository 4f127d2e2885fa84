"""Weight magnitude: the L1 norm of the weights a unit owns (data-free baseline, Li et al. 2017)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..units import UnitLayer, get_module
from .base import Criterion, register


def unit_weight_l1(model: nn.Module, layer: UnitLayer) -> torch.Tensor:
    """L1 norm per unit: conv out-channel filter, fc1 row, or a head's q,k,v rows + proj columns.

    A head owns ``4 * width`` weight vectors (q, k, v rows and proj columns, each of the model width)
    where an MLP unit owns one (its fc1 row): its norm is the mean over those vectors, the per-vector
    scale of an MLP unit, so heads and MLP units compete in one global ranking (summed, a 64-wide
    head would be ~256x an MLP unit and never pruned).
    """
    module = get_module(model, layer.name)
    if layer.kind in ("conv", "mlp"):
        w = module.weight.detach()
        return w.abs().reshape(w.shape[0], -1).sum(1)
    # head: rows of the fused qkv projection are [q heads | k heads | v heads], each head ``width`` wide
    width = layer.width
    qkv = module.qkv.weight.detach().abs().reshape(3, layer.size, width, -1).sum((0, 2, 3))
    proj = module.proj.weight.detach().abs().reshape(-1, layer.size, width).sum((0, 2))
    return (qkv + proj) / (4 * width)


@register
class Magnitude(Criterion):
    name = "magnitude"
    needs_data = False

    def attribute(self, model: nn.Module, inputs, targets, layers: Sequence[UnitLayer]) -> dict[str, torch.Tensor]:
        return {layer.name: unit_weight_l1(model, layer).float() for layer in layers}
