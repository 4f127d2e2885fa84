"""Masks → a physically smaller model whose logits equal the masked model's.

Granularities (see README "Granularity"):

* ``neuron``: the paper's per-unit masks. Every masked unit that can be removed without touching a
  unit that stays is removed (VGG channels, ResNet bottleneck conv1/conv2 channels, ViT MLP units and
  heads). Units coupled to kept ones (ResNet conv3/downsample outputs share the residual stream) stay
  in the model, masked (zeroed); the report says how many units were removable.
* ``group``: masks must mask coupled units together (as :func:`group_masks` makes them); everything
  masked is removed, and masks that split a group are refused.

In both cases a group unit is removed exactly when all its members are masked, so removed == masked.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, ModelError
from ..units import UnitLayer, find_unit_layers
from .adapter import check_options, normalise, reduce_members
from .fold import ZERO_TOL, Fold, apply_folds, capture_inputs, channel_constants, fold_for
from .graph import Analysis, UnitGroup, analyse
from .heads import sync_heads
from .keep import keep_dict, validate_keep

GRANULARITIES = ("neuron", "group")


def masked_copy(model: nn.Module, keep: dict[str, torch.Tensor], layers: list[UnitLayer],
                example_input: torch.Tensor | None = None) -> nn.Module:
    """The masked deep copy (toolchain.masking.apply_masks zeroes each unit and its BN/affine)."""
    from ..masking import MaskSet, apply_masks

    return apply_masks(model, MaskSet(keep=keep, layers=list(layers), meta={}), example_input=example_input)


def check_round_to(round_to: int | None) -> int | None:
    if round_to is None or round_to in (0, 1):
        return None
    if not isinstance(round_to, int) or round_to < 0:
        raise ConfigError(f"round_to must be a positive integer (e.g. 8), got {round_to!r}")
    return round_to


def rounded_count(kept: int, size: int, width: int, round_to: int | None) -> int:
    """Smallest count >= kept whose channel count (count*width) is a multiple of round_to (<= size)."""
    if not round_to:
        return kept
    step = round_to // math.gcd(round_to, width)
    return min(size, -(-kept // step) * step)


def group_unit_scores(ug: UnitGroup, scores: dict[str, torch.Tensor], normalize: str | None = "mean",
                      aggregate: str = "sum") -> torch.Tensor | None:
    """Aggregate of the members' normalised unit scores per group unit (None if a member is unscored)."""
    stack = []
    for member, umap in ug.members.items():
        if member not in scores:
            return None
        stack.append(normalise(torch.as_tensor(scores[member]), normalize)[umap])
    return reduce_members(stack, aggregate)


def _masked_units(ug: UnitGroup, keep: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(all members masked, some but not all masked) per group unit."""
    masked = [~keep[m][umap] if m in keep else torch.zeros(ug.size, dtype=torch.bool)
              for m, umap in ug.members.items()]
    t = torch.stack(masked)
    return t.all(0), t.any(0) & ~t.all(0)


def _unit_of_root(ug: UnitGroup, r: int) -> int:
    if ug.kind == "head":
        attn_dim = ug.root.out_features // 3
        return (r % attn_dim) // ug.width
    return r


def _consumers(an: Analysis, group) -> list[tuple[nn.Module, list[int], list[int]]]:
    out = []
    for item in group:
        m = item.dep.target.module
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) and an.dg.is_in_channel_pruning_fn(item.dep.handler):
            out.append((m, list(item.idxs), list(item.root_idxs)))
    return out


def _next_bn(an: Analysis, module: nn.Module) -> nn.Module | None:
    node = an.dg.module2node.get(module)
    if node is None or len(node.outputs) != 1:
        return None
    nxt = node.outputs[0].module
    return nxt if isinstance(nxt, nn.modules.batchnorm._BatchNorm) else None


def _plan_folds(an: Analysis, ug: UnitGroup, units: list[int], captured: dict) -> tuple[list[Fold], dict[int, str]]:
    """Folds for removing ``units`` of ``ug`` and the units that cannot be removed exactly (with why)."""
    group = an.dg.get_pruning_group(ug.root, ug.root_fn, ug.root_idxs(units))
    folds, bad = [], {}
    for consumer, idxs, roots in _consumers(an, group):
        x = captured.get(consumer)
        if x is None:
            continue
        c, const = channel_constants(x, consumer, idxs)
        cname = an.names.get(consumer, type(consumer).__name__)
        for k in (~const).nonzero().flatten().tolist():
            bad[_unit_of_root(ug, roots[k])] = f"masked output still varies at {cname}"
        nz = [k for k in range(len(idxs)) if const[k] and abs(float(c[k])) > ZERO_TOL]
        if not nz:
            continue
        fold = fold_for(consumer, [idxs[k] for k in nz], c[nz], _next_bn(an, consumer))
        if fold is None:
            for k in nz:
                bad[_unit_of_root(ug, roots[k])] = f"emits a constant into {cname}, which cannot absorb it exactly"
        else:
            folds.append(fold)
    return folds, bad


def remove_units(
    model: nn.Module,
    masks: Any,
    example_input: torch.Tensor,
    granularity: str = "neuron",
    round_to: int | None = None,
    *,
    scores: dict[str, torch.Tensor] | None = None,
    verify: bool = True,
    atol: float = 1e-4,
    strict: bool = True,
) -> tuple[nn.Module, dict[str, Any]]:
    """``(pruned deep copy, report)``; the pruned model computes what ``apply_masks(model, masks)`` does.

    ``round_to`` keeps extra units so every removed-from group keeps a multiple of ``round_to``
    channels: with ``scores`` the most important would-be-removed units are restored (unmasked),
    without them masked units are kept as zeroed padding. ``strict=False`` (neuron granularity only)
    leaves units whose group holds an op Torch-Pruning cannot follow masked in place instead of
    raising. The report's ``keep`` holds the effective masks (after rounding); every other report
    entry is JSON-serialisable.
    """
    if granularity not in GRANULARITIES:
        raise ConfigError(f"unknown granularity {granularity!r}; choose from {', '.join(GRANULARITIES)}")
    round_to = check_round_to(round_to)
    keep = {n: t.clone() for n, t in keep_dict(masks).items()}
    validate_keep(model, keep)
    all_layers = find_unit_layers(model)
    layer_by = {layer.name: layer for layer in all_layers}
    example_input = example_input.detach()

    was_training = model.training
    try:
        plan_an = analyse(model, all_layers, example_input)
    finally:
        model.train(was_training)

    plan: dict[str, list[int]] = {}
    reasons: dict[str, str] = {}
    padded: dict[str, int] = {}
    for ug in plan_an.groups:
        full, partial = _masked_units(ug, keep)
        if granularity == "group" and bool(partial.any()):
            j = int(partial.nonzero()[0])
            ms = ", ".join(f"{m}:{int(u[j])} {'masked' if m in keep and not keep[m][u[j]] else 'kept'}"
                           for m, u in ug.members.items())
            raise ConfigError(f"masks split the coupled group {ug.key} ({ms}); build them with group_masks "
                              "or use granularity='neuron'")
        cand = full.nonzero().flatten().tolist()
        if bool(partial.any()):
            reasons[ug.key] = "coupled units are kept"
        if not cand:
            continue
        if ug.unsupported and not strict and granularity == "neuron":
            # neuron granularity already leaves coupled units masked in place; an op Torch-Pruning
            # cannot follow is one more reason a unit stays (zeroed) instead of being removed
            reasons[ug.key] = f"unsupported {ug.unsupported[0]}"
            continue
        if ug.unsupported:
            raise ModelError(f"cannot remove units of {ug.describe()}: its group contains unsupported "
                             f"{ug.unsupported[0]}")
        if ug.blockers:
            reasons[ug.key] = f"coupled with {ug.blockers[0]}"
            continue
        target = rounded_count(ug.size - len(cand), ug.size, ug.width, round_to)
        need = target - (ug.size - len(cand))
        if need > 0:
            gs = group_unit_scores(ug, scores) if scores is not None else None
            if gs is not None:  # restore the most important would-be-removed units
                restore = sorted(cand, key=lambda j: -float(gs[j]))[:need]
                for m, umap in ug.members.items():
                    if m in keep:
                        keep[m][umap[restore]] = True
            else:  # keep masked units as zeroed padding
                restore = cand[-need:]
                padded[ug.key] = need
            cand = [j for j in cand if j not in set(restore)]
        if cand:
            plan[ug.key] = cand

    masked = masked_copy(model, keep, [layer_by[n] for n in keep], example_input).eval()
    if verify:
        with torch.no_grad():
            reference = masked(example_input)
    an = analyse(masked, all_layers, example_input)
    groups = {ug.key: ug for ug in an.groups}

    # constants are measured on the unpruned masked model, all folds applied before any pruning
    consumer_modules = []
    for key, units in plan.items():
        ug = groups[key]
        g = an.dg.get_pruning_group(ug.root, ug.root_fn, ug.root_idxs(units))
        consumer_modules += [m for m, _, _ in _consumers(an, g)]
    captured = capture_inputs(masked, consumer_modules, example_input)
    folds: list[Fold] = []
    for key in list(plan):
        ug = groups[key]
        for _ in range(3):
            f, bad = _plan_folds(an, ug, plan[key], captured)
            if not bad:
                break
            reasons[key] = next(iter(bad.values()))
            plan[key] = [u for u in plan[key] if u not in bad]
        if plan[key]:
            folds += f
        else:
            del plan[key]
    apply_folds(folds)

    pruned = masked
    module_attrs: dict[str, dict[str, int]] = {}
    for key, units in plan.items():
        ug = groups[key]
        an.dg.get_pruning_group(ug.root, ug.root_fn, ug.root_idxs(units)).prune()
        if ug.kind == "head":
            module_attrs[ug.attention] = sync_heads(pruned.get_submodule(ug.attention), ug.width)

    report = _report(all_layers, keep, plan, groups, reasons, padded, granularity, round_to)
    report["module_attrs"] = module_attrs
    report["folded_constants"] = len(folds)
    report["params_before"] = sum(p.numel() for p in model.parameters())
    report["params_after"] = sum(p.numel() for p in pruned.parameters())
    if verify:
        report["parity_max_abs"] = _parity(reference, pruned, example_input, atol)
    report["keep"] = keep
    spec = getattr(model, "medprune_spec", None)
    if spec is not None:
        pruned.medprune_spec = copy.deepcopy(spec)
    return pruned.eval(), report


def _parity(a: torch.Tensor, pruned: nn.Module, x: torch.Tensor, atol: float) -> float:
    with torch.no_grad():
        b = pruned.eval()(x)
    diff = float((a - b).abs().max())
    scale = max(1.0, float(a.abs().max()))
    if not diff <= atol * scale:
        raise ModelError(f"removal changed the masked model's logits by {diff:.3g} (> {atol * scale:.3g}); "
                         "this is a medprune bug, please report it with the model and masks")
    return diff


def _report(layers, keep, plan, groups, reasons, padded, granularity, round_to) -> dict[str, Any]:
    removed: dict[str, int] = {}
    for key, units in plan.items():
        for m in groups[key].members:
            removed[m] = removed.get(m, 0) + len(units)
    rows = {}
    for layer in layers:
        k = keep.get(layer.name)
        n_masked = int((~k).sum()) if k is not None else 0
        n_removed = removed.get(layer.name, 0)
        ug = groups.get(layer.name) or next((g for g in groups.values() if layer.name in g.members), None)
        rows[layer.name] = {
            "kind": layer.kind, "size": layer.size, "masked": n_masked, "removed": n_removed,
            "kept_masked": n_masked - n_removed, "after": layer.size - n_removed,
            "group": ug.key if ug else None,
            "reason": reasons.get(ug.key) if ug and n_masked > n_removed else None,
        }
    total = sum(r["size"] for r in rows.values())
    masked = sum(r["masked"] for r in rows.values())
    rem = sum(r["removed"] for r in rows.values())
    return {
        "granularity": granularity, "round_to": round_to,
        "units": {"total": total, "masked": masked, "removed": rem, "kept_masked": masked - rem,
                  "padding": sum(padded.values())},
        "removable_fraction": (rem / masked) if masked else 1.0,
        "layers": rows,
    }


__all__ = ["remove_units", "masked_copy", "group_unit_scores", "rounded_count", "check_options"]
