"""Random scores: the control every attribution criterion has to beat."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError
from ..units import UnitLayer
from .base import Criterion, register


@register
class RandomScores(Criterion):
    name = "random"
    needs_data = False

    def __init__(self, seed: int = 0, **options):
        super().__init__(**options)
        if not isinstance(seed, int):
            raise ConfigError(f"criterion 'random': seed must be an integer, got {seed!r}")
        self.seed = seed

    def attribute(self, model: nn.Module, inputs, targets, layers: Sequence[UnitLayer]) -> dict[str, torch.Tensor]:
        # one generator walked in layer order: the same seed and layers give the same scores
        gen = torch.Generator().manual_seed(self.seed)
        return {layer.name: torch.rand(layer.size, generator=gen) for layer in layers}

    def __repr__(self) -> str:
        return f"RandomScores(seed={self.seed})"
