"""DL-Backtrace relevance rules as autograd Functions (arXiv 2411.12643, implemented from the paper).

Each Function computes its forward exactly like the op it replaces; its backward maps the relevance
at the output (delivered as the incoming "gradient") to relevance at the inputs. Relevance therefore
flows through ``torch.autograd.grad`` and plain routing ops (reshape, cat, indexing, max-pool) keep
their ordinary gradients, which already move relevance correctly.

Rule for a weighted sum ``z_j = Σ_i c_ij + b_j`` with ``c_ij = x_i w_ij``: ``P = Σ c⁺``, ``N = Σ |c⁻|``,
``b⁺ = max(b, 0)``, ``b⁻ = max(-b, 0)``;

    w⁺ = (P + b⁺)/(P + N + b⁺ + b⁻) · P/(P + b⁺)      w⁻ = (N + b⁻)/(P + N + b⁺ + b⁻) · N/(N + b⁻)
    R_i = Σ_j c⁺_ij/P_j · R_j w⁺_j + |c⁻_ij|/N_j · R_j w⁻_j

so the bias keeps its share and zero-bias layers conserve relevance. ReLU gating: when the unit is
inactive (``P + b⁺ - N - b⁻ < 0``) its positive share is 0 (``P`` is taken as 0 in the weights).
Contributions are never materialised: with ``S = op(|x|, |W|) = P + N`` and ``Z = op(x, W) = P - N``,

    R = |x| · op_vjp(|W|, (s⁺ + s⁻)/2) + x · op_vjp(W, (s⁺ - s⁻)/2),   s± = R w± / (P or N),

and without an active gate ``s⁺ = s⁻ = R/(P + N + |b|)`` so only the first (one conv) term is needed.
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


def dlb_weights(p: Tensor, n: Tensor, bias: Tensor | float = 0.0, relu: bool = False) -> tuple[Tensor, Tensor]:
    """The aggregate weights ``(w⁺, w⁻)`` of DL-Backtrace for positive sums ``p``, negative sums ``n``.

    ``relu``: the unit feeds a ReLU, so an inactive unit (``p + b⁺ - n - b⁻ < 0``) gives its
    positive contributions nothing.
    """
    b = torch.as_tensor(bias, dtype=p.dtype, device=p.device)
    bp, bn = b.clamp(min=0), (-b).clamp(min=0)
    if relu:
        p = torch.where(p + bp - n - bn < 0, torch.zeros_like(p), p)
    total = p + n + bp + bn
    wp = safe_div(p + bp, total) * safe_div(p, p + bp)
    wn = safe_div(n + bn, total) * safe_div(n, n + bn)
    return wp, wn


@dataclass(eq=False)
class LinearSpec:
    """A weighted sum over inputs: conv, linear, or a matmul with a constant operand.

    ``fn(x, w)`` is the op without bias; ``bias`` broadcasts against its output. A BatchNorm right
    after it is folded in (``fold``: per-output-channel scale and shift), and a ReLU after it (or
    after the folded BatchNorm) turns gating on (``gate_hint``: where the pre-activation was < 0).
    """

    fn: Callable[[Tensor, Tensor], Tensor]
    weight: Tensor
    bias: Tensor | None
    weight_view: tuple[int, ...] | None  # reshape of a per-output-channel vector against ``weight``
    out_view: tuple[int, ...] | None  # ... and against the output; None: cannot fold a norm
    relu: bool = False
    gate_hint: Tensor | None = None
    fold: tuple[Tensor, Tensor] | None = None

    def effective(self) -> tuple[Tensor, Tensor | None]:
        if self.fold is None:
            return self.weight, self.bias
        scale, shift = self.fold
        w = self.weight * scale.reshape(self.weight_view)
        b = shift.reshape(self.out_view)
        if self.bias is not None:
            b = b + self.bias * scale.reshape(self.out_view)
        return w, b


def _vjp(out: Tensor, inp: Tensor, grad: Tensor) -> Tensor:
    (g,) = torch.autograd.grad(out, inp, grad)
    return g


def linear_backward(spec: LinearSpec, x: Tensor, rel: Tensor) -> Tensor:
    weight, bias = spec.effective()
    a = x.abs().requires_grad_(True)
    with torch.enable_grad():
        s_abs = spec.fn(a, weight.abs())  # P + N
    babs = bias.abs() if bias is not None else torch.zeros((), dtype=rel.dtype, device=rel.device)
    gated = spec.relu and spec.gate_hint is not None and bool((spec.gate_hint & (rel != 0)).any())
    if not gated:
        s = safe_div(rel, s_abs.detach() + babs)
        return a.detach() * _vjp(s_abs, a, s)
    xs = x.detach().requires_grad_(True)
    with torch.enable_grad():
        z = spec.fn(xs, weight)  # P - N
    sd, zd = s_abs.detach(), z.detach()
    p, n = ((sd + zd) / 2).clamp(min=0), ((sd - zd) / 2).clamp(min=0)
    wp, wn = dlb_weights(p, n, bias if bias is not None else 0.0, relu=True)
    sp, sn = safe_div(rel * wp, p), safe_div(rel * wn, n)
    return a.detach() * _vjp(s_abs, a, (sp + sn) / 2) + x * _vjp(z, xs, (sp - sn) / 2)


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
        return a.detach() * _vjp(z, a, safe_div(rel, z.detach())), None, None


class AffineRule(torch.autograd.Function):
    """Element-wise ``a·x + b`` (a norm layer with its statistics held constant): ``R·|ax|/(|ax|+|b|)``."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: Tensor, shift: Tensor, compute: Callable[[], Tensor]) -> Tensor:
        c = (scale * x).abs()
        ctx.ratio = safe_div(c, c + shift.abs().expand_as(c))
        return compute()

    @staticmethod
    def backward(ctx, rel: Tensor):
        return rel * ctx.ratio, None, None, None


class SumRule(torch.autograd.Function):
    """``Σ_k t_k + const`` (residual additions): each term gets ``R·|t_k| / (Σ|t| + |const|)``.

    Shares are proportional to the terms' magnitudes rather than their signed values, so a sum that
    nearly cancels does not blow relevance up; a constant term (a position embedding) is a bias.
    """

    @staticmethod
    def forward(ctx, terms: list[tuple[float, Tensor | float]], compute: Callable[[], Tensor], *xs: Tensor):
        out = compute()
        mags = []
        const = torch.zeros((), dtype=out.dtype, device=out.device)
        for coef, t in terms:
            if isinstance(t, Tensor) and t.requires_grad:
                mags.append((abs(coef) * t.detach().abs()).expand_as(out))
            else:
                const = const + coef * torch.as_tensor(t, dtype=out.dtype, device=out.device)
        total = sum(mags) + const.abs()
        ctx.ratios = [safe_div(m, total) for m in mags]
        ctx.shapes = [x.shape for x in xs]
        return out

    @staticmethod
    def backward(ctx, rel: Tensor):
        grads = [(rel * r).sum_to_size(s) for r, s in zip(ctx.ratios, ctx.shapes, strict=True)]
        return (None, None, *grads)


class PassRule(torch.autograd.Function):
    """Relevance passes unchanged (activations, scaling by a constant, a BatchNorm folded upstream)."""

    @staticmethod
    def forward(ctx, x: Tensor, compute: Callable[[], Tensor]) -> Tensor:
        ctx.shape = x.shape
        return compute()

    @staticmethod
    def backward(ctx, rel: Tensor):
        return rel.sum_to_size(ctx.shape), None


class AttentionRule(torch.autograd.Function):
    """``softmax(qkᵀ)·v`` with the attention weights held constant: relevance goes to ``v`` only,
    split over source tokens in proportion to ``|A_ts v_sd|`` (no bias, so it is conserved)."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, weights: Callable[[], Tensor], compute: Callable[[], Tensor]):
        ctx.attn = weights()
        ctx.save_for_backward(v)
        return compute()

    @staticmethod
    def backward(ctx, rel: Tensor):
        (v,) = ctx.saved_tensors
        attn = ctx.attn
        va = v.abs()
        s = safe_div(rel, attn @ va)
        return None, None, va * (attn.transpose(-2, -1) @ s), None, None


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
