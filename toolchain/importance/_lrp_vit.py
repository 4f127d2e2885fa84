"""LRP for timm Vision Transformers by patched forwards (the "efficient" mode of LXT / AttnLRP).

The model's forwards are rewritten in place (``patch`` returns the undo) so that plain gradient x
input equals LRP relevance at every tensor, without per-layer hooks; each rule is a small autograd
Function whose forward is the layer's own (fused) kernel and whose backward is the rule:

* attention weights are held constant (computed without a graph): CP-LRP of Ali et al. 2022, so
  relevance flows through the values only; the head mixing ``attn @ v`` is then linear, and the
  qkv projection's backward uses the value rows of its weight only;
* LayerNorm's standard deviation is held constant, leaving the centring (linear) in the backward:
  the identity rule through the normalisation (Ali et al. 2022; Achtibat et al. 2024);
* elementwise activations (GELU, SiLU) follow the identity rule: backward ``grad * f(x) / x``;
* linear layers, residual sums and token pooling are left alone: gradient x input over a linear
  map is the z-rule (LRP-0), which is exactly conservative up to bias absorption.

Forward values are the layers' own (only gradients change), so the patched model yields the original logits.
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError
from ..units import is_attention

_ABSENT = object()


class _ValueOnlyLinear(torch.autograd.Function):
    """The qkv projection, with a backward through the value rows of its weight only.

    Under CP-LRP the attention pattern is constant, so q and k receive no gradient: autograd's
    backward would multiply their zero gradient by two thirds of the weight for nothing.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, start: int):
        ctx.save_for_backward(weight)
        ctx.start = start
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        return grad[..., ctx.start:] @ weight[ctx.start:], None, None, None


def _cp_attention_forward(self, x, attn_mask=None, is_causal=False):
    from timm.layers import maybe_add_mask, resolve_self_attn_mask

    B, N, _ = x.shape
    gate = self.gate(x).sigmoid().detach() if getattr(self, "gate", None) is not None else None
    if type(self.qkv) is nn.Linear:
        qkv = _ValueOnlyLinear.apply(x, self.qkv.weight, self.qkv.bias, 2 * self.attn_dim)
    else:
        qkv = self.qkv(x)
    q, k, v = qkv.reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    with torch.no_grad():  # CP-LRP: the attention pattern is a constant routing of value relevance
        q, k = self.q_norm(q), self.k_norm(k)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = maybe_add_mask(attn, resolve_self_attn_mask(N, attn, attn_mask, is_causal))
        attn = self.attn_drop(attn.softmax(dim=-1))
    x = (attn @ v).transpose(1, 2).reshape(B, N, self.attn_dim)
    x = self.norm(x)
    if gate is not None:
        x = x * gate
    return self.proj_drop(self.proj(x))


class _ConstantStdLayerNorm(torch.autograd.Function):
    """LayerNorm forward; backward with the standard deviation held constant (the identity rule).

    The gradient of ``(x - mean(x)) / std * w + b`` with ``std`` constant: ``t - mean(t)`` for
    ``t = g * w / std``. The forward spells LayerNorm out as the graph form it replaces did, so the
    floats (and the scores) are unchanged; only the graph is gone.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, dims, eps):
        std = (x.var(dim=dims, keepdim=True, unbiased=False) + eps).sqrt()
        y = (x - x.mean(dim=dims, keepdim=True)) / std
        if weight is not None:
            y = y * weight
        if bias is not None:
            y = y + bias
        ctx.save_for_backward(weight, std)
        ctx.dims = dims
        return y

    @staticmethod
    def backward(ctx, grad):
        weight, std = ctx.saved_tensors
        t = (grad * weight if weight is not None else grad) / std
        n = math.prod(t.shape[d] for d in ctx.dims)
        # t - mean(t), in autograd's order of operations for the graph form (same floats)
        return t + (-t).sum(dim=ctx.dims, keepdim=True) / n, None, None, None, None


def _identity_layer_norm(self, x):
    dims = tuple(range(-len(self.normalized_shape), 0))
    return _ConstantStdLayerNorm.apply(x, self.weight, self.bias, dims, self.eps)


class _IdentityRule(torch.autograd.Function):
    """``x * (fn(x) / x)`` forward; backward ``grad * fn(x) / x``, so relevance passes unchanged.

    The forward returns ``x * ratio`` rather than ``fn(x)`` itself: the floats (and so the scores)
    stay those of the graph form ``x * ratio.detach()`` this replaces.
    """

    @staticmethod
    def forward(ctx, x, fn):
        # where x == 0 the relevance x * ratio is 0 whatever the ratio; 0 avoids 0/0
        ratio = torch.where(x == 0, 0.0, fn(x) / x)
        ctx.save_for_backward(ratio)
        return x * ratio

    @staticmethod
    def backward(ctx, grad):
        (ratio,) = ctx.saved_tensors
        return grad * ratio, None


def _identity_rule(fn, x):
    return _IdentityRule.apply(x, fn)


def _activation_types() -> tuple[type, ...]:
    from timm.layers.activations import GELU, GELUTanh, QuickGELU

    return (nn.GELU, nn.SiLU, GELU, GELUTanh, QuickGELU)


def has_attention(model: nn.Module) -> bool:
    return any(is_attention(m) for m in model.modules())


def patch(model: nn.Module) -> Callable[[], None]:
    """Rewrite ``model``'s forwards in place for gradient x input = LRP; returns the undo."""
    from timm.layers import Attention

    acts = _activation_types()
    patched: list[tuple[nn.Module, dict]] = []  # module, the attributes it had before
    for name, module in model.named_modules():
        if is_attention(module):
            if not isinstance(module, Attention):
                raise ModelError(
                    f"lrp: attention module {name!r} ({type(module).__name__}) is not timm's Attention; "
                    "only timm ViT attention is supported"
                )
            forward = types.MethodType(_cp_attention_forward, module)
            extra = {"fused_attn": False}
        elif isinstance(module, nn.LayerNorm):
            forward, extra = types.MethodType(_identity_layer_norm, module), {}
        elif isinstance(module, acts):
            forward = types.MethodType(lambda self, x, fn=module.forward: _identity_rule(fn, x), module)
            extra = {}
        else:
            continue
        changes = {"forward": forward, **extra}
        patched.append((module, {k: module.__dict__.get(k, _ABSENT) for k in changes}))
        for key, value in changes.items():
            setattr(module, key, value)

    def undo() -> None:
        for module, before in reversed(patched):
            for key, value in before.items():
                if value is _ABSENT:
                    delattr(module, key)
                else:
                    setattr(module, key, value)

    return undo


def patch_transformer(model: nn.Module) -> nn.Module:
    """``model`` with its forwards rewritten in place for gradient x input = LRP (kept; see :func:`patch`)."""
    patch(model)
    return model
