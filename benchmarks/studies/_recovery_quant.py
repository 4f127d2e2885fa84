"""What pruning adds on top of INT8: runtime columns for the dense model and the val-chosen recovered one.

    doc_quant = quant_for_run(run, headline, threads=1, repeats=100, log=print)

For one dataset x model of the recovery study, :mod:`._recovery_runtimes` measures, in ONNX Runtime and
OpenVINO, FP32 and INT8 (ORT static QDQ, NNCF), batch-1 latency and test accuracy of

* the dense model alone ("quantization only"), and
* the recovered model that ``speedup_lossless`` chose **on val** (nothing here is chosen on test),

all timed interleaved against the same dense sessions. The recovered weights are the study's cached
recovery (``cache_dir()/recovered/<key>``); the result is cached per (dense checkpoint, chosen
recovery, threads, repeats) under the study's cache, so a ``--cached-only`` assembly reuses it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

CALIB_SIZE = 256  # as medprune export / deploy calibrate


def recovered_weights(run: dict, chosen: dict) -> Path | None:
    """The recovered checkpoint of the val-chosen cell, or None when it is not in the cache."""
    from .recovery_grid import recovered_checkpoint

    return recovered_checkpoint(run["cells"].get(f"{chosen['criterion']}/{chosen['target']:g}") or {})


def quant_for_run(run: dict, headline: dict, *, cache_root: Path, threads: int = 1, repeats: int = 100,
                  log: Callable[[str], None] | None = None, cached_only: bool = False) -> dict[str, Any] | None:
    """``{"dense": columns, "chosen": columns | None, ...}`` (see :func:`runtime_columns`), cached."""
    from toolchain.pipeline import digest

    chosen = headline.get("speedup_lossless")
    weights = recovered_weights(run, chosen) if chosen else None
    offset = (run["cells"].get(f"{chosen['criterion']}/{chosen['target']:g}") or {}).get("alignment", {}).get(
        "offset") if chosen and chosen.get("state") == "kda" else None
    key = digest({"v": 1, "ckpt": run["checkpoint_sha256"], "chosen": str(weights), "threads": threads,
                  "repeats": repeats, **({"offset": offset} if offset else {})})
    path = Path(cache_root) / f"quant-{run['dataset']}-{run['model']}-{key[:12]}.json"
    if path.is_file():
        return json.loads(path.read_text())
    if cached_only:
        return None
    out = _measure(run, chosen, weights, threads, repeats, log or (lambda _m: None))
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(out, default=str))
    tmp.replace(path)
    return out


def _measure(run, chosen, weights, threads, repeats, log) -> dict[str, Any]:
    from export.exporter import load_images
    from toolchain.models import load_checkpoint
    from toolchain.prune_eval import load_context

    from ._recovery_runtimes import DenseReference

    ctx = load_context(run["checkpoint"])
    arrays = load_images(ctx.meta, calib_size=CALIB_SIZE, eval_size=0)
    shape = tuple(arrays["calib"].shape[1:])
    out: dict[str, Any] = {"chosen_model": None, "chosen": None}
    with DenseReference(ctx.model, shape, arrays["calib"], arrays["eval_x"], arrays["eval_y"], threads=threads,
                        class_names=list(ctx.ds.class_names), log=log) as ref:
        log(f"{run['dataset']}/{run['model']}: quantization only (dense)")
        out["dense"] = ref.columns(ctx.model, repeats=repeats)
        if weights is not None:
            model, _ = load_checkpoint(weights)
            if chosen.get("state") == "kda":  # the aligned model: the val-fitted offset folded into the bias
                from toolchain.recovery import fold_logit_offset

                cell = run["cells"][f"{chosen['criterion']}/{chosen['target']:g}"]
                model = fold_logit_offset(model, cell["alignment"]["offset"])
            log(f"{run['dataset']}/{run['model']}: pruned + recovered ({chosen['criterion']}, ÷{chosen['target']:g})")
            out["chosen"] = ref.columns(model.eval(), repeats=repeats)
            out["chosen_model"] = {"criterion": chosen["criterion"], "target": chosen["target"],
                                   "checkpoint": str(weights)}
    return out


def markdown(quant: dict | None) -> list[str]:
    """Table rows: each model x runtime x precision, speedup vs dense ORT FP32 and test accuracy."""
    if not quant:
        return []
    lines = ["INT8 on top of pruning (ORT static QDQ, OpenVINO NNCF; batch 1, 1 thread, all sessions timed "
             "interleaved; test accuracy exact 95 % interval; drops vs the dense PyTorch FP32 model, paired "
             "bootstrap):", "",
             "| model | runtime / precision | latency ms | speedup vs dense ORT FP32 | speedup vs dense same "
             "runtime | test acc [95 % CI] (n) | acc drop pts [95 % CI] | worst sens. drop pts [95 % CI] |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    c = quant.get("chosen_model")
    named = [("dense (quantization only)", quant.get("dense"))]
    if quant.get("chosen"):
        named.append((f"pruned + KD ({c['criterion']}, MACs ÷{c['target']:g})", quant["chosen"]))
    for label, cols in named:
        for col, v in (cols or {}).get("columns", {}).items():
            if "error" in v:  # a runtime that could not take this model: said, not hidden
                lines.append(f"| {label} | {col} | not measured: {v['error'][:120]} | | | | | |")
                continue
            t, d = v["test"], v["vs_dense_fp32"]
            ci, a, w = t.get("accuracy_ci") or [0, 0], d["accuracy_drop_ci_pts"], d["worst_sensitivity_drop_ci_pts"]
            lines.append(f"| {label} | {col} | {v['latency_ms']['median_ms']:.2f} | "
                         f"{v['speedup']['vs_dense_ort_fp32']:.2f} | {v['speedup']['vs_dense_same_runtime']:.2f} | "
                         f"{t['accuracy']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] ({t['n']}) | "
                         f"{d['accuracy_drop_pts']:.1f} [{a[0]:.1f}, {a[1]:.1f}] | "
                         f"{d['worst_sensitivity_drop_pts']:.1f} [{w[0]:.1f}, {w[1]:.1f}] ({d['worst_class']}) |")
    return lines + [""]
