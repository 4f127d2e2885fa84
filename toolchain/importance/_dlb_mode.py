"""Swap every op of a forward pass for its DL-Backtrace rule (a ``TorchFunctionMode``).

Intercepting torch functions rather than modules means functional code (residual ``x += shortcut``,
``F.scaled_dot_product_attention`` inside timm's Attention, pooling in heads) is covered without
knowing the model's classes. Ops fall in four groups: rules (weighted sums, norms, additions,
pooling, attention), pass-through (activations, scaling by a constant), routing ops whose ordinary
gradient already moves relevance correctly (reshape, cat, indexing, max-pool), and anything else,
which is guarded: it only fails if relevance actually reaches it.

In-place ops are computed out of place (``x += y`` and ``F.relu(x, inplace=True)`` use the returned
tensor, so they are fine; a bare ``x.add_(y)`` statement whose result is dropped would be skipped).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

from ._dlb_rules import (
    AttentionRule,
    Guard,
    LinearRule,
    LinearSpec,
    PassRule,
    PositiveLinearRule,
    SumRule,
)

_ROUTING = frozenset(
    """__getitem__ cat concat concatenate stack hstack vstack reshape view view_as reshape_as flatten unflatten
    permute transpose swapaxes t T mT contiguous clone to float double half bfloat16 type type_as expand
    expand_as squeeze unsqueeze unbind chunk split tensor_split narrow select pad max_pool1d max_pool2d
    max_pool3d max_pool1d_with_indices max_pool2d_with_indices max_pool3d_with_indices adaptive_max_pool1d
    adaptive_max_pool2d adaptive_max_pool3d max amax dropout dropout1d dropout2d dropout3d alpha_dropout
    feature_alpha_dropout flip roll repeat tile index_select movedim moveaxis detach _assert identity
    pixel_shuffle pixel_unshuffle""".split()
)
_ACTIVATIONS = frozenset(
    """relu relu_ relu6 hardtanh hardtanh_ gelu gelu_ silu silu_ sigmoid sigmoid_ tanh tanh_ hardswish
    hardsigmoid elu elu_ selu selu_ celu celu_ leaky_relu leaky_relu_ mish softplus quick_gelu""".split()
)
_CONVS = frozenset("conv1d conv2d conv3d".split())
_MATMULS = frozenset("matmul __matmul__ __rmatmul__ mm bmm".split())
_ADDS = frozenset("add add_ __add__ __radd__ __iadd__ sub sub_ __sub__ __rsub__ __isub__ rsub".split())
_MULS = frozenset(
    "mul mul_ __mul__ __rmul__ __imul__ div div_ __truediv__ __itruediv__ true_divide neg __neg__ negative".split()
)
_POOLS = frozenset(
    """avg_pool1d avg_pool2d avg_pool3d adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d mean
    sum""".split()
)
_SOFTMAX = frozenset("softmax log_softmax _softmax".split())


def op_name(func: Callable) -> str:
    name = getattr(func, "__name__", "")
    if name == "__get__":  # a property such as Tensor.T
        name = getattr(getattr(func, "__self__", None), "__name__", name)
    return name


def _grad(t: Any) -> bool:
    return isinstance(t, Tensor) and t.requires_grad


def _arg(args: tuple, kwargs: dict, i: int, key: str, default: Any = None) -> Any:
    return args[i] if len(args) > i else kwargs.get(key, default)


def _out_of_place(func: Callable, name: str, args: tuple, kwargs: dict) -> Callable[[], Any]:
    """A thunk computing ``func`` without modifying its inputs."""
    if name.startswith("__i") and name.endswith("__"):  # __iadd__ -> __add__
        f = getattr(torch.Tensor, "__" + name[3:])
        return lambda: f(*args, **kwargs)
    if name.endswith("_") and not name.endswith("__"):  # relu_ -> relu
        base = name[:-1]
        f = getattr(torch.Tensor, base, None) or getattr(torch, base, None) or getattr(F, base)
        return lambda: f(*args, **kwargs)
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        params = {}
    if "inplace" in params:
        bound = inspect.signature(func).bind(*args, **kwargs)
        bound.arguments["inplace"] = False
        return lambda: func(*bound.args, **bound.kwargs)
    return lambda: func(*args, **kwargs)


class DLBMode(TorchFunctionMode):
    """Active during the forward pass of a (copied, eval-mode, frozen) model.

    ``activations_seen`` counts the activation ops on the relevance path (what the tests check).
    """

    def __init__(self, abs_cache: dict[int, tuple[Tensor, Tensor]] | None = None) -> None:
        super().__init__()
        self.activations_seen = 0
        self.abs_cache = {} if abs_cache is None else abs_cache

    def _abs(self, t: Tensor) -> Tensor:
        """|t|; for a parameter, taken once per ``abs_cache`` (one scoring run: the model is frozen)."""
        if not isinstance(t, torch.nn.Parameter):
            return t.abs()
        hit = self.abs_cache.get(id(t))
        if hit is None or hit[0] is not t:
            hit = self.abs_cache[id(t)] = (t, t.detach().abs())
        return hit[1]

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = op_name(func)
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, Tensor)]
        lists = [a for a in args if isinstance(a, (list, tuple))]
        for seq in lists:
            tensors.extend(t for t in seq if isinstance(t, Tensor))
        if not any(t.requires_grad for t in tensors):
            return func(*args, **kwargs)
        handler = _HANDLERS.get(name)
        if handler is not None:
            out = handler(self, func, name, args, kwargs)
            if out is not NotImplemented:
                return out
        if name in _ROUTING:
            return func(*args, **kwargs)
        return _guard(_out_of_place(func, name, args, kwargs)(), name)

    # --- handlers -------------------------------------------------------------------------------------
    def _conv(self, func, name, args, kwargs):
        x, w, b = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "weight"), _arg(args, kwargs, 2, "bias")
        if not _grad(x) or _grad(w) or _grad(b):
            return NotImplemented
        rest = args[3:]
        extra = {k: v for k, v in kwargs.items() if k not in ("input", "weight", "bias")}
        bias = None if b is None else self._abs(b).reshape(-1, *(1,) * (w.dim() - 2))
        spec = LinearSpec(fn=lambda xx, ww: func(xx, ww, None, *rest, **extra), abs_weight=self._abs(w), abs_bias=bias)
        return LinearRule.apply(x, spec, lambda: func(*args, **kwargs))

    def _linear(self, func, name, args, kwargs):
        x, w, b = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "weight"), _arg(args, kwargs, 2, "bias")
        if not _grad(x) or _grad(w) or _grad(b):
            return NotImplemented
        spec = LinearSpec(fn=lambda xx, ww: F.linear(xx, ww), abs_weight=self._abs(w),
                          abs_bias=None if b is None else self._abs(b))
        return LinearRule.apply(x, spec, lambda: func(*args, **kwargs))

    def _matmul(self, func, name, args, kwargs):
        left, right = args[0], args[1]
        if name == "__rmatmul__":
            left, right = right, left
        if _grad(left) == _grad(right):
            return NotImplemented  # both data-dependent (q @ kᵀ): guarded
        if _grad(left):
            spec = LinearSpec(lambda xx, ww: torch.matmul(xx, ww), self._abs(right), None)
            x = left
        else:
            spec = LinearSpec(lambda xx, ww: torch.matmul(ww, xx), self._abs(left), None)
            x = right
        return LinearRule.apply(x, spec, lambda: func(*args, **kwargs))

    def _norm(self, func, name, args, kwargs):
        """BatchNorm / LayerNorm with their statistics: relevance passes unchanged (the reference's rule)."""
        x = _arg(args, kwargs, 0, "input")
        if not _grad(x) or any(_grad(t) for t in (*args[1:], *kwargs.values()) if isinstance(t, Tensor)):
            return NotImplemented
        return PassRule.apply(x, lambda: func(*args, **kwargs))

    def _add(self, func, name, args, kwargs):
        a, b = args[0], _arg(args, kwargs, 1, "other")
        grads = [t for t in (a, b) if _grad(t)]  # a constant term (x + bias) counts as a term
        return SumRule.apply(2, _out_of_place(func, name, args, kwargs), *grads)

    def _mul(self, func, name, args, kwargs):
        a = args[0]
        b = _arg(args, kwargs, 1, "other")
        if name in ("neg", "__neg__", "negative"):
            return PassRule.apply(a, _out_of_place(func, name, args, kwargs))
        if _grad(a) and _grad(b):
            return NotImplemented
        if "div" in name and _grad(b):
            return NotImplemented  # constant / x is not a weighted sum of x
        x = a if _grad(a) else b
        return PassRule.apply(x, _out_of_place(func, name, args, kwargs))

    def _activation(self, func, name, args, kwargs):
        """Activations pass relevance unchanged (the reference's rule; see ``_dlb_rules`` on the ReLU gate)."""
        x = _arg(args, kwargs, 0, "input")
        self.activations_seen += 1
        return PassRule.apply(x, _out_of_place(func, name, args, kwargs))

    def _pool(self, func, name, args, kwargs):
        x = _arg(args, kwargs, 0, "input")
        rest = args[1:]
        extra = {k: v for k, v in kwargs.items() if k != "input"}
        return PositiveLinearRule.apply(x, lambda t: func(t, *rest, **extra), lambda: func(*args, **kwargs))

    def _softmax(self, func, name, args, kwargs):
        return func(*args, **kwargs).detach()  # attention weights are constants of the relevance pass

    def _sdpa(self, func, name, args, kwargs):
        names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale")
        q, k, v, mask, dropout, causal, scale = (
            _arg(args, kwargs, i, n, d) for i, (n, d) in enumerate(zip(names, (None, None, None, None, 0.0, False, None), strict=True))
        )
        if dropout or kwargs.get("enable_gqa") or q.shape[:-2] != v.shape[:-2] or not _grad(v):
            return NotImplemented

        def weights() -> Tensor:
            qd, kd = q.detach(), k.detach()
            logits = (qd @ kd.transpose(-2, -1)) * (scale if scale is not None else 1 / math.sqrt(qd.shape[-1]))
            if causal:
                t, s = logits.shape[-2:]
                logits = logits.masked_fill(~torch.ones(t, s, dtype=torch.bool, device=logits.device).tril(), -math.inf)
            if mask is not None:
                logits = logits.masked_fill(~mask, -math.inf) if mask.dtype == torch.bool else logits + mask
            return logits.softmax(-1)

        return AttentionRule.apply(q, k, v, weights, lambda: func(*args, **kwargs))


def _guard(out: Any, name: str) -> Any:
    if isinstance(out, Tensor):
        return Guard.apply(out, name) if out.requires_grad else out
    if isinstance(out, (tuple, list)):
        return type(out)(_guard(o, name) for o in out)
    return out


_HANDLERS: dict[str, Callable] = {}
for _names, _h in (
    (_CONVS, DLBMode._conv),
    (("linear",), DLBMode._linear),
    (_MATMULS, DLBMode._matmul),
    (("batch_norm", "layer_norm"), DLBMode._norm),
    (_ADDS, DLBMode._add),
    (_MULS, DLBMode._mul),
    (_ACTIVATIONS, DLBMode._activation),
    (_POOLS, DLBMode._pool),
    (_SOFTMAX, DLBMode._softmax),
    (("scaled_dot_product_attention",), DLBMode._sdpa),
):
    for _n in _names:
        _HANDLERS[_n] = _h
