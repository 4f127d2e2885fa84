"""Convolutions whose kernel covers their whole input, with a one-matrix-product input gradient (IG).

A ``Conv2d`` without padding whose kernel is as large as its input has a 1x1 output: it is a linear map of
the flattened input, and its input gradient is ``grad (N, O) @ weight (O, C*kh*kw)``. timm's VGG head has one:
``ConvMlp`` average-pools a small feature map up to 7x7 (1x1 -> 7x7 at 32 px) and runs ``fc1``, a 7x7 conv,
on it; at 32 px ResNet50's last-stage 1x1 convs run on 1x1 maps. torch's oneDNN backward-data for fc1's
shape (161 rows, 1 thread) took ~0.48 s of process time where the matrix product of the same size takes
~0.06 s: a VGG19 IG call at lrp_cost's settings went from ~4.2 s to ~3.9 s, ResNet50's from ~1.23 s to
~1.16 s. The forward is the module's own (the same values, so the same activations downstream); only the
backward changes, and only in its summation order (float rounding: VGG19's unit scores moved by at most
3e-7 of a layer's largest; ResNet50's did not change).

Not a criterion (the leading underscore keeps it out of discovery).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from ._patched_forward import patched_forwards


class _MatmulBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, forward, weight: Tensor) -> Tensor:
        ctx.weight, ctx.shape = weight, x.shape
        return forward(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        w = ctx.weight
        return (grad.reshape(len(grad), w.shape[0]) @ w.reshape(w.shape[0], -1)).view(ctx.shape), None, None


def _eligible(module: nn.Module) -> bool:
    """A plain, frozen, ungrouped, undilated Conv2d without padding (exact type: subclasses may do more)."""
    return (type(module) is nn.Conv2d and module.groups == 1 and module.dilation == (1, 1)
            and module.padding in ((0, 0), "valid") and not module.weight.requires_grad)


@contextlib.contextmanager
def matmul_backward(model: nn.Module) -> Iterator[nn.Module]:
    """Frozen plain Conv2d modules of ``model`` take the matrix-product input gradient inside the block
    whenever their input is exactly kernel-sized (other inputs go through the module's own forward)."""
    patches = []
    for module in model.modules():
        if not _eligible(module):
            continue

        def whole(self, x, forward=module.forward):
            covered = x.requires_grad and x.dim() == 4 and tuple(x.shape[-2:]) == tuple(self.kernel_size)
            return _MatmulBackward.apply(x, forward, self.weight.detach()) if covered else forward(x)

        patches.append((module, whole))
    with patched_forwards(patches):
        yield model
