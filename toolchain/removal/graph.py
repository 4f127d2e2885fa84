"""Coupled unit groups from Torch-Pruning's DependencyGraph.

A *group unit* is one index of a Torch-Pruning group: removing it removes the same channel from
every coupled layer (e.g. one residual-stream channel of a ResNet stage removes an output channel of
every ``conv3``/``downsample`` of that stage and an input channel of every consumer). Each of our unit
layers that owns such a channel is a *member*; a group unit can be physically removed only when every
member masks it. Anything else that owns the channel (a parameter, a LayerNorm, a depthwise conv, the
model output) *blocks* removal; ops Torch-Pruning cannot prune exactly make the group *unsupported*.

Attention heads are groups rooted at the fused ``qkv`` projection: one group unit is a head, i.e. its
q, k and v rows (Torch-Pruning maps them to the head's ``proj`` input columns through the reshape and
unbind of timm's forward).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn

from ..errors import ModelError
from ..units import UnitLayer
from .heads import head_rows

# Autograd ops that keep channels separate and map a constant channel to a constant channel, so a
# zeroed/constant unit stays zero/constant through them. Torch-Pruning treats *every* op it does not
# know as element-wise; anything not listed here is refused rather than trusted.
_CHANNEL_WISE_OPS = (
    "relu", "gelu", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid", "hardtanh", "elu", "mish",
    "add", "sub", "mul", "div", "pool", "mean", "sum", "tbackward", "transpose", "permute", "addmm",
    "mmbackward", "clone", "dropout", "select", "unsqueeze", "squeeze", "attention", "convolution",
    "expand", "view", "reshape", "flatten", "contiguous", "neg", "clamp", "tobackward", "copy",
)


@dataclass
class UnitGroup:
    key: str  # root module name
    kind: str  # conv | mlp | head
    size: int  # number of group units
    width: int  # root channels per group unit (head_dim for heads, else 1)
    members: dict[str, torch.Tensor]  # unit layer -> its unit index for each group unit (LongTensor (size,))
    root: nn.Module
    root_fn: Callable
    blockers: list[str] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)
    attention: str | None = None  # owning attention module for head groups

    def root_idxs(self, units: list[int]) -> list[int]:
        if self.kind == "head":
            return head_rows(self.root, units, self.width)
        return list(units)

    def describe(self) -> str:
        return f"{self.key} ({', '.join(self.members)})"


@dataclass
class Analysis:
    dg: tp.DependencyGraph
    groups: list[UnitGroup]
    by_layer: dict[str, UnitGroup]
    names: dict[nn.Module, str]


def build_graph(model: nn.Module, example_input: torch.Tensor) -> tp.DependencyGraph:
    """Trace ``model`` (grad enabled, eval mode); Torch-Pruning's warnings about ViT's cls/pos params
    are expected (those params only couple the residual stream, which medprune never prunes)."""
    # Standard strides: a 1-channel batch from Preprocess counts as contiguous yet has channels-last
    # strides, which convs propagate; with a final map larger than 1x1 (ResNet50 at 224 px: 7x7) the
    # flatten after pooling then traces as AsStrided, an op Torch-Pruning cannot follow.
    example_input = example_input.clone(memory_format=torch.contiguous_format)
    with warnings.catch_warnings(), torch.enable_grad():
        warnings.simplefilter("ignore")
        try:
            return tp.DependencyGraph().build_dependency(model, example_inputs=example_input, verbose=False)
        except Exception as exc:  # tracing failures come from the user's model
            raise ModelError(f"Torch-Pruning cannot trace {type(model).__name__}: {exc}") from exc


def _op_name(module) -> str:
    return str(getattr(module, "_grad_fn", "")) if isinstance(module, tp.ops._ElementWiseOp) else ""


def _classify(group, dg, names, unit_modules: dict[str, str], own: set[str], ug: UnitGroup) -> None:
    """Fill members/blockers/unsupported of ``ug`` from the Torch-Pruning group (full indices)."""
    for item in group:
        dep, idxs = item.dep, item.idxs
        m = dep.target.module
        name = names.get(m) if not isinstance(m, nn.Parameter) else dg._param_to_name.get(m, "parameter")
        is_out = dg.is_out_channel_pruning_fn(dep.handler)
        if isinstance(m, nn.Parameter):
            ug.blockers.append(f"parameter {name}")
        elif isinstance(m, tp.ops._OutputOp):
            ug.blockers.append("the model output")
        elif isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1:
            if m.groups == m.in_channels == m.out_channels:
                ug.blockers.append(f"depthwise conv {name}")
            else:
                ug.unsupported.append(f"grouped conv {name!r} (groups={m.groups})")
        elif isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
            if not is_out or name in own:
                continue  # consumers (input side) and the root's own projections
            layer = unit_modules.get(name)
            if layer is None:
                ug.blockers.append(f"{type(m).__name__} {name}")
                continue
            roots = item.root_idxs
            if any(r is None for r in roots) or len(roots) != len(idxs):
                ug.unsupported.append(f"{name!r} (channels not mapped one-to-one by Torch-Pruning)")
                continue
            umap = torch.full((ug.size,), -1, dtype=torch.long)
            umap[torch.as_tensor(roots)] = torch.as_tensor(idxs)
            ug.members[layer] = umap
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            continue  # per-channel: pruned along with its conv
        elif isinstance(m, tp.ops._ElementWiseOp):
            op = _op_name(m).lower()
            if not any(k in op for k in _CHANNEL_WISE_OPS):
                ug.unsupported.append(f"op {_op_name(m) or 'unknown'} (unknown to Torch-Pruning)")
        elif isinstance(m, (tp.ops._ReshapeOp, tp.ops._ConcatOp, tp.ops._SplitOp, tp.ops._UnbindOp,
                            tp.ops._ExpandOp, tp.ops._SliceOp)):
            continue
        elif isinstance(m, tp.ops._CustomizedOp) or dep.target.type == tp.ops.OPTYPE.CUSTOMIZED:
            ug.unsupported.append(f"custom layer {name!r} ({type(m).__name__})")
        else:
            # LayerNorm/GroupNorm mix channels (statistics), embeddings/MHA/LSTM own the channel: keep
            ug.blockers.append(f"{type(m).__name__} {name}")


def analyse(model: nn.Module, layers: list[UnitLayer], example_input: torch.Tensor) -> Analysis:
    """One UnitGroup per coupled group that contains at least one of ``layers``."""
    dg = build_graph(model, example_input)
    names = {m: n for n, m in model.named_modules()}
    modules = dict(model.named_modules())
    unit_modules = {layer.name: layer.name for layer in layers if layer.kind in ("conv", "mlp")}
    groups: list[UnitGroup] = []
    by_layer: dict[str, UnitGroup] = {}
    for layer in layers:
        if layer.name in by_layer:
            continue
        module = modules[layer.name]
        if layer.kind == "head":
            root = module.qkv
            fn = tp.prune_linear_out_channels
            ug = UnitGroup(layer.name, "head", layer.size, layer.width,
                           {layer.name: torch.arange(layer.size)}, root, fn, attention=layer.name)
            own = {f"{layer.name}.qkv", f"{layer.name}.gate"}
            full = list(range(root.out_features))
        else:
            if module not in dg.module2node:
                raise ModelError(f"{layer.name!r} is not used in the model's forward pass; cannot prune it")
            fn = dg.get_pruner_of_module(module).prune_out_channels
            ug = UnitGroup(layer.name, layer.kind, layer.size, 1, {}, module, fn)
            own = set()
            full = list(range(layer.size))
            root = module
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            group = dg.get_pruning_group(root, fn, full)
        _classify(group, dg, names, unit_modules, own, ug)
        if layer.kind == "head" and layer.name not in ug.members:
            ug.members[layer.name] = torch.arange(layer.size)
        for member in ug.members:
            by_layer[member] = ug
        by_layer.setdefault(layer.name, ug)
        groups.append(ug)
    return Analysis(dg, groups, by_layer, names)
