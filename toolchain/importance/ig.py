"""Integrated Gradients at unit hooks (Sundararajan et al. 2017; captum ``LayerIntegratedGradients``).

For each unit layer, IG integrates the gradient of the target logit along the straight path from the
layer's activation on a baseline image to its activation on the real image (the layer's tensor is
replaced by the interpolation, so the path lives in that layer's space). Heads read the input of
``attn.proj`` (``attribute_to_layer_input``). Per sample |attribution| is summed over positions and
a unit's channels (``reduce_to_units``), then over samples — the same aggregation as LRP.

Cost: one IG run per layer (captum's multi-layer mode replaces every hooked layer at once, which
cuts the gradient path to earlier layers), i.e. ``layers x n_steps`` forward+backward passes per image.

``path="input"`` is the one-pass alternative for large models: the *image* is interpolated and every
layer accumulates ``sum_i g(x_i) * (a(x_i) - a(x_{i-1}))`` (layer conductance, Dhamdhere et al. 2018;
like IG it is complete when the layer is a cut of the network) — ``n_steps`` passes for all layers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError
from ..units import UnitLayer, get_module, reduce_to_units
from ._hooks import batches, capture, frozen_params, model_device, no_inplace, resolve_targets
from .base import Criterion, register

METHODS = ("gausslegendre", "riemann_trapezoid", "riemann_middle", "riemann_left", "riemann_right")
PATHS = ("layer", "input")


def make_baseline(inputs: torch.Tensor, baseline: str | float) -> torch.Tensor:
    """``zero``: the all-zero (normalised) image; ``mean``: each image's per-channel mean; a number: constant."""
    if baseline == "zero":
        return torch.zeros_like(inputs)
    if baseline == "mean":
        return inputs.mean(dim=(2, 3), keepdim=True).expand_as(inputs).contiguous()
    return torch.full_like(inputs, float(baseline))


@register
class IntegratedGradients(Criterion):
    name = "ig"

    def __init__(
        self,
        n_steps: int = 32,
        baseline: str | float = "zero",
        method: str = "gausslegendre",
        path: str = "layer",
        **options,
    ):
        super().__init__(**options)
        if not isinstance(n_steps, int) or n_steps < 2:
            raise ConfigError(f"criterion 'ig': n_steps must be an integer >= 2, got {n_steps!r}")
        if isinstance(baseline, str) and baseline not in ("zero", "mean"):
            try:
                baseline = float(baseline)
            except ValueError:
                raise ConfigError(
                    f"criterion 'ig': baseline must be 'zero', 'mean' or a number, got {baseline!r}"
                ) from None
        if method not in METHODS:
            raise ConfigError(f"criterion 'ig': method must be one of {', '.join(METHODS)}, got {method!r}")
        if path not in PATHS:
            raise ConfigError(f"criterion 'ig': path must be one of {', '.join(PATHS)}, got {path!r}")
        if self.batch_size < 1:
            raise ConfigError(f"criterion 'ig': batch_size must be >= 1, got {self.batch_size}")
        self.n_steps = n_steps
        self.path = path
        self.baseline = baseline
        self.method = method

    def layer_attribution(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        layer: UnitLayer,
        return_convergence_delta: bool = False,
    ):
        """captum's layer IG for one batch at ``layer``'s hook (the raw tensor, not unit scores)."""
        from captum.attr import LayerIntegratedGradients

        lig = LayerIntegratedGradients(model, get_module(model, layer.hook))
        with no_inplace(model):
            return lig.attribute(
                inputs,
                baselines=make_baseline(inputs, self.baseline),
                target=targets,
                n_steps=self.n_steps,
                method=self.method,
                internal_batch_size=max(self.batch_size, len(inputs)),
                attribute_to_layer_input=layer.port == "input",
                return_convergence_delta=return_convergence_delta,
            )

    def conductance(
        self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, layers: Sequence[UnitLayer]
    ) -> dict[str, torch.Tensor]:
        """Per-element conductance at every layer's hook along the image path (``path="input"``)."""
        base = make_baseline(inputs, self.baseline)
        attrs: dict[str, torch.Tensor] = {}
        previous: dict[str, torch.Tensor] = {}
        with capture(model, layers) as acts:
            for i in range(self.n_steps + 1):
                alpha = i / self.n_steps
                x = (base + alpha * (inputs - base)).detach().requires_grad_(True)
                logits = model(x)
                current = {ly.name: acts[ly.name] for ly in layers}
                if i > 0:
                    picked = logits.gather(1, targets.unsqueeze(1)).sum()
                    grads = torch.autograd.grad(picked, [current[ly.name] for ly in layers], allow_unused=True)
                    for ly, g in zip(layers, grads, strict=True):
                        step = current[ly.name].detach() - previous[ly.name]
                        term = step * g if g is not None else torch.zeros_like(step)
                        attrs[ly.name] = attrs[ly.name] + term if ly.name in attrs else term
                previous = {name: t.detach() for name, t in current.items()}
        return attrs

    def attribute(
        self, model: nn.Module, inputs: torch.Tensor | None, targets, layers: Sequence[UnitLayer]
    ) -> dict[str, torch.Tensor]:
        if inputs is None or len(inputs) == 0:
            raise ConfigError("criterion 'ig' needs reference images")
        inputs = inputs.to(model_device(model))
        was_training = model.training
        model.eval()
        totals = {layer.name: torch.zeros(layer.size, dtype=torch.float64) for layer in layers}
        # a chunk of samples goes through one interpolation step per forward pass, so a forward
        # pass holds ``batch_size`` images whatever n_steps is
        chunk = max(1, self.batch_size)
        try:
            with no_inplace(model), frozen_params(model):
                tgt = resolve_targets(model, inputs, targets, self.batch_size)
                if self.path == "input":
                    for sl in batches(len(inputs), chunk):
                        attrs = self.conductance(model, inputs[sl], tgt[sl], layers)
                        for layer in layers:
                            totals[layer.name] += reduce_to_units(attrs[layer.name], layer).sum(0).double().cpu()
                else:
                    for layer in layers:
                        for sl in batches(len(inputs), chunk):
                            attr = self.layer_attribution(model, inputs[sl], tgt[sl], layer)
                            totals[layer.name] += reduce_to_units(attr.detach(), layer).sum(0).double().cpu()
        finally:
            model.train(was_training)
        return {name: t.float() for name, t in totals.items()}

    def __repr__(self) -> str:
        return (
            f"IntegratedGradients(n_steps={self.n_steps}, baseline={self.baseline!r}, "
            f"method={self.method!r}, path={self.path!r})"
        )
