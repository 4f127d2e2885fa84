"""Revisiting cached cells of the recovery study: add the aligned state (``--align``) or time them again
(``--retime``) from their recovered checkpoints, without computing the cell anew."""

from __future__ import annotations

import os
import time
from pathlib import Path


def _probs(model, ctx, split: str):
    from toolchain.evaluate import predict

    probs, labels = predict(model, ctx.ds, split, ctx.preprocess, device=ctx.device)
    return probs.round(6).tolist(), labels.tolist()


def recovered_checkpoint(cell: dict) -> Path | None:
    """The cell's recovered (distilled, unaligned) checkpoint in the cache, or None."""
    from toolchain import settings

    key = (cell.get("recovery") or {}).get("key")
    weights = settings.cache_dir() / "recovered" / str(key)[:16] / "model.safetensors" if key else None
    return weights if weights is not None and weights.is_file() else None


def align_cell(ctx, cell: dict, model=None) -> bool:
    """Add the ``kda`` state: the recovered model with the val-fitted logit offset folded in
    (``toolchain.recovery.align``), its val/test probabilities and the fit's report. The offset is fitted
    on val only (K - 1 free numbers). False when the cell has no recovered checkpoint."""
    from toolchain.models import load_checkpoint
    from toolchain.recovery import align_to_teacher

    if model is None:
        weights = recovered_checkpoint(cell)
        if weights is None:
            return False
        model, _ = load_checkpoint(weights)
    aligned, report = align_to_teacher(model.eval(), ctx.model, ctx.ds, ctx.preprocess, device=ctx.device)
    for split in ("val", "test"):
        cell["probs"][f"kda/{split}"], _ = _probs(aligned, ctx, split)
    cell["alignment"] = report
    return True


def retime_cell(ctx, cell: dict, example, args) -> bool:
    """Measure the cell's ORT speedup again (``--retime``), from its recovered checkpoint (same
    architecture as the pruned model), when the first measurement ran on a loaded machine. The first
    measurement is kept as ``latency_first``. False when the cell has no recovered checkpoint."""
    from toolchain.budget import ort_latency_ms
    from toolchain.models import load_checkpoint

    weights = recovered_checkpoint(cell)
    if weights is None:
        return False
    model, _ = load_checkpoint(weights)
    load = os.getloadavg()[0]
    lat = ort_latency_ms({"dense": ctx.model, "pruned": model.eval()}, example, repeats=args.repeats,
                         threads=args.threads)
    cell["latency_first"] = {"latency_ms": cell["latency_ms"], "speedup": cell["speedup_ort"],
                             "load_avg_1min": cell.get("load_avg_1min")}
    cell["latency_ms"], cell["load_avg_1min"] = lat, load
    cell["speedup_ort"] = lat["dense"]["median_ms"] / lat["pruned"]["median_ms"]
    cell["retimed"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    return True
