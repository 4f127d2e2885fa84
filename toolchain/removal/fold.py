"""Constants left behind by removed units, folded into the next layer so removal stays exact.

A masked unit emits a constant (0 when masking also zeroed its BatchNorm; its bias or BN shift
otherwise, e.g. an attention head whose v-bias survived masking). Dropping the unit drops that
constant from every consumer, so it is added to the consumer's bias instead (or, for a bias-free
conv followed by BatchNorm, subtracted from the BN running mean). A constant that enters a
zero-padded conv cannot be folded exactly (the border sees padding, not the constant): such units are
kept, masked, and reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

ZERO_TOL = 1e-12
CONST_TOL = 1e-6


@dataclass
class Fold:
    target: nn.Module  # module receiving the constant's contribution
    attr: str  # "bias" | "running_mean"
    delta: torch.Tensor  # added to target.<attr> (already signed)


def capture_inputs(model: nn.Module, modules: list[nn.Module], example_input: torch.Tensor) -> dict:
    """First-call input of each module in ``modules`` on ``example_input``."""
    seen: dict[nn.Module, torch.Tensor] = {}
    handles = []
    for m in set(modules):

        def pre(mod, args):
            if mod not in seen and args and isinstance(args[0], torch.Tensor):
                seen[mod] = args[0].detach()

        handles.append(m.register_forward_pre_hook(pre))
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        for h in handles:
            h.remove()
    return seen


def channel_constants(x: torch.Tensor, consumer: nn.Module, idxs: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(constant value, is_constant)`` per input channel ``idxs`` of ``consumer``."""
    cdim = 1 if isinstance(consumer, nn.modules.conv._ConvNd) else -1
    v = x.movedim(cdim, -1).reshape(-1, x.shape[cdim])[:, idxs].double()
    c = v.mean(0)
    spread = (v - c).abs().amax(0) if v.shape[0] else torch.zeros_like(c)
    return c, spread <= CONST_TOL * (1 + c.abs())


def fold_for(consumer: nn.Module, idxs: list[int], c: torch.Tensor, next_bn: nn.Module | None) -> Fold | None:
    """How to fold constant inputs ``c`` on channels ``idxs`` of ``consumer``; None if not exactly possible."""
    w = consumer.weight.detach().double()
    if isinstance(consumer, nn.Linear):
        delta = w[:, idxs] @ c
    elif isinstance(consumer, nn.modules.conv._ConvNd):
        pad = consumer.padding
        padded = pad != "valid" and (isinstance(pad, str) or any(p != 0 for p in pad))
        if padded or consumer.groups != 1:
            return None
        delta = (w[:, idxs].flatten(2).sum(-1) * c).sum(1)
    else:
        return None
    if consumer.bias is not None:
        return Fold(consumer, "bias", delta.to(consumer.weight.dtype))
    if next_bn is not None and next_bn.running_mean is not None:
        return Fold(next_bn, "running_mean", (-delta).to(next_bn.running_mean.dtype))
    return None


def apply_folds(folds: list[Fold]) -> None:
    with torch.no_grad():
        for f in folds:
            getattr(f.target, f.attr).add_(f.delta.to(getattr(f.target, f.attr).device))
