"""Whole attention heads of timm ``Attention`` (fused qkv → heads → proj).

A head ``h`` owns rows ``h*head_dim … (h+1)*head_dim`` of each of the q, k and v blocks of ``qkv`` and
the same columns of ``proj``. After removal, ``num_heads`` and ``attn_dim`` must follow the new qkv
width; ``head_dim`` and ``scale`` do not change.

timm 1.0.31's ``Attention.forward`` reshapes the heads' output to ``(B, N, self.attn_dim)``, so a model
whose ``num_heads * head_dim`` differs from the embedding width runs as is once ``attn_dim`` is updated
(tested). Older timm releases reshape to ``(B, N, C)`` with ``C`` the *input* width, which breaks as
soon as a head is removed; for attention modules without an ``attn_dim`` attribute we therefore bind
:func:`_pruned_forward` (same maths, reshaping to ``num_heads * head_dim``) to the instance.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn


def head_rows(qkv: nn.Linear, heads: list[int], head_dim: int) -> list[int]:
    """qkv output rows of ``heads`` (their q, k and v rows)."""
    attn_dim = qkv.out_features // 3
    return [c * attn_dim + h * head_dim + i for c in range(3) for h in heads for i in range(head_dim)]


def head_dim_of(attn: nn.Module) -> int:
    return int(getattr(attn, "head_dim", None) or attn.qkv.out_features // 3 // attn.num_heads)


def sync_heads(attn: nn.Module, head_dim: int) -> dict[str, int]:
    """Set head count attributes from the (pruned) qkv; returns them for the checkpoint's module_attrs."""
    attn_dim = attn.qkv.out_features // 3
    attn.num_heads = attn_dim // head_dim
    attn.head_dim = head_dim
    attrs = {"num_heads": attn.num_heads}
    if hasattr(attn, "attn_dim"):
        attn.attn_dim = attn_dim
        attrs["attn_dim"] = attn_dim
    else:
        attn.forward = types.MethodType(_pruned_forward, attn)
    return attrs


def _pruned_forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, **_) -> torch.Tensor:
    b, n, _c = x.shape
    qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = self.q_norm(q), self.k_norm(k)
    x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    x = x.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim)
    x = self.proj(x)
    return self.proj_drop(x)
