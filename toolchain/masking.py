"""Masks: which units to keep, built from scores, applied by zeroing, saved without pickle.

    masks = build_masks(scores, layers, ratio=0.3)                 # global ranking (default)
    masks = build_masks(scores, layers, 0.3, normalize="l1")       # per-layer L1 normalisation first
    masked = apply_masks(model, masks)                             # deep copy; masked units emit exactly 0
    masks.save("out/masks_r0.30"); MaskSet.load("out/masks_r0.30", model=model)

A masked unit is zeroed completely: its weights and bias, and the BatchNorm that consumes a conv's
output (weight and bias 0, so BN(anything) = 0); for MLP units the fc1 row and bias (GELU(0) = 0);
for heads the head's q, k and v rows and biases of the fused qkv projection (v = 0 makes the head's
output 0 whatever its attention pattern). So a masked model computes what deleting the units would.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .atomic import atomic_file, atomic_path
from .errors import ConfigError, ModelError
from .units import UnitLayer, find_unit_layers, get_module, norm_followers

FORMAT = "medprune-masks/1"
SCOPES = ("global", "layer")
NORMALIZE = (None, "l1")


@dataclass
class MaskSet:
    keep: dict[str, torch.Tensor]  # layer name -> BoolTensor(size,), True = unit stays
    layers: list[UnitLayer]
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.keep = {k: torch.as_tensor(v).bool().cpu() for k, v in self.keep.items()}
        for layer in self.layers:
            k = self.keep.get(layer.name)
            if k is None or k.shape != (layer.size,):
                raise ConfigError(f"mask for {layer.name} is missing or not of shape ({layer.size},)")

    # ---- summaries -------------------------------------------------------------------------
    @property
    def units_total(self) -> int:
        return sum(layer.size for layer in self.layers)

    @property
    def units_pruned(self) -> int:
        return sum(int((~self.keep[layer.name]).sum()) for layer in self.layers)

    def pruned_ratio(self) -> float:
        return self.units_pruned / max(1, self.units_total)

    # ---- checks ----------------------------------------------------------------------------
    def check(self, model: nn.Module) -> None:
        """ConfigError unless every masked layer exists in ``model`` with the same kind and unit count."""
        kinds = tuple(sorted({layer.kind for layer in self.layers}))
        try:
            found = {layer.name: layer for layer in find_unit_layers(model, kinds)}
        except ModelError as exc:  # a model without units cannot match any mask
            raise ConfigError(f"masks do not match the model: {exc}") from None
        for layer in self.layers:
            other = found.get(layer.name)
            if other is None:
                raise ConfigError(f"masks do not match the model: it has no {layer.kind} layer {layer.name!r}")
            if (other.kind, other.size, other.width) != (layer.kind, layer.size, layer.width):
                raise ConfigError(
                    f"masks do not match the model: {layer.name} has {other.size} {other.kind} units "
                    f"in the model but {layer.size} in the masks"
                )

    # ---- persistence -----------------------------------------------------------------------
    @staticmethod
    def _paths(path: str | os.PathLike) -> tuple[Path, Path]:
        p = Path(path)
        if p.suffix in (".safetensors", ".json"):
            p = p.with_suffix("")
        return p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json")

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``<path>.safetensors`` (the keep vectors) and ``<path>.json`` (layers, meta); returns the json."""
        from safetensors.torch import save_file

        weights, sidecar = self._paths(path)
        tensors = {name: self.keep[name].to(torch.uint8).contiguous() for name in (ly.name for ly in self.layers)}
        with atomic_path(weights) as tmp:
            save_file(tensors, str(tmp), metadata={"format": FORMAT})
        doc = {
            "format": FORMAT,
            "weights": weights.name,
            "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
            "layers": [layer.to_dict() for layer in self.layers],
            "units_total": self.units_total,
            "units_pruned": self.units_pruned,
            "meta": _jsonable(self.meta),
        }
        with atomic_file(sidecar, "w") as fh:
            json.dump(doc, fh, indent=2)
        return sidecar

    @classmethod
    def load(cls, path: str | os.PathLike, model: nn.Module | None = None) -> MaskSet:
        """Read a mask set written by ``save``; with ``model``, also check that it fits the model."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        weights, sidecar = cls._paths(path)
        for p in (weights, sidecar):
            if not p.exists():
                raise ConfigError(f"mask file not found: {p}")
        try:
            doc = json.loads(sidecar.read_text())
            if doc.get("format") != FORMAT:
                raise ConfigError(f"{sidecar} is not a medprune mask file (format {doc.get('format')!r})")
            layers = [UnitLayer.from_dict(d) for d in doc["layers"]]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ConfigError(f"{sidecar} is not a valid mask file: {exc}") from None
        if doc.get("sha256") and hashlib.sha256(weights.read_bytes()).hexdigest() != doc["sha256"]:
            raise ConfigError(f"{weights} does not match its sidecar {sidecar.name} (sha256 differs)")
        try:
            tensors = load_file(str(weights))
        except (SafetensorError, OSError) as exc:
            raise ConfigError(f"cannot read masks {weights}: {exc}") from None
        missing = [ly.name for ly in layers if ly.name not in tensors]
        if missing:
            raise ConfigError(f"{weights} lacks masks for {', '.join(missing[:3])}")
        masks = cls(keep={ly.name: tensors[ly.name].bool() for ly in layers}, layers=layers, meta=doc.get("meta", {}))
        if model is not None:
            masks.check(model)
        return masks


def _jsonable(obj):
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return obj.item()
    return obj


# ---- building --------------------------------------------------------------------------------
def check_ratio(ratio) -> float:
    try:
        value = float(ratio)
    except (TypeError, ValueError):
        raise ConfigError(f"pruning ratio must be a number in [0, 1), got {ratio!r}") from None
    if not (0.0 <= value < 1.0) or math.isnan(value):
        raise ConfigError(f"pruning ratio must be in [0, 1), got {ratio}")
    return value


def normalize_option(normalize) -> str | None:
    if normalize in (None, "none", "None", ""):
        return None
    if normalize not in NORMALIZE:
        raise ConfigError(f"unknown normalisation {normalize!r}; choose none or l1")
    return normalize


def build_masks(
    scores: Mapping[str, torch.Tensor],
    layers: Sequence[UnitLayer],
    ratio: float,
    scope: str = "global",
    normalize: str | None = None,
    meta: Mapping | None = None,
) -> MaskSet:
    """Mask the lowest-scored ``ratio`` of units.

    ``scope="global"`` ranks all units of all layers together; ``"layer"`` prunes ``ratio`` of each
    layer. ``normalize="l1"`` divides each layer's scores by their L1 sum before a global ranking
    (Yeom et al. 2021), so wide or strongly-activated layers do not dominate. A layer always keeps at
    least one unit (heads: one head); when that blocks the global quota, the next-lowest units
    elsewhere are taken instead, so the pruned count matches ``round(ratio * units)`` whenever possible.
    """
    ratio = check_ratio(ratio)
    if scope not in SCOPES:
        raise ConfigError(f"unknown pruning scope {scope!r}; choose global or layer")
    normalize = normalize_option(normalize)
    if not layers:
        raise ConfigError("no unit layers to mask")
    per_layer: list[torch.Tensor] = []
    for layer in layers:
        s = scores.get(layer.name)
        if s is None:
            raise ConfigError(f"no scores for layer {layer.name}")
        s = torch.as_tensor(s).detach().double().cpu().reshape(-1)
        if s.shape != (layer.size,):
            raise ConfigError(f"scores for {layer.name} have {s.numel()} entries, the layer has {layer.size} units")
        if not torch.isfinite(s).all():
            raise ConfigError(f"scores for {layer.name} are not all finite")
        if normalize == "l1":
            total = s.abs().sum()
            s = s / total if total > 0 else s
        per_layer.append(s)

    keep = {layer.name: torch.ones(layer.size, dtype=torch.bool) for layer in layers}
    if scope == "layer":
        for layer, s in zip(layers, per_layer, strict=True):
            n = min(int(round(ratio * layer.size)), layer.size - 1)
            if n > 0:
                keep[layer.name][torch.argsort(s, stable=True)[:n]] = False
    else:
        total = sum(layer.size for layer in layers)
        quota = int(round(ratio * total))
        flat = torch.cat(per_layer)
        owner = torch.cat([torch.full((ly.size,), i, dtype=torch.long) for i, ly in enumerate(layers)])
        offset = torch.cat([torch.arange(ly.size) for ly in layers])
        left = [ly.size for ly in layers]
        pruned = 0
        # stable: equal scores are taken in layer order, then unit order (reproducible)
        for j in torch.argsort(flat, stable=True).tolist():
            if pruned >= quota:
                break
            i = int(owner[j])
            if left[i] <= 1:
                continue
            keep[layers[i].name][int(offset[j])] = False
            left[i] -= 1
            pruned += 1

    info = {"ratio": ratio, "scope": scope, "normalize": normalize or "none", **dict(meta or {})}
    masks = MaskSet(keep=keep, layers=list(layers), meta=info)
    masks.meta["units_pruned"] = masks.units_pruned
    masks.meta["units_total"] = masks.units_total
    masks.meta["effective_ratio"] = masks.pruned_ratio()
    return masks


# ---- applying --------------------------------------------------------------------------------
def conv_followers(model: nn.Module, layers: Sequence[UnitLayer], example_input: torch.Tensor | None = None) -> dict[str, str]:
    """``{conv layer name: name of the BatchNorm fed by its output}`` for the conv unit layers."""
    return norm_followers(model, [ly.name for ly in layers if ly.kind == "conv"], example_input)


def _unit_slices(model: nn.Module, layer: UnitLayer, followers: Mapping[str, str]):
    """(tensor, index along dim 0) pairs holding each unit's parameters, per unit index function."""
    module = get_module(model, layer.name)
    if layer.kind in ("conv", "mlp"):
        tensors = [module.weight] + ([module.bias] if module.bias is not None else [])
        bn = followers.get(layer.name)
        if bn is not None:
            norm = get_module(model, bn)
            tensors += [t for t in (norm.weight, norm.bias) if t is not None]
        return lambda u: [(t, slice(u, u + 1)) for t in tensors]
    # head: q, k, v row blocks of the fused qkv projection
    qkv = module.qkv
    dim = qkv.out_features // 3
    w = layer.width
    tensors = [qkv.weight] + ([qkv.bias] if qkv.bias is not None else [])
    return lambda u: [(t, slice(part * dim + u * w, part * dim + (u + 1) * w)) for t in tensors for part in range(3)]


def apply_masks(
    model: nn.Module, masks: MaskSet, *, inplace: bool = False, example_input: torch.Tensor | None = None
) -> nn.Module:
    """A copy of ``model`` (or ``model`` itself with ``inplace``) in which every masked unit emits exactly 0."""
    masks.check(model)
    target = model if inplace else copy.deepcopy(model)
    followers = conv_followers(target, masks.layers, example_input)
    with torch.no_grad():
        for layer in masks.layers:
            dropped = torch.nonzero(~masks.keep[layer.name]).flatten().tolist()
            if not dropped:
                continue
            slices = _unit_slices(target, layer, followers)
            for u in dropped:
                for tensor, sl in slices(u):
                    tensor[sl] = 0
    return target


def mask_report(model: nn.Module, masks: MaskSet, example_input: torch.Tensor | None = None) -> dict:
    """Units pruned and parameters zeroed (absolute and % of the model), overall, per kind and per layer."""
    masks.check(model)
    followers = conv_followers(model, masks.layers, example_input)
    params_total = sum(p.numel() for p in model.parameters())
    per_layer, per_kind = {}, {}
    zeroed_total = 0
    for layer in masks.layers:
        slices = _unit_slices(model, layer, followers)
        per_unit = sum(t[sl].numel() for t, sl in slices(0))
        pruned = int((~masks.keep[layer.name]).sum())
        zeroed = pruned * per_unit
        zeroed_total += zeroed
        per_layer[layer.name] = {"kind": layer.kind, "units": layer.size, "pruned": pruned, "params_zeroed": zeroed}
        k = per_kind.setdefault(layer.kind, {"units": 0, "pruned": 0})
        k["units"] += layer.size
        k["pruned"] += pruned
    for k in per_kind.values():
        k["pruned_pct"] = 100.0 * k["pruned"] / max(1, k["units"])
    return {
        "units_total": masks.units_total,
        "units_pruned": masks.units_pruned,
        "units_pruned_pct": 100.0 * masks.pruned_ratio(),
        "params_total": params_total,
        "params_zeroed": zeroed_total,
        "params_zeroed_pct": 100.0 * zeroed_total / max(1, params_total),
        "per_kind": per_kind,
        "per_layer": per_layer,
    }
