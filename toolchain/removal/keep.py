"""Keep masks in, validated against the model: a ``MaskSet`` or a plain ``{layer: BoolTensor}``.

Removal only needs ``keep`` (True = unit stays); everything else about a mask set is the masking
module's business. Errors name the offending layer so the user can fix the mask file.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..units import UnitLayer, find_unit_layers


def keep_dict(masks: Any) -> dict[str, torch.Tensor]:
    """The ``{layer name: BoolTensor(size,)}`` of a MaskSet (``.keep``) or of a plain mapping."""
    keep = getattr(masks, "keep", masks)
    if not isinstance(keep, Mapping):
        raise ConfigError(f"masks must be a MaskSet or a dict of keep masks, got {type(masks).__name__}")
    out = {}
    for name, mask in keep.items():
        t = torch.as_tensor(mask)
        if t.dim() != 1:
            raise ConfigError(f"mask for {name!r} must be 1-D, got shape {tuple(t.shape)}")
        out[str(name)] = t.bool().cpu()
    return out


def validate_keep(model: nn.Module, keep: dict[str, torch.Tensor]) -> dict[str, UnitLayer]:
    """The unit layers the masks address; ConfigError for unknown layers, wrong sizes, emptied layers."""
    layers = {layer.name: layer for layer in find_unit_layers(model)}
    for name, mask in keep.items():
        layer = layers.get(name)
        if layer is None:
            known = ", ".join(list(layers)[:4])
            raise ConfigError(
                f"mask names layer {name!r}, which is not a prunable unit layer of this model "
                f"(e.g. {known}, …): the masks were made for another model"
            )
        if mask.numel() != layer.size:
            raise ConfigError(
                f"mask for {name!r} has {mask.numel()} units but the model's layer has {layer.size}: "
                "the masks were made for another model (or an already pruned one)"
            )
        if not bool(mask.any()):
            raise ConfigError(f"mask for {name!r} removes all {layer.size} units: a layer cannot be emptied")
    return {name: layers[name] for name in keep}


def make_maskset(keep: dict[str, torch.Tensor], layers: list[UnitLayer], meta: dict) -> Any:
    """A ``toolchain.masking.MaskSet`` over ``layers``."""
    from ..masking import MaskSet

    return MaskSet(keep=keep, layers=list(layers), meta=meta)
