"""DL-Backtrace relevance rules as autograd Functions (arXiv 2411.12643; checked against the reference code).

Each Function computes its forward exactly like the op it replaces; its backward maps the relevance
at the output (delivered as the incoming "gradient") to relevance at the inputs. Relevance therefore
flows through ``torch.autograd.grad`` and plain routing ops (reshape, cat, indexing, max-pool) keep
their ordinary gradients, which already move relevance correctly.

Rule for a weighted sum ``z_j = Σ_i c_ij + b_j`` with ``c_ij = x_i w_ij``: ``P = Σ c⁺``, ``N = Σ |c⁻|``,
``b⁺ = max(b, 0)``, ``b⁻ = max(-b, 0)``;

    w⁺ = (P + b⁺)/(P + N + b⁺ + b⁻) · P/(P + b⁺)      w⁻ = (N + b⁻)/(P + N + b⁺ + b⁻) · N/(N + b⁻)
    R_i = Σ_j c⁺_ij/P_j · R_j w⁺_j + |c⁻_ij|/N_j · R_j w⁻_j  =  Σ_j |c_ij| · R_j / (P_j + N_j + |b_j|)

so the bias keeps its share and zero-bias layers conserve relevance. Contributions are never
materialised: with ``S = op(|x|, |W|) = P + N``, ``R = |x| · op_vjp(|W|, R / (S + |b|))``.

What the reference code (github.com/Lexsi-Labs/DLBacktrace, the ``dlbacktrace`` graph engine and
the older ``prop.py``) does and this module follows (see benchmarks/results/dlb_check.md):

* no ReLU gate: the reference declares ReLU's range as ``l=0`` and tests it for truthiness, so its
  "inactive unit gives positive contributions nothing" branch never runs (and the graph engine
  hands every conv/linear the activation "None"). It could not change anything here either: an
  inactive ReLU outputs 0, so the layer after it hands that unit no relevance;
* normalisations (BatchNorm, LayerNorm) and activations pass relevance unchanged;
* a sum of n terms (residual addition) gives each term ``R / n``, a constant term's share is dropped;
* attention: half of the relevance goes to the values (``A^T (R / 2o) * v``), half to the attention
  logits (``(R / 2o) v^T * A``), which split it between queries and keys the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ModelError


def safe_div(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` with 0 where ``den`` is 0 (no relevance can pass through an empty sum)."""
    nz = den != 0
    return torch.where(nz, num / torch.where(nz, den, torch.ones_like(den)), torch.zeros_like(num))


def dlb_weights(p: Tensor, n: Tensor, bias: Tensor | float = 0.0) -> tuple[Tensor, Tensor]:
    """The aggregate weights ``(w⁺, w⁻)`` of DL-Backtrace for positive sums ``p``, negative sums ``n``."""
    b = torch.as_tensor(bias, dtype=p.dtype, device=p.device)
    bp, bn = b.clamp(min=0), (-b).clamp(min=0)
    total = p + n + bp + bn
    wp = safe_div(p + bp, total) * safe_div(p, p + bp)
    wn = safe_div(n + bn, total) * safe_div(n, n + bn)
    return wp, wn


@dataclass(eq=False)
class LinearSpec:
    """A weighted sum over inputs: conv, linear, or a matmul with a constant operand.

    ``fn(x, w)`` is the op without bias. The rule reads only magnitudes: ``abs_weight`` = |W| and
    ``abs_bias`` = |b| (broadcasting against the output), which ``DLBMode`` takes once per scoring
    run for parameters.
    """

    fn: Callable[[Tensor, Tensor], Tensor]
    abs_weight: Tensor
    abs_bias: Tensor | None


def _vjp(out: Tensor, inp: Tensor, grad: Tensor) -> Tensor:
    (g,) = torch.autograd.grad(out, inp, grad)
    return g


def _share(rel: Tensor, total: Tensor) -> Tensor:
    """``rel / total`` for a total of magnitudes ``op(|x|, |W|)``. Where it is 0, every ``|x_i w_ij|``
    in it is 0, so any finite quotient passes no relevance on: dividing by 1 there gives the
    result of ``safe_div`` in two passes instead of five."""
    return rel / total.masked_fill(total == 0, 1)


def linear_backward(spec: LinearSpec, x: Tensor, rel: Tensor) -> Tensor:
    a = x.abs().requires_grad_(True)
    with torch.enable_grad():
        s_abs = spec.fn(a, spec.abs_weight)  # P + N
    total = s_abs.detach() if spec.abs_bias is None else s_abs.detach() + spec.abs_bias
    return _vjp(s_abs, a, _share(rel, total)).mul_(a.detach())


class LinearRule(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, spec: LinearSpec, compute: Callable[[], Tensor]) -> Tensor:
        ctx.spec = spec
        ctx.save_for_backward(x)
        return compute()

    @staticmethod
    def backward(ctx, rel: Tensor):
        (x,) = ctx.saved_tensors
        return linear_backward(ctx.spec, x, rel), None, None


class PositiveLinearRule(torch.autograd.Function):
    """Ops with non-negative weights and no bias (average pooling, mean, sum): proportional to |x|."""

    @staticmethod
    def forward(ctx, x: Tensor, fn: Callable[[Tensor], Tensor], compute: Callable[[], Tensor]) -> Tensor:
        ctx.fn = fn
        ctx.save_for_backward(x)
        return compute()

    @staticmethod
    def backward(ctx, rel: Tensor):
        (x,) = ctx.saved_tensors
        a = x.abs().requires_grad_(True)
        with torch.enable_grad():
            z = ctx.fn(a)
        return _vjp(z, a, _share(rel, z.detach())).mul_(a.detach()), None, None


class SumRule(torch.autograd.Function):
    """``Σ_k t_k`` (residual additions): each of the n terms gets ``R / n`` (the reference's equal split);
    the share of a constant term (a position embedding) is dropped, as the reference drops parameters'."""

    @staticmethod
    def forward(ctx, n_terms: int, compute: Callable[[], Tensor], *xs: Tensor):
        ctx.n_terms = n_terms
        ctx.shapes = [x.shape for x in xs]
        return compute()

    @staticmethod
    def backward(ctx, rel: Tensor):
        share = rel / ctx.n_terms
        return (None, None, *[share.sum_to_size(s) for s in ctx.shapes])


class PassRule(torch.autograd.Function):
    """Relevance passes unchanged (activations, normalisations, scaling by a constant)."""

    @staticmethod
    def forward(ctx, x: Tensor, compute: Callable[[], Tensor]) -> Tensor:
        ctx.shape = x.shape
        return compute()

    @staticmethod
    def backward(ctx, rel: Tensor):
        return rel.sum_to_size(ctx.shape), None


class AttentionRule(torch.autograd.Function):
    """``softmax(s·qkᵀ)·v``: half the relevance to ``v`` through the attention weights, half to the
    unscaled logits ``qkᵀ`` and from there to ``q`` and ``k`` (the reference's rule, signed, each
    division stabilised by ``eps·sign``)."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, weights: Callable[[], Tensor], compute: Callable[[], Tensor]):
        ctx.attn = weights()
        ctx.save_for_backward(q, k, v)
        out = compute()
        ctx.out = out.detach()
        return out

    @staticmethod
    def backward(ctx, rel: Tensor):
        q, k, v = ctx.saved_tensors
        attn = ctx.attn
        s = rel / _stabilize(2 * ctx.out)
        rel_v = (attn.transpose(-2, -1) @ s) * v
        rel_logits = (s @ v.transpose(-2, -1)) * attn
        s2 = rel_logits / _stabilize(2 * (q @ k.transpose(-2, -1)))
        rel_q = (s2 @ k) * q
        rel_k = (s2.transpose(-2, -1) @ q) * k
        return rel_q, rel_k, rel_v, None, None


def _stabilize(t: Tensor, eps: float = 1e-6) -> Tensor:
    return t + eps * torch.where(t >= 0, 1.0, -1.0).to(t)


class Guard(torch.autograd.Function):
    """An op without a relevance rule: harmless unless relevance actually reaches it."""

    @staticmethod
    def forward(ctx, x: Tensor, name: str) -> Tensor:
        ctx.name = name
        return x.clone()

    @staticmethod
    def backward(ctx, rel: Tensor):
        if bool((rel != 0).any()):
            raise ModelError(f"dlb: no DL-Backtrace rule for operation {ctx.name!r} on the relevance path")
        return rel, None
