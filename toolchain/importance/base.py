"""The criterion interface and registry (cf. captum's ``.attribute()``, Torch-Pruning's ``Importance``)."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import nn

from ..errors import ConfigError
from ..units import UnitLayer

_REGISTRY: dict[str, type[Criterion]] = {}


class Criterion:
    """Scores every unit of the given layers.

    Subclasses set ``name`` and implement ``attribute``. Options are constructor keyword arguments
    (validated there, so bad options fail before any work). ``attribute`` must return, for every
    layer, a finite float tensor of shape ``(layer.size,)``; higher means more important.
    ``inputs`` are preprocessed images ``(N, C, H, W)``; ``targets`` the class to explain per sample
    (None: the predicted class). Criteria that ignore data (magnitude, random) set ``needs_data``
    False and accept ``inputs=None``.
    """

    name: ClassVar[str] = ""
    needs_data: ClassVar[bool] = True

    def __init__(self, batch_size: int = 16, **options):
        if options:
            raise ConfigError(f"criterion {self.name!r} got unknown options: {', '.join(sorted(options))}")
        self.batch_size = batch_size

    def attribute(
        self,
        model: nn.Module,
        inputs: torch.Tensor | None,
        targets: torch.Tensor | None,
        layers: Sequence[UnitLayer],
    ) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def __call__(self, model, inputs, targets, layers):
        scores = self.attribute(model, inputs, targets, layers)
        for layer in layers:
            s = scores.get(layer.name)
            if s is None or s.shape != (layer.size,):
                raise RuntimeError(f"criterion {self.name} returned no/misshaped scores for {layer.name}")
            if not torch.isfinite(s).all():
                raise RuntimeError(f"criterion {self.name} returned non-finite scores for {layer.name}")
        return {k: v.detach().float().cpu() for k, v in scores.items()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def register(cls: type[Criterion]) -> type[Criterion]:
    if not cls.name:
        raise TypeError(f"{cls.__name__} must set a name")
    _REGISTRY[cls.name] = cls
    return cls


def _discover() -> None:
    package = importlib.import_module(__package__)
    for info in pkgutil.iter_modules(package.__path__):
        if info.name != "base" and not info.name.startswith("_"):
            importlib.import_module(f"{__package__}.{info.name}")


def available() -> list[str]:
    _discover()
    return sorted(_REGISTRY)


def registered() -> dict[str, type[Criterion]]:
    """Every registered criterion class by name (a copy: registering goes through ``register``)."""
    _discover()
    return dict(_REGISTRY)


def get_criterion(name: str, **options) -> Criterion:
    _discover()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown criterion {name!r}; choose from {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](**options)
