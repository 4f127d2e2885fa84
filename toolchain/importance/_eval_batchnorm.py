"""Eval-mode BatchNorm with a one-multiply backward, for criteria that take many input gradients (IG).

In eval mode a BatchNorm is a per-channel affine map, so its input gradient is ``g * weight * invstd``.
torch's CPU ``native_batch_norm_backward`` still spends per-channel reductions on it: on ResNet50 at
32 px it was ~11 % of a whole IG call (4 ms a layer, 25x an element-wise multiply over the same tensor).
Here the forward is the module's own (the same values) and the backward is that one multiply, with
``invstd`` computed as the CPU kernel does (``1 / sqrt(var + eps)``, then ``weight * invstd``).

Not a criterion (the leading underscore keeps it out of discovery).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from ._patched_forward import patched_forwards

# exact types only: subclasses (timm's BatchNormAct2d) may fold more than the affine map into forward
_PLAIN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class _AffineBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, forward, scale: Tensor) -> Tensor:
        ctx.scale = scale.view(-1, *([1] * (x.dim() - 2)))  # channels at dim 1
        return forward(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad * ctx.scale, None, None


def _eligible(module: nn.Module) -> bool:
    return (type(module) in _PLAIN and not module.training and module.running_var is not None
            and module.weight is not None and not module.weight.requires_grad)


@contextlib.contextmanager
def affine_backward(model: nn.Module) -> Iterator[nn.Module]:
    """Eval-mode, frozen plain BatchNorms of ``model`` get the one-multiply backward inside the block.

    Modules in train mode or with trainable weights keep torch's backward (their gradient is not this).
    """
    patches = []
    for module in model.modules():
        if not _eligible(module):
            continue
        scale = module.weight.detach() * (1 / torch.sqrt(module.running_var + module.eps))

        def affine(self, x, forward=module.forward, scale=scale):
            return _AffineBackward.apply(x, forward, scale) if x.requires_grad else forward(x)

        patches.append((module, affine))
    with patched_forwards(patches):
        yield model
