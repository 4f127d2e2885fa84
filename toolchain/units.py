"""Prunable units: conv output channels, ViT MLP hidden units, ViT attention heads.

A unit layer is identified by the qualified name of the module that owns the units (stable across
runs and serialisable). Every criterion reads a tensor at ``hook`` (its ``port``: output or input),
whose ``channel_dim`` indexes ``size * width`` channels; a unit is ``width`` consecutive channels
(1 for conv channels and MLP units, ``head_dim`` for attention heads).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import nn

from .errors import ModelError

UnitKind = Literal["conv", "mlp", "head"]


@dataclass(frozen=True)
class UnitLayer:
    name: str  # module owning the units, e.g. "features.0", "blocks.3.mlp.fc1", "blocks.3.attn"
    kind: UnitKind
    size: int  # number of units
    hook: str  # module whose tensor carries the units
    port: Literal["output", "input"]
    channel_dim: int  # 1 for NCHW feature maps, -1 for token tensors
    width: int = 1  # channels per unit

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> UnitLayer:
        return cls(**d)

    def unit_ids(self) -> list[str]:
        return [f"{self.name}:{i}" for i in range(self.size)]


def is_attention(module: nn.Module) -> bool:
    """timm-style attention: fused qkv projection, output projection and a head count."""
    return all(hasattr(module, a) for a in ("qkv", "proj", "num_heads")) and isinstance(
        module.qkv, nn.Linear
    )


def find_unit_layers(model: nn.Module, kinds: tuple[str, ...] = ("conv", "mlp", "head")) -> list[UnitLayer]:
    """All prunable unit layers of ``model`` in module order.

    Convs inside a patch embedding are excluded: their channels are the residual stream of a ViT,
    not units. Grouped/depthwise convs are excluded (their channels are tied to their inputs).
    """
    layers: list[UnitLayer] = []
    for name, module in model.named_modules():
        if "conv" in kinds and isinstance(module, nn.Conv2d):
            # torchvision's ViT calls its patch embedding "conv_proj"
            if "patch_embed" in name or name == "conv_proj" or module.groups != 1:
                continue
            layers.append(UnitLayer(name, "conv", module.out_channels, name, "output", 1))
        elif "mlp" in kinds and isinstance(module, nn.Linear) and name.endswith("mlp.fc1"):
            layers.append(UnitLayer(name, "mlp", module.out_features, name, "output", -1))
        elif "head" in kinds and is_attention(module):
            head_dim = module.qkv.out_features // 3 // module.num_heads
            layers.append(
                UnitLayer(name, "head", module.num_heads, f"{name}.proj", "input", -1, width=head_dim)
            )
    if not layers:
        raise ModelError(f"{type(model).__name__} has no prunable units (conv channels, ViT MLP units or heads)")
    return layers


def reduce_to_units(tensor: torch.Tensor, layer: UnitLayer, absolute: bool = True) -> torch.Tensor:
    """Per-sample unit scores ``(batch, size)`` from a tensor at the layer's hook.

    Sums over every dim except batch and channel (spatial positions or tokens), then over the
    ``width`` channels of a unit. ``absolute`` takes |x| element-wise first (the aggregation of
    "Pruning by Explaining Revisited": |R| summed over positions).
    """
    t = tensor.abs() if absolute else tensor
    cdim = layer.channel_dim % t.dim()
    t = t.movedim(cdim, -1)
    t = t.reshape(t.shape[0], -1, t.shape[-1]).sum(1)
    if t.shape[-1] != layer.size * layer.width:
        raise ModelError(
            f"{layer.hook}: expected {layer.size * layer.width} channels, got {t.shape[-1]}"
        )
    return t.reshape(t.shape[0], layer.size, layer.width).sum(-1)


def get_module(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError as exc:
        raise ModelError(f"model has no module named {name!r}") from exc
