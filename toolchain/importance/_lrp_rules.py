"""The ``epsilon_plus_flat`` composite as lean autograd rules on a canonized CNN (zennit's rules, faster).

zennit attaches a rule by wrapping a layer's input and output: the layer's ordinary backward still
runs and its result is thrown away, then the rule runs a modified forward and backward of its own,
and every hook clones the tensors it stores. Here each layer's ``forward`` (on medprune's private
copy) is replaced by an autograd Function whose forward is the layer's and whose backward *is* the
rule, so the ordinary backward never runs: a ZPlus conv costs one modified forward and one
transposed conv, a Pass layer nothing.

The rules and their assignment are zennit's ``EpsilonPlusFlat`` with medprune's additions (see
``_lrp_canonizers.make_composite``): Flat on the first conv/linear, ZPlus on other convs (the
positive term only when the input is non-negative, as ``NonNegativeZPlus``), Epsilon on linear
layers, Norm on sums and average pools (timm's mean pools too), Pass on activations and BatchNorms.
The same stabilizer formula is used, so relevance matches zennit's (``tests/toolchain/test_lrp.py``).
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from zennit.layer import Sum
from zennit.types import Activation, AvgPool, BatchNorm

# (module, forward, input, relevance, input known non-negative) -> input relevance
Rule = Callable[[nn.Module, Callable, Tensor, Tensor, bool], Tensor]
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NONNEG = "_medprune_lrp_nonneg"  # set on ReLU outputs during the forward pass
# on a canonizer's Sum module while the rules are attached: ``(a, b) -> a + b`` with the Norm rule,
# which the canonized residual blocks call instead of stacking (``_lrp_canonizers.explicit_sum``)
PAIR_SUM = "medprune_pair_sum"


def _grad(out: Tensor, inp: Tensor, grad: Tensor) -> Tensor:
    (g,) = torch.autograd.grad(out, inp, grad)
    return g


def _stabilize(z: Tensor, epsilon: float) -> Tensor:
    """zennit's ``stabilize`` (z + epsilon * sign(z), sign(0) = +1) in two kernels instead of six."""
    return torch.where(z < 0, z - epsilon, z + epsilon)


def _conv_input_grad(module: nn.Module, x: Tensor, weight: Tensor, grad: Tensor) -> Tensor:
    """``d conv(x, weight) / dx`` applied to ``grad``: the call autograd's ConvolutionBackward makes.

    Called directly, the rule builds no graph for its modified forward. The result depends on
    ``x``'s shape only. Padding modes other than zeros (and string padding) go through autograd.
    """
    if module.padding_mode != "zeros" or isinstance(module.padding, str):
        xg = x.detach().requires_grad_(True)
        with torch.enable_grad():
            z = module._conv_forward(xg, weight, None)
        return _grad(z, xg, grad)
    n = x.dim() - 2
    return torch.ops.aten.convolution_backward(
        grad, x, weight, None, module.stride, module.padding, module.dilation, False, [0] * n, module.groups,
        [True, False, False],
    )[0]


class _Scratch:
    """One buffer that every ZPlus rule of a model writes its clamped weight into, in turn.

    A rule needs ``w.clamp(min=0)`` only while it runs, and the rules run one after another in the
    backward pass. A fresh tensor per conv is, while glibc's mmap threshold is below the weights' size
    (a fresh process, as ``prune``'s one scoring call), a fresh mapping: a page fault per page
    (ResNet50: 94 MB, ~20k faults, ~40 ms against ~12 ms for the clamps into memory already mapped; its
    frozen forward+backward on 20 images at 32 px is ~0.2 s). Here only the largest weight's pages are
    new. Sized when the rules are attached; freed with them.
    """

    def __init__(self, model: nn.Module):
        convs = [m.weight for m in model.modules() if isinstance(m, _CONVS)]
        self.numel = max((w.numel() for w in convs), default=0)
        self.buffer: Tensor | None = None

    def positive(self, w: Tensor) -> Tensor:
        """``w.clamp(min=0)`` in the buffer (valid until the next call)."""
        if self.buffer is None or self.buffer.dtype != w.dtype or self.buffer.device != w.device:
            self.buffer = torch.empty(max(self.numel, w.numel()), dtype=w.dtype, device=w.device)
        if self.buffer.numel() < w.numel():  # a weight that grew after attaching: its own tensor
            return w.clamp(min=0)
        return torch.clamp(w, min=0, out=self.buffer[: w.numel()].view(w.shape))


def _zplus(stabilizer: float, scratch: _Scratch) -> Rule:
    def rule(module, forward, x, rel, nonneg):
        w, b = module.weight, module.bias
        bp = None if b is None else b.clamp(min=0)
        wp = scratch.positive(w)
        if nonneg or x.min() >= 0:
            # no negative input: zennit's negative term is exactly zero, and z >= 0 so the
            # stabilizer is z + eps (the same floats as zennit's sign-based formula)
            zp = module._conv_forward(x, wp, bp)
            s = torch.div(rel, zp.add_(stabilizer))
            return _conv_input_grad(module, x, wp, s).mul_(x)
        pos, neg = x.clamp(min=0), x.clamp(max=0)
        wn = w.clamp(max=0)
        z = module._conv_forward(pos, wp, bp).add_(module._conv_forward(neg, wn, None))  # zennit: no bias on zn
        s = rel / _stabilize(z, stabilizer)
        return pos * _conv_input_grad(module, x, wp, s) + neg * _conv_input_grad(module, x, wn, s)

    return rule


def _proportional(stabilizer: float, output: Callable[[nn.Module, Callable, Tensor], Tensor]) -> Rule:
    """``x * d(out)/dx . R / stab(out)``: zennit's Epsilon (linear layers) and Norm (pools)."""

    def rule(module, forward, x, rel, nonneg):
        xg = x.detach().requires_grad_(True)
        with torch.enable_grad():
            z = output(module, forward, xg)
        return x * _grad(z, xg, rel / _stabilize(z.detach(), stabilizer))

    return rule


def _epsilon(epsilon: float) -> Rule:
    return _proportional(epsilon, lambda module, forward, x: F.linear(x, module.weight, module.bias))


def _flat(stabilizer: float) -> Rule:
    def rule(module, forward, x, rel, nonneg):
        ones = torch.ones_like(x)
        w = torch.ones_like(module.weight)
        if isinstance(module, _CONVS):
            z = module._conv_forward(ones, w, None)
            return _conv_input_grad(module, ones, w, rel / _stabilize(z, stabilizer))
        ones.requires_grad_(True)
        with torch.enable_grad():
            z = F.linear(ones, w)
        return _grad(z, ones, rel / _stabilize(z.detach(), stabilizer))

    return rule


def _norm(stabilizer: float) -> Rule:
    return _proportional(stabilizer, lambda module, forward, x: forward(x))


class _PairSum(torch.autograd.Function):
    """``a + b`` whose backward is zennit's Norm rule on the stacked pair: each term gets ``t * R / stab(a + b)``.

    Same relevance as ``Sum()(torch.stack([a, b], -1))`` under the Norm rule, without the stacked
    copy and the slow reductions over its size-2 last dimension.
    """

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, stabilizer: float) -> Tensor:
        ctx.save_for_backward(a, b)
        ctx.stabilizer = stabilizer
        return a + b

    @staticmethod
    def backward(ctx, rel: Tensor):
        a, b = ctx.saved_tensors
        s = rel / _stabilize(a + b, ctx.stabilizer)
        return a * s, b * s, None


def _pass(module, forward, x, rel, nonneg):
    return rel


class _Apply(torch.autograd.Function):
    """Forward: the layer's own forward. Backward: the layer's rule, from output to input relevance."""

    @staticmethod
    def forward(ctx, x: Tensor, module: nn.Module, forward: Callable, rule: Rule, nonneg: bool) -> Tensor:
        ctx.module, ctx.forward_fn, ctx.rule, ctx.nonneg = module, forward, rule, nonneg
        if rule is not _pass:  # Pass needs no input: keep no activation alive for it
            ctx.save_for_backward(x)
        return forward(x)

    @staticmethod
    def backward(ctx, rel: Tensor):
        if ctx.rule is _pass:
            return rel, None, None, None, None
        (x,) = ctx.saved_tensors
        return ctx.rule(ctx.module, ctx.forward_fn, x, rel, ctx.nonneg), None, None, None, None


def _pair_sum(a: Tensor, b: Tensor, stabilizer: float) -> Tensor:
    if a.requires_grad or b.requires_grad:
        return _PairSum.apply(a, b, stabilizer)
    return a + b


def _mean_pool_types() -> tuple[type, ...]:
    from timm.layers.adaptive_avgmax_pool import FastAdaptiveAvgPool

    return (FastAdaptiveAvgPool,)


def supports(model: nn.Module) -> bool:
    """Whether every weighted layer of ``model`` has a rule here (else zennit's composite is used)."""
    return all(
        isinstance(m, (*_CONVS, nn.Linear, BatchNorm))
        for m in model.modules()
        if isinstance(getattr(m, "weight", None), Tensor) and not list(m.children())
    )


def rules_for(model: nn.Module, epsilon: float, stabilizer: float) -> dict[str, Rule]:
    """``{module name: rule}`` in zennit's assignment order for ``epsilon_plus_flat`` (first match wins)."""
    scratch = _Scratch(model)
    table: list[tuple[tuple[type, ...], Rule]] = [
        (_mean_pool_types(), _norm(stabilizer)),
        ((Activation,), _pass),
        ((Sum, AvgPool), _norm(stabilizer)),
        ((BatchNorm,), _pass),
        (_CONVS, _zplus(stabilizer, scratch)),
        ((nn.Linear,), _epsilon(epsilon)),
    ]
    chosen: dict[str, Rule] = {}
    first = True
    for name, module in model.named_modules():
        if first and isinstance(module, (*_CONVS, nn.Linear)):
            chosen[name], first = _flat(stabilizer), False
            continue
        rule = next((r for kinds, r in table if isinstance(module, kinds)), None)
        if rule is not None:
            chosen[name] = rule
    return chosen


def _is_identity(module: nn.Module) -> bool:
    """A BatchNorm merged into its conv by the canonizer (scale 1, shift 0, eps 0): it computes x."""
    return (
        isinstance(module, BatchNorm) and module.eps == 0 and module.weight is not None
        and bool((module.weight == 1).all() and (module.bias == 0).all())
        and bool((module.running_mean == 0).all() and (module.running_var == 1).all())
    )


def attach(model: nn.Module, epsilon: float = 1e-6, stabilizer: float = 1e-6) -> Callable[[], None]:
    """Replace the forwards of ``model``'s layers (canonized) by their LRP rules; returns the undo."""
    patched_modules, paired = [], []
    for name, rule in rules_for(model, epsilon, stabilizer).items():
        module = model.get_submodule(name)
        identity = _is_identity(module)  # its Pass rule is the identity's gradient: no Function needed
        forward = module.forward

        def patched(self, x, forward=forward, rule=rule, relu=isinstance(module, nn.ReLU), identity=identity):
            if identity:
                return x
            if not x.requires_grad:
                return forward(x)
            out = _Apply.apply(x, self, forward, rule, getattr(x, _NONNEG, False))
            if relu:  # spares the next conv's rule a pass over its input to look for negatives
                setattr(out, _NONNEG, True)
            return out

        module.forward = types.MethodType(patched, module)
        patched_modules.append(module)
        if isinstance(module, Sum) and rule is not _pass:
            setattr(module, PAIR_SUM, functools.partial(_pair_sum, stabilizer=stabilizer))
            paired.append(module)

    def undo() -> None:
        for module in patched_modules:
            del module.forward  # the class's forward shows through again
        for module in paired:
            delattr(module, PAIR_SUM)

    return undo
