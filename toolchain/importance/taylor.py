"""First-order Taylor: |activation x gradient of the target logit| at each unit (Molchanov et al. 2017/2019).

Per sample, |a * g| is summed over positions (spatial or tokens) and over the unit's channels
(``reduce_to_units``), then summed over samples.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError
from ..units import UnitLayer, reduce_to_units
from ._hooks import batches, capture, frozen_params, model_device, resolve_targets
from .base import Criterion, register


@register
class Taylor(Criterion):
    name = "taylor"

    def __init__(self, **options):
        super().__init__(**options)
        if self.batch_size < 1:
            raise ConfigError(f"criterion 'taylor': batch_size must be >= 1, got {self.batch_size}")

    def attribute(
        self, model: nn.Module, inputs: torch.Tensor | None, targets, layers: Sequence[UnitLayer]
    ) -> dict[str, torch.Tensor]:
        if inputs is None or len(inputs) == 0:
            raise ConfigError("criterion 'taylor' needs reference images")
        device = model_device(model)
        inputs = inputs.to(device)
        was_training = model.training
        model.eval()
        totals = {layer.name: torch.zeros(layer.size, dtype=torch.float64) for layer in layers}
        try:
            with frozen_params(model):
                tgt = resolve_targets(model, inputs, targets, self.batch_size)
                # the model runs on copies: timm's residual ``x += shortcut`` would overwrite a captured
                # BatchNorm output in place, so |a x g| would read bn3 + shortcut instead of bn3 (as IG did);
                # an in-place activation after a hooked layer changes the copy too, so none is switched off
                with capture(model, layers, copy=True) as acts:
                    for sl in batches(len(inputs), self.batch_size):
                        # the input must be in the graph: parameters are frozen
                        logits = model(inputs[sl].detach().requires_grad_(True))
                        picked = logits.gather(1, tgt[sl].unsqueeze(1)).sum()
                        grads = torch.autograd.grad(picked, [acts[ly.name] for ly in layers], allow_unused=True)
                        for layer, grad in zip(layers, grads, strict=True):
                            if grad is None:  # unit does not reach the logit (cannot happen in these nets)
                                continue
                            per_sample = reduce_to_units(acts[layer.name].detach() * grad, layer)
                            totals[layer.name] += per_sample.sum(0).double().cpu()
        finally:
            model.train(was_training)
        return {name: t.float() for name, t in totals.items()}
