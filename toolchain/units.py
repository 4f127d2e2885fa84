"""Prunable units: conv output channels, ViT MLP hidden units, ViT attention heads.

A unit layer is identified by the qualified name of the module that owns the units (stable across
runs and serialisable). Every criterion reads a tensor at ``hook`` (its ``port``: output or input),
whose ``channel_dim`` indexes ``size * width`` channels; a unit is ``width`` consecutive channels
(1 for conv channels and MLP units, ``head_dim`` for attention heads).

Read point (the same for every criterion): a unit is read where removing it takes effect, after its
normalisation and before its nonlinearity. Removal (``masking``, ``removal``) zeroes a conv channel's
filter *and* the BatchNorm's weight and bias, so what disappears from the network is the BatchNorm's
output channel, not the conv's (a zeroed conv channel alone would still emit the BN shift
``beta - gamma*mu/sigma``). A conv unit followed by a BatchNorm is therefore read at the BN's output;
an MLP unit at ``fc1``'s output (zeroing its row and bias zeroes it, and GELU(0) = 0); a head at
``attn.proj``'s input (its slice of the attention output, zero once its v rows are zero).

Scale: a unit's score is the *mean* over its channels (``reduce_to_units``), so a 64-channel head
is on the per-channel scale of an MLP unit or a conv channel and global ranking can compare them
(summing would make a head 64x larger and it would never be pruned).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
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
    hook: str  # module whose tensor carries the units (the read point, see the module docstring)
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


def find_unit_layers(
    model: nn.Module, kinds: tuple[str, ...] = ("conv", "mlp", "head"), example: torch.Tensor | None = None
) -> list[UnitLayer]:
    """All prunable unit layers of ``model`` in module order, each with its read point as ``hook``.

    Convs inside a patch embedding are excluded: their channels are the residual stream of a ViT,
    not units. Grouped/depthwise convs are excluded (their channels are tied to their inputs).
    ``example`` (an input batch) lets the BatchNorm after each conv be found by tracing; without it
    one is built from the model's recorded input size (see :func:`norm_followers`).
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
    followers = norm_followers(model, [ly.name for ly in layers if ly.kind == "conv"], example)
    return [
        UnitLayer(ly.name, ly.kind, ly.size, followers[ly.name], "output", ly.channel_dim, ly.width)
        if ly.name in followers else ly
        for ly in layers
    ]


def reduce_to_units(tensor: torch.Tensor, layer: UnitLayer, absolute: bool = True) -> torch.Tensor:
    """Per-sample unit scores ``(batch, size)`` from a tensor at the layer's hook.

    Sums over every dim except batch and channel (spatial positions or tokens), then takes the mean
    over the ``width`` channels of a unit (per-channel scale, see the module docstring). ``absolute``
    takes |x| element-wise first (the aggregation of "Pruning by Explaining Revisited": |R| summed
    over positions).
    """
    t = tensor.abs() if absolute else tensor
    cdim = layer.channel_dim % t.dim()
    t = t.movedim(cdim, -1)
    t = t.reshape(t.shape[0], -1, t.shape[-1]).sum(1)
    if t.shape[-1] != layer.size * layer.width:
        raise ModelError(
            f"{layer.hook}: expected {layer.size * layer.width} channels, got {t.shape[-1]}"
        )
    return t.reshape(t.shape[0], layer.size, layer.width).mean(-1)


def get_module(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError as exc:
        raise ModelError(f"model has no module named {name!r}") from exc


# ---- which BatchNorm reads each conv --------------------------------------------------------
def example_input(model: nn.Module) -> torch.Tensor | None:
    """A zero batch of one image at the model's recorded input size (None for models without convs)."""
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first is None:
        return None
    size = None
    spec = getattr(model, "medprune_spec", None)
    if isinstance(spec, Mapping):
        size = spec.get("img_size")
    if size is None:
        cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
        size = (cfg.get("input_size") or (None, None, 32))[-1] if isinstance(cfg, Mapping) else 32
    p = next(model.parameters())
    return torch.zeros(1, first.in_channels, int(size), int(size), dtype=p.dtype, device=p.device)


def _trace_followers(model: nn.Module, conv_names: Sequence[str], example: torch.Tensor) -> dict[str, str]:
    """Which BatchNorm consumes each conv's output, found by matching tensors in one forward pass."""
    produced: dict[int, str] = {}
    followers: dict[str, str] = {}
    keep_alive: list[torch.Tensor] = []  # ids are only unique while the tensors live
    wanted = set(conv_names)
    handles = []
    for name, module in model.named_modules():
        if name in wanted:

            def out_hook(_m, _i, out, name=name):
                produced[id(out)] = name
                keep_alive.append(out)

            handles.append(module.register_forward_hook(out_hook))
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):

            def in_hook(_m, inp, name=name):
                src = produced.get(id(inp[0]))
                if src is not None:
                    followers.setdefault(src, name)

            handles.append(module.register_forward_pre_hook(in_hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return followers


def _order_followers(model: nn.Module, conv_names: Sequence[str]) -> dict[str, str]:
    """Without a usable input (timm naming): the BatchNorm registered right after a conv, same width."""
    mods = list(model.named_modules())
    wanted = set(conv_names)
    out: dict[str, str] = {}
    for (name, m), (next_name, nxt) in zip(mods, mods[1:], strict=False):
        if name in wanted and isinstance(nxt, nn.modules.batchnorm._BatchNorm) and nxt.num_features == m.out_channels:
            out[name] = next_name
    return out


def norm_followers(
    model: nn.Module, conv_names: Sequence[str], example: torch.Tensor | None = None
) -> dict[str, str]:
    """``{conv name: name of the BatchNorm fed by its output}`` for the given convs.

    Traced with ``example`` (else :func:`example_input`); if the model rejects that input, module
    order decides (right for timm's models) and a warning says so.
    """
    if not conv_names or not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return {}
    example = example[:1] if example is not None else example_input(model)
    if example is not None:
        try:
            return _trace_followers(model, conv_names, example)
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            warnings.warn(
                f"could not trace {type(model).__name__} with a {tuple(example.shape)} input ({exc}); "
                "matching BatchNorms to convs by module order",
                stacklevel=2,
            )
    return _order_followers(model, conv_names)
