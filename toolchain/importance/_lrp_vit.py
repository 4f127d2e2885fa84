"""LRP for timm Vision Transformers by patched forwards (the "efficient" mode of LXT / AttnLRP).

The forwards of a deep copy are rewritten so that plain gradient x input equals LRP relevance at
every tensor, without per-layer hooks:

* attention weights are held constant (softmax output detached): CP-LRP of Ali et al. 2022, so
  relevance flows through the values only; the head mixing ``attn @ v`` is then linear;
* LayerNorm's standard deviation is detached, leaving the centring (linear) in the graph: the
  identity rule through the normalisation (Ali et al. 2022; Achtibat et al. 2024);
* elementwise activations (GELU, SiLU) follow the identity rule, ``x * (f(x) / x).detach()``;
* linear layers, residual sums and token pooling are left alone: gradient x input over a linear
  map is the z-rule (LRP-0), which is exactly conservative up to bias absorption.

Forward values are unchanged (only gradients are), so the copy yields the original logits.
"""

from __future__ import annotations

import types

import torch
from torch import nn

from ..errors import ModelError
from ..units import is_attention


def _cp_attention_forward(self, x, attn_mask=None, is_causal=False):
    from timm.layers import maybe_add_mask, resolve_self_attn_mask

    B, N, _ = x.shape
    gate = self.gate(x).sigmoid().detach() if getattr(self, "gate", None) is not None else None
    qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = self.q_norm(q), self.k_norm(k)
    attn = (q * self.scale) @ k.transpose(-2, -1)
    attn = maybe_add_mask(attn, resolve_self_attn_mask(N, attn, attn_mask, is_causal))
    # CP-LRP: the attention pattern is a constant routing of value relevance
    attn = self.attn_drop(attn.softmax(dim=-1).detach())
    x = (attn @ v).transpose(1, 2).reshape(B, N, self.attn_dim)
    x = self.norm(x)
    if gate is not None:
        x = x * gate
    return self.proj_drop(self.proj(x))


def _identity_layer_norm(self, x):
    dims = tuple(range(-len(self.normalized_shape), 0))
    mean = x.mean(dim=dims, keepdim=True)
    var = x.var(dim=dims, keepdim=True, unbiased=False)
    y = (x - mean) / (var + self.eps).sqrt().detach()
    if self.weight is not None:
        y = y * self.weight
    if self.bias is not None:
        y = y + self.bias
    return y


def _identity_rule(fn, x):
    out = fn(x)
    # where x == 0 the relevance x * ratio is 0 whatever the ratio; 0 avoids 0/0
    safe = torch.where(x == 0, torch.ones_like(x), x)
    ratio = torch.where(x == 0, torch.zeros_like(x), out / safe)
    return x * ratio.detach()


def _activation_types() -> tuple[type, ...]:
    from timm.layers.activations import GELU, GELUTanh, QuickGELU

    return (nn.GELU, nn.SiLU, GELU, GELUTanh, QuickGELU)


def has_attention(model: nn.Module) -> bool:
    return any(is_attention(m) for m in model.modules())


def patch_transformer(model: nn.Module) -> nn.Module:
    """Rewrite ``model``'s forwards in place for gradient x input = LRP (call on a copy only)."""
    from timm.layers import Attention

    acts = _activation_types()
    for name, module in model.named_modules():
        if is_attention(module):
            if not isinstance(module, Attention):
                raise ModelError(
                    f"lrp: attention module {name!r} ({type(module).__name__}) is not timm's Attention; "
                    "only timm ViT attention is supported"
                )
            module.fused_attn = False
            module.forward = types.MethodType(_cp_attention_forward, module)
        elif isinstance(module, nn.LayerNorm):
            module.forward = types.MethodType(_identity_layer_norm, module)
        elif isinstance(module, acts):
            module.forward = types.MethodType(lambda self, x, fn=module.forward: _identity_rule(fn, x), module)
    return model

