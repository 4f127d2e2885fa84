"""Group-granularity masks: coupled units are scored and masked together, so removal == masking.

Each Torch-Pruning group that contains our unit layers (and nothing that blocks removal) is scored
per group unit by :class:`UnitScoreImportance` (members' unit scores, normalised per layer, summed by
default). The budget ``ratio`` counts *units* like the neuron masks do (a residual-stream channel
shared by four convs counts four), so both granularities remove comparable amounts at one ratio:

* ``scope="global"``: group units are masked cheapest-first by their score per member unit
  (``sum``/members, which ranks like ``mean``; ``max`` ranks by the strongest member) until
  ``ratio`` of all units are masked;
* ``scope="layer"``: each group masks ``ratio`` of its own units.

Each group keeps at least ``min_keep`` units; ``round_to`` then restores the most important masked
units until the group's channel count is a multiple of ``round_to``. Groups that cannot be removed
(blocked or unsupported) are left unmasked and listed in ``meta["blocked"]``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..units import UnitLayer, find_unit_layers
from .adapter import UnitScoreImportance, check_options
from .graph import UnitGroup, analyse
from .keep import make_maskset
from .remove import check_round_to, rounded_count

SCOPES = ("global", "layer")


def _check_scores(scores: dict[str, torch.Tensor], layers: list[UnitLayer]) -> None:
    for layer in layers:
        s = scores.get(layer.name)
        if s is None:
            raise ConfigError(f"no scores for layer {layer.name!r}")
        if tuple(torch.as_tensor(s).shape) != (layer.size,):
            raise ConfigError(f"scores for {layer.name!r} have shape {tuple(torch.as_tensor(s).shape)}, "
                              f"expected ({layer.size},)")


def _scores_per_unit(ug: UnitGroup, imp: UnitScoreImportance, dg) -> torch.Tensor:
    """TP-adapter score per group unit (heads: the score of the head's first q row)."""
    full = list(range(ug.root.out_features if ug.kind == "head" else ug.size))
    group = dg.get_pruning_group(ug.root, ug.root_fn, full)
    s = imp(group)
    if ug.kind == "head":
        s = s[torch.as_tensor(ug.root_idxs(list(range(ug.size)))[: ug.size * ug.width : ug.width])]
    return s


class GroupMasker:
    """Graph analysis and per-group scores done once; :meth:`masks` then costs no graph work per ratio.

    A lossless search tries many ratios on one model: building the Torch-Pruning graph for each
    would dominate it.
    """

    def __init__(
        self,
        model: nn.Module,
        scores: dict[str, torch.Tensor],
        layers: list[UnitLayer] | None,
        example_input: torch.Tensor,
        round_to: int | None = None,
        *,
        aggregate: str = "sum",
        normalize: str | None = "mean",
        scope: str = "global",
        min_keep: int = 1,
    ):
        if scope not in SCOPES:
            raise ConfigError(f"unknown scope {scope!r}; choose from {', '.join(SCOPES)}")
        check_options(normalize, aggregate)
        self.round_to = check_round_to(round_to)
        self.layers = list(layers) if layers is not None else find_unit_layers(model)
        _check_scores(scores, self.layers)
        self.aggregate, self.normalize, self.scope = aggregate, normalize, scope
        self.floor = max(1, int(min_keep))
        scored = {layer.name for layer in self.layers}

        was_training = model.training
        try:
            an = analyse(model, find_unit_layers(model), example_input.detach())
        finally:
            model.train(was_training)
        imp = UnitScoreImportance(scores, self.layers, model, normalize=normalize, aggregate=aggregate)

        self.blocked: dict[str, str] = {}
        self.usable: list[tuple[UnitGroup, torch.Tensor]] = []
        for ug in an.groups:
            if not set(ug.members) & scored:
                continue
            why = (ug.unsupported[:1] or ug.blockers[:1] or
                   [f"member {m} is not scored" for m in ug.members if m not in scored][:1])
            if why:
                self.blocked[ug.key] = why[0]
                continue
            self.usable.append((ug, _scores_per_unit(ug, imp, an.dg)))
        self.total = sum(layer.size for layer in self.layers)

    def masks(self, ratio: float) -> Any:
        """A MaskSet over the layers whose masked units are exactly the removable group units chosen."""
        if not 0.0 <= float(ratio) < 1.0:
            raise ConfigError(f"ratio must be in [0, 1), got {ratio}")
        usable, floor, total = self.usable, self.floor, self.total
        pruned: dict[str, list[int]] = {ug.key: [] for ug, _ in usable}
        if self.scope == "layer":
            for ug, s in usable:
                n = min(int(math.floor(ratio * ug.size)), ug.size - floor)
                pruned[ug.key] = torch.argsort(s)[: max(0, n)].tolist()
        else:
            budget = int(round(ratio * total))
            order = []
            for gi, (ug, s) in enumerate(usable):
                per_unit = s / len(ug.members) if self.aggregate == "sum" else s
                order += [(float(per_unit[j]), gi, j) for j in range(ug.size)]
            order.sort()
            used = 0
            for _, gi, j in order:
                ug = usable[gi][0]
                cost = len(ug.members)
                if used + cost > budget or ug.size - len(pruned[ug.key]) <= floor:
                    continue
                pruned[ug.key].append(j)
                used += cost
                if used >= budget:
                    break

        keep = {layer.name: torch.ones(layer.size, dtype=torch.bool) for layer in self.layers}
        restored = 0
        for ug, s in usable:
            units = pruned[ug.key]
            kept = ug.size - len(units)
            need = rounded_count(kept, ug.size, ug.width, self.round_to) - kept
            if need > 0:  # the most important of the would-be-pruned come back
                units = sorted(units, key=lambda j: float(s[j]))[: len(units) - need]
                restored += need * len(ug.members)
            for m, umap in ug.members.items():
                keep[m][umap[units]] = False

        masked_units = sum(int((~k).sum()) for k in keep.values())
        meta = {
            "granularity": "group", "ratio": float(ratio), "achieved_ratio": masked_units / max(1, total),
            "round_to": self.round_to, "aggregate": self.aggregate, "normalize": self.normalize, "scope": self.scope,
            "min_keep": floor, "restored_by_rounding": restored, "blocked": dict(self.blocked),
            "groups": {ug.key: sorted(ug.members) for ug, _ in usable},
        }
        return make_maskset(keep, self.layers, meta)


def group_masks(
    model: nn.Module,
    scores: dict[str, torch.Tensor],
    layers: list[UnitLayer] | None,
    ratio: float,
    example_input: torch.Tensor,
    round_to: int | None = None,
    **options: Any,
) -> Any:
    """A MaskSet over ``layers`` whose masked units are exactly the removable group units chosen.

    ``options``: ``aggregate`` ("sum"), ``normalize`` ("mean"), ``scope`` ("global"), ``min_keep`` (1).
    For several ratios on one model build a :class:`GroupMasker` once instead.
    """
    if not 0.0 <= float(ratio) < 1.0:
        raise ConfigError(f"ratio must be in [0, 1), got {ratio}")
    return GroupMasker(model, scores, layers, example_input, round_to, **options).masks(ratio)
