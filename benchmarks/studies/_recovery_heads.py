"""Which units the recovery study's ViT cells removed: attention heads vs MLP units, per cell.

A cell records only the total of removed units (``units.removed``: heads and MLP units together), so the split
is read from checkpoint manifests (the ``.json`` sidecar beside each ``.safetensors``: tensor shapes and meta;
the weights are not read): the dense checkpoint gives each block's width (``attn.proj`` input = heads x head
width, ``mlp.fc1`` rows = MLP units), the cell's recovered checkpoint (same architecture as the pruned model)
gives what is left and, in ``meta.pruning.module_attrs``, each attention module's heads and width. The sum of
both kinds is checked against the cell's removal report.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HEADS, MLP = "attn.proj.weight", "mlp.fc1.weight"  # timm ViT: heads at proj's input, MLP units at fc1's output


def _widths(tensors: dict[str, dict], suffix: str, axis: int) -> dict[str, int]:
    """``{module prefix: shape[axis]}`` of the tensors named ``<prefix>.<suffix>``."""
    return {name[: -len(suffix) - 1]: int(t["shape"][axis]) for name, t in tensors.items() if name.endswith(suffix)}


def head_width(attrs: dict[str, dict]) -> int | None:
    """The channels per head recorded by the removal (``attn_dim / num_heads``, one value for every module);
    None when no module records heads."""
    widths = {a["attn_dim"] // a["num_heads"] for a in attrs.values() if a.get("num_heads")}
    if len(widths) > 1 or any(a["attn_dim"] % a["num_heads"] for a in attrs.values() if a.get("num_heads")):
        raise ValueError(f"attention modules record different head widths: {sorted(widths)}")
    return widths.pop() if widths else None


def unit_kinds(dense: dict[str, Any], pruned: dict[str, Any]) -> dict[str, int] | None:
    """Heads and MLP units of the dense model and how many the pruned one lost, from two sidecars
    (``{"tensors": ..., "meta": ...}``); None for a model without attention heads or a pruned checkpoint that
    records no head width."""
    dense_heads, dense_mlp = _widths(dense["tensors"], HEADS, 1), _widths(dense["tensors"], MLP, 0)
    if not dense_heads:
        return None
    attrs = ((pruned.get("meta") or {}).get("pruning") or {}).get("module_attrs") or {}
    width = head_width(attrs)
    if width is None:
        return None
    kept_heads = {m: w // width for m, w in _widths(pruned["tensors"], HEADS, 1).items()}
    kept_mlp = _widths(pruned["tensors"], MLP, 0)
    extra = sorted((set(kept_heads) - set(dense_heads)) | (set(kept_mlp) - set(dense_mlp)))
    if extra:
        raise ValueError(f"the pruned checkpoint has modules the dense one lacks: {', '.join(extra)}")
    # a module missing from the pruned checkpoint lost all its units
    heads = sum(w // width - kept_heads.get(m, 0) for m, w in dense_heads.items())
    mlp = sum(w - kept_mlp.get(m, 0) for m, w in dense_mlp.items())
    return {"heads_total": sum(w // width for w in dense_heads.values()), "heads_pruned": heads,
            "mlp_total": sum(dense_mlp.values()), "mlp_pruned": mlp, "head_width": width}


def _sidecar(weights: str | Path) -> dict[str, Any] | None:
    from toolchain.models.checkpoint import sidecar_path

    side = sidecar_path(Path(weights))
    return json.loads(side.read_text()) if side.is_file() else None


def table(run: dict) -> list[dict[str, Any]]:
    """One entry per cell of a model with attention heads: heads and MLP units pruned (``unit_kinds``), or why
    not known. Empty for models without heads (or without a dense sidecar to tell)."""
    from ._recovery_revisit import recovered_checkpoint

    dense = _sidecar(run["checkpoint"])
    if dense is None or not _widths(dense["tensors"], HEADS, 1):
        return []
    out = []
    for cell in sorted(run["cells"].values(), key=lambda c: (c["target_macs_div"], c["criterion"])):
        entry: dict[str, Any] = {"criterion": cell["criterion"], "target_macs_div": cell["target_macs_div"]}
        weights = recovered_checkpoint(cell)
        pruned = _sidecar(weights) if weights else None
        try:
            kinds = unit_kinds(dense, pruned) if pruned else None
        except ValueError as exc:  # one odd checkpoint is reported in its line, not a failed assembly
            kinds, entry["missing"] = None, str(exc)
        if kinds is None:
            entry.setdefault("missing", "no recovered checkpoint in the cache" if pruned is None
                             else "its checkpoint records no head width")
        else:
            removed = (cell.get("units") or {}).get("removed")
            entry.update(kinds, removal_report_units=removed,
                         matches_removal=None if removed is None else removed == kinds["heads_pruned"] + kinds["mlp_pruned"])
        out.append(entry)
    return out


def markdown(entries: list[dict]) -> list[str]:
    if not entries:
        return []
    lines = ["", "Heads vs MLP units removed per cell (from the dense and the recovered checkpoint's manifests; "
             "the same structure in every recovery state; check = heads + MLP units equal the cell's removal report):", ""]
    for e in entries:
        head = f"- {e['criterion']} ÷{e['target_macs_div']:g}: "
        if "missing" in e:
            lines.append(head + f"not known ({e['missing']})")
            continue
        check = {True: "check ok", False: "check FAILS", None: "no removal report to check"}[e["matches_removal"]]
        lines.append(head + f"heads pruned {e['heads_pruned']} / {e['heads_total']}, MLP units pruned "
                     f"{e['mlp_pruned']} / {e['mlp_total']} ({check})")
    return lines
