"""Our per-unit scores as a Torch-Pruning ``Importance``, so any TP group can be scored by its members.

``UnitScoreImportance(group)`` returns one score per index of the group's root (TP's contract): for
every member of the group that is one of our unit layers, its (normalised) unit scores are gathered
at that member's channels and aggregated across members with ``sum`` (default), ``mean`` or ``max``.
Channels of an attention head's q/k/v rows all get the head's score.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch_pruning as tp
from torch import nn

from ..errors import ConfigError
from ..units import UnitLayer

NORMALIZERS = ("mean", "l1", "max", None)
AGGREGATES = ("sum", "mean", "max")
_EPS = 1e-12


def normalise(s: torch.Tensor, how: str | None) -> torch.Tensor:
    """Per-layer scale so that layers of different magnitude can be summed and ranked together."""
    s = s.detach().double().cpu()
    if how is None:
        return s
    if how == "mean":
        return s / (s.abs().mean() + _EPS)
    if how == "l1":
        return s / (s.abs().sum() + _EPS)
    if how == "max":
        return s / (s.abs().max() + _EPS)
    raise ConfigError(f"unknown normalisation {how!r}; choose from mean, l1, max or none")


def check_options(normalize: str | None, aggregate: str) -> None:
    if normalize not in NORMALIZERS:
        raise ConfigError(f"unknown normalisation {normalize!r}; choose from mean, l1, max or none")
    if aggregate not in AGGREGATES:
        raise ConfigError(f"unknown aggregate {aggregate!r}; choose from {', '.join(AGGREGATES)}")


def reduce_members(stack: list[torch.Tensor], aggregate: str) -> torch.Tensor:
    t = torch.stack(stack)
    if aggregate == "sum":
        return t.sum(0)
    if aggregate == "mean":
        return t.mean(0)
    return t.amax(0)


class UnitScoreImportance(tp.importance.Importance):
    """TP importance backed by medprune unit scores ``{layer: (size,)}``."""

    def __init__(
        self,
        scores: Mapping[str, torch.Tensor],
        layers: list[UnitLayer],
        model: nn.Module,
        normalize: str | None = "mean",
        aggregate: str = "sum",
    ):
        check_options(normalize, aggregate)
        self.aggregate = aggregate
        self.names = {m: n for n, m in model.named_modules()}
        self.channel_layers: dict[str, torch.Tensor] = {}  # module name -> score per output channel
        self.head_rows: dict[str, tuple[int, int, torch.Tensor]] = {}  # qkv name -> (attn_dim, head_dim, s)
        for layer in layers:
            s = normalise(torch.as_tensor(scores[layer.name]), normalize)
            if layer.kind == "head":
                self.head_rows[f"{layer.name}.qkv"] = (layer.size * layer.width, layer.width, s)
            else:
                self.channel_layers[layer.name] = s

    def member_scores(self, module: nn.Module, idxs: list[int]) -> torch.Tensor | None:
        name = self.names.get(module)
        if name in self.channel_layers:
            return self.channel_layers[name][idxs]
        if name in self.head_rows:
            attn_dim, head_dim, s = self.head_rows[name]
            rows = torch.as_tensor(idxs)
            return s[(rows % attn_dim) // head_dim]
        return None

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor:
        root = group[0]
        position = {r: i for i, r in enumerate(root.root_idxs)}
        stack = []
        for item in group:
            dg = group._DG
            if dg is not None and not dg.is_out_channel_pruning_fn(item.dep.handler):
                continue
            vals = self.member_scores(item.dep.target.module, item.idxs)
            if vals is None or any(r is None for r in item.root_idxs):
                continue
            fill = float("-inf") if self.aggregate == "max" else 0.0
            col = torch.full((len(root.idxs),), fill, dtype=torch.float64)
            col[torch.as_tensor([position[r] for r in item.root_idxs])] = vals
            stack.append(col)
        if not stack:
            return torch.zeros(len(root.idxs), dtype=torch.float64)
        return reduce_members(stack, self.aggregate)
