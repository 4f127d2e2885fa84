"""Shared plumbing for gradient-based criteria: activations at unit hooks, batching, targets.

Not a criterion (the leading underscore keeps it out of discovery).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from ..units import UnitLayer, get_module


@contextlib.contextmanager
def no_inplace(model: nn.Module) -> Iterator[nn.Module]:
    """Turn off in-place activations while attributing.

    An in-place ReLU after a conv overwrites the very tensor a hook captured, so the activation we
    read (and the tensor the gradient is taken against) would silently become post-ReLU.
    """
    changed = [m for m in model.modules() if getattr(m, "inplace", False) is True]
    for m in changed:
        m.inplace = False
    try:
        yield model
    finally:
        for m in changed:
            m.inplace = True


@contextlib.contextmanager
def frozen_params(model: nn.Module) -> Iterator[nn.Module]:
    """Parameters stop requiring grad, so backward passes compute only what attribution needs."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@contextlib.contextmanager
def capture(
    model: nn.Module, layers: Sequence[UnitLayer], copy: bool = False
) -> Iterator[dict[str, torch.Tensor]]:
    """Record the tensor at each layer's hook (output or input port) during forward passes.

    The dict maps ``layer.name`` to the tensor of the latest forward pass; it stays in the autograd
    graph, so ``torch.autograd.grad`` can differentiate with respect to it. ``copy``: the rest of the
    model gets a copy of each captured tensor, so no in-place op after the hook (an in-place ReLU,
    timm's residual ``x += shortcut`` after a BatchNorm) can change the recorded values or move the
    gradient's point; ``no_inplace`` only reaches modules, not such tensor ops.
    """
    store: dict[str, torch.Tensor] = {}
    handles = []
    for layer in layers:
        module = get_module(model, layer.hook)
        if layer.port == "output":

            def hook(_m, _inp, out, name=layer.name):
                store[name] = out
                return out.clone() if copy else None

            handles.append(module.register_forward_hook(hook))
        else:

            def pre_hook(_m, inp, name=layer.name):
                store[name] = inp[0]
                return (inp[0].clone(), *inp[1:]) if copy else None

            handles.append(module.register_forward_pre_hook(pre_hook))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def batches(n: int, batch_size: int) -> Iterator[slice]:
    for start in range(0, n, max(1, batch_size)):
        yield slice(start, min(n, start + batch_size))


def resolve_targets(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor | None, batch_size: int):
    """The class to explain per sample: the given targets, else the model's predicted class."""
    if targets is not None:
        return torch.as_tensor(targets, dtype=torch.long, device=inputs.device).reshape(-1)
    preds = []
    with torch.no_grad():
        for sl in batches(len(inputs), batch_size):
            preds.append(model(inputs[sl]).argmax(1))
    return torch.cat(preds)


def model_device(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")
