"""DL-Backtrace (arXiv 2411.12643), implemented natively and checked against the reference code.

The ``dl-backtrace`` package is not used: it pins an old torch and pulls tensorflow under a
source-available licence. Relevance starts at the explained class (1, or its logit) and is propagated
backwards layer by layer with DL-Backtrace's rules, as the reference implementation
(github.com/Lexsi-Labs/DLBacktrace) applies them (the rules and where this follows it: ``_dlb_rules``):

* conv / linear: each weighted sum splits its relevance over its positive and negative contributions
  in proportion to their magnitudes, the bias keeping its share; no ReLU gate (see ``_dlb_rules``).
* BatchNorm, LayerNorm, activations: relevance passes unchanged.
* max-pool: to the argmax; average / adaptive pooling, mean: proportional to |input|.
* residual additions: each term gets an equal share.
* attention: half to the values through the attention weights, half to queries and keys.

How this differs from LRP and what it measures: benchmarks/results/dlb_check.md. Unit scores: |R|
at each unit layer's read point (``units``), reduced by ``units.reduce_to_units``, summed over samples.
The criterion sets the caller's model up in place (eval mode, frozen parameters, timm attention on its
fused path) and restores every flag afterwards (``prepared``): no deep copy, which cost about a tenth of
the scoring time on ResNet50; ``prepare`` still gives a frozen copy for callers that keep it.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from ..errors import ConfigError, ModelError
from ..units import UnitLayer, get_module, reduce_to_units
from ._dlb_mode import DLBMode
from ._hooks import frozen_params
from .base import Criterion, register

Start = Literal["one", "logit"]


@dataclass
class Backtrace:
    logits: Tensor  # (N, K) model output
    input_relevance: Tensor  # like the input
    relevance: dict[str, Tensor]  # layer name -> relevance at the layer's hook tensor
    output_relevance: Tensor  # the relevance the pass started from
    activations: int = 0  # activation ops the relevance passed through


def prepare(model: nn.Module) -> nn.Module:
    """A frozen eval-mode deep copy to run DL-Backtrace on (timm attention on its fused path, one rule)."""
    work = copy.deepcopy(model).eval()
    for p in work.parameters():
        p.requires_grad_(False)
    for m in work.modules():
        if getattr(m, "fused_attn", None) is False:
            m.fused_attn = True
    return work


@contextlib.contextmanager
def prepared(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` itself set up as ``prepare`` sets up its copy; every module's mode, parameter flag and
    attention path restored on exit (DLBMode computes every op out of place, so nothing else changes)."""
    modes = [(m, m.training) for m in model.modules()]
    unfused = [m for m in model.modules() if getattr(m, "fused_attn", None) is False]
    model.eval()
    for m in unfused:
        m.fused_attn = True
    try:
        with frozen_params(model):
            yield model
    finally:
        for m in unfused:
            m.fused_attn = False
        for m, mode in modes:
            m.training = mode


def backtrace(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor | None = None,
    *,
    start: Start = "one",
    output_relevance: Tensor | None = None,
    capture: Sequence[UnitLayer] = (),
    abs_cache: dict | None = None,
) -> Backtrace:
    """Propagate DL-Backtrace relevance from the output of ``model`` (already ``prepare``d) to its input.

    The start is the explained class per sample (``targets``, else the predicted class) with
    relevance 1 (``start="one"``) or its logit; ``output_relevance`` (shaped like the output)
    overrides both. ``capture``: layers whose hook tensors' relevance is returned. ``abs_cache``: a dict
    kept across the batches of one scoring run, so each parameter's |W| is taken once (``DLBMode``).
    """
    x = inputs.detach().clone().requires_grad_(True)
    captured: dict[str, Tensor] = {}
    handles = []
    for layer in capture:
        module = get_module(model, layer.hook)
        if layer.port == "output":
            handles.append(module.register_forward_hook(lambda m, i, o, n=layer.name: captured.__setitem__(n, o)))
        else:
            handles.append(module.register_forward_pre_hook(lambda m, i, n=layer.name: captured.__setitem__(n, i[0])))
    try:
        with torch.enable_grad(), DLBMode(abs_cache) as mode:
            out = model(x)
    finally:
        for h in handles:
            h.remove()
    if not isinstance(out, Tensor) or not out.requires_grad:
        raise ModelError("dlb: the model output does not depend on its input through supported ops")
    if output_relevance is None:
        if out.dim() != 2:
            raise ModelError(f"dlb: expected logits (batch, classes), got shape {tuple(out.shape)}")
        cls = out.detach().argmax(1) if targets is None else torch.as_tensor(targets).to(out.device).long()
        value = out.detach().gather(1, cls[:, None]) if start == "logit" else torch.ones_like(out[:, :1])
        output_relevance = torch.zeros_like(out).scatter_(1, cls[:, None], value)
    missing = [layer.hook for layer in capture if layer.name not in captured]
    if missing:
        raise ModelError(f"dlb: unit layers not reached by the forward pass: {', '.join(missing)}")
    wanted = [x] + [captured[layer.name] for layer in capture]
    live = [t for t in wanted if t.requires_grad]
    grads = iter(torch.autograd.grad(out, live, output_relevance.to(out), allow_unused=True))
    rel = [next(grads) if t.requires_grad else None for t in wanted]
    rel = [torch.zeros_like(t) if r is None else r for t, r in zip(wanted, rel, strict=True)]
    return Backtrace(
        logits=out.detach(),
        input_relevance=rel[0],
        relevance={layer.name: r for layer, r in zip(capture, rel[1:], strict=True)},
        output_relevance=output_relevance,
        activations=mode.activations_seen,
    )


@register
class DLBacktrace(Criterion):
    """DL-Backtrace relevance per unit: |R| at the unit's hook, summed over positions and samples.

    Options: ``start`` — relevance of the explained class, ``"one"`` (every sample weighs the
    same) or ``"logit"``; ``batch_size`` 64 as LRP's (at 16, 20 references took two passes and cost
    2.5x one frozen-weight forward+backward on VGG19/ResNet50, at 64 one pass and 1.7-1.8x: criteria_cost).
    """

    name = "dlb"

    def __init__(self, batch_size: int = 64, start: str = "one", **options):
        super().__init__(batch_size=batch_size, **options)
        if start not in ("one", "logit"):
            raise ConfigError(f"criterion 'dlb': start must be 'one' or 'logit', got {start!r}")
        if batch_size < 1:
            raise ConfigError(f"criterion 'dlb': batch_size must be >= 1, got {batch_size}")
        self.start: Start = start  # type: ignore[assignment]

    def attribute(
        self,
        model: nn.Module,
        inputs: Tensor | None,
        targets: Tensor | None,
        layers: Sequence[UnitLayer],
    ) -> dict[str, Tensor]:
        if inputs is None or len(inputs) == 0:
            raise ConfigError("criterion 'dlb' needs reference inputs")
        device = next(model.parameters()).device
        scores = {layer.name: torch.zeros(layer.size, dtype=torch.float64) for layer in layers}
        abs_cache: dict = {}  # |W| of each parameter, once for all batches
        with prepared(model) as work:
            for lo in range(0, len(inputs), self.batch_size):
                xb = inputs[lo : lo + self.batch_size].to(device)
                tb = None if targets is None else targets[lo : lo + self.batch_size]
                bt = backtrace(work, xb, tb, start=self.start, capture=layers, abs_cache=abs_cache)
                for layer in layers:
                    scores[layer.name] += reduce_to_units(bt.relevance[layer.name].detach(), layer).sum(0).double().cpu()
        return {name: s.float() for name, s in scores.items()}

    def __repr__(self) -> str:
        return f"DLBacktrace(start={self.start!r})"
