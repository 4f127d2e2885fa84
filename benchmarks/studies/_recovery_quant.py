"""What pruning adds on top of INT8: runtime columns for the dense model and the val-chosen recovered one.

    doc_quant = quant_for_run(run, headline, threads=1, repeats=100, log=print)

For one dataset x model of the recovery study, :mod:`._recovery_runtimes` measures, in ONNX Runtime and
OpenVINO, FP32 and INT8 (ORT static QDQ, NNCF), batch-1 latency and test accuracy of

* the dense model alone ("quantization only"), and
* the recovered model that ``speedup_lossless`` chose **on val** (nothing here is chosen on test),

all timed interleaved against the same dense sessions. The recovered weights are the study's cached
recovery (``cache_dir()/recovered/<key>``); the result is cached per (dense checkpoint, chosen
recovery, threads, repeats) under the study's cache, so a ``--cached-only`` assembly reuses it.

``--runtimes-per-cell`` (:func:`quant_cells_for_run`) measures the same columns for *every* recovered (KD)
cell, each against the dense model's sessions and cached per cell, so the report
(``_recovery_quant_cells``) shows, per criterion x MACs target, what pruning adds on top of INT8.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
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


def dense_reference(run: dict, threads: int, log: Callable[[str], None] | None = None):
    """The run's dense model exported, opened and scored on its test split (``DenseReference``), calibrated on
    CALIB_SIZE train images as ``medprune export`` picks them. Use as a context manager."""
    from export.exporter import load_images
    from toolchain.prune_eval import load_context

    from ._recovery_runtimes import DenseReference

    ctx = load_context(run["checkpoint"])
    arrays = load_images(ctx.meta, calib_size=CALIB_SIZE, eval_size=0)
    return DenseReference(ctx.model, tuple(arrays["calib"].shape[1:]), arrays["calib"], arrays["eval_x"],
                          arrays["eval_y"], threads=threads, class_names=list(ctx.ds.class_names), log=log)


def _measure(run, chosen, weights, threads, repeats, log) -> dict[str, Any]:
    from toolchain.models import load_checkpoint

    out: dict[str, Any] = {"chosen_model": None, "chosen": None}
    with dense_reference(run, threads, log) as ref:
        log(f"{run['dataset']}/{run['model']}: quantization only (dense)")
        out["dense"] = ref.columns(ref.dense, repeats=repeats)
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


# ---- every criterion x MACs target (``--runtimes-per-cell``) ---------------------------------------------
CELLS_VERSION = 1  # bump when what a per-cell measurement holds changes (the loop below, not the runtimes code)
CELLS_STATE = "kd"  # the recovered (distilled, unaligned) model: the cell's cached checkpoint as it is


def quant_cells_for_run(run: dict, *, cache_root: Path, threads: int = 1, repeats: int = 100,
                        log: Callable[[str], None] | None = None, measure: bool = True) -> dict[str, Any]:
    """Runtime columns (``DenseReference.columns``: ORT/OpenVINO FP32 and INT8) of every recovered cell of ``run``.

    Each cell is cached on its own (dense sha256, cell, recovered weights, threads, repeats, calibration,
    code version), so an interrupted run resumes and ``measure=False`` (``--runtimes-per-cell cached``)
    reports only what is cached. The dense model is exported once, and only when a cell is to be measured.
    Returns ``{"cells": {"crit/target": record}, "missing": {"crit/target": why}, "summary": ..., ...}``.
    """
    return measure_cells(run, lambda: dense_reference(run, threads, log), cache_root=cache_root, threads=threads,
                         repeats=repeats, log=log, measure=measure)


def measure_cells(run: dict, open_reference: Callable[[], Any], *, cache_root: Path, threads: int = 1,
                  repeats: int = 100, log: Callable[[str], None] | None = None, measure: bool = True,
                  load_model: Callable[[dict], Any] | None = None) -> dict[str, Any]:
    """:func:`quant_cells_for_run` with the dense reference's opener and the cell's model loader given
    (``load_model(cell) -> module | None``; default: the cell's cached recovered checkpoint)."""
    from toolchain.atomic import atomic_file
    from toolchain.errors import ConfigError

    from ._recovery_quant_cells import summary
    from ._recovery_quant_record import setup, slim

    if int(threads) < 1 or int(repeats) < 2:
        raise ConfigError(f"threads must be >= 1 and repeats >= 2, got {threads} and {repeats}")
    if not isinstance(run.get("cells"), dict) or not run.get("checkpoint_sha256"):
        raise ConfigError("a recovery run needs its cells and the dense checkpoint's sha256")
    say, load = log or (lambda _m: None), load_model or _load_recovered
    name = f"{run.get('dataset')}/{run.get('model')}"
    kd = {k: c for k, c in run["cells"].items() if f"{CELLS_STATE}/val" in (c.get("probs") or {})}
    out: dict[str, Any] = {"state": CELLS_STATE, "threads": int(threads), "repeats": int(repeats),
                           "n_calib": CALIB_SIZE, "cells": {}, "missing": {}}
    # the cache files keep every measured field; the report keeps each cell slim (``_recovery_quant_record``)
    measured, pending = [], []
    for key, cell in kd.items():
        path = _cell_path(run, key, cell, Path(cache_root), int(threads), int(repeats))
        if path.is_file():
            measured.append(json.loads(path.read_text()))
            out["cells"][key] = slim({**measured[-1], "cached": True})
        else:
            pending.append((key, cell, path))
    say(f"{name}: INT8 per cell: {len(out['cells'])} of {len(kd)} recovered cells cached, {len(pending)} to measure"
        + ("" if measure else " (not measured: cached only)"))
    with contextlib.ExitStack() as stack:
        ref = None
        for i, (key, cell, path) in enumerate(pending, 1):
            model = load(cell) if measure else None
            if model is None:
                out["missing"][key] = "no recovered checkpoint in the cache" if measure else "not cached"
                continue
            if ref is None:  # the dense exports: minutes, so only when a cell needs them
                t0 = time.perf_counter()
                ref = stack.enter_context(open_reference())
                say(f"{name}: dense reference exported and scored in {time.perf_counter() - t0:.0f}s")
            t0 = time.perf_counter()
            record = {"criterion": cell.get("criterion"), "target": cell.get("target_macs_div"),
                      "macs_ratio": (cell.get("macs") or {}).get("ratio"), "speedup_ort_study": cell.get("speedup_ort"),
                      "recovery_key": (cell.get("recovery") or {}).get("key"), "state": CELLS_STATE,
                      "runtime": ref.columns(model.eval(), repeats=int(repeats)),
                      "seconds": round(time.perf_counter() - t0, 1)}
            with atomic_file(path, "w") as fh:  # whole or not at all: an interrupted run resumes from here
                json.dump(record, fh, default=str)
            measured.append(record)
            out["cells"][key] = slim({**record, "cached": False})
            cols = record["runtime"]["columns"]
            said = ", ".join(f"{c} ×{cols[c]['speedup']['vs_dense_same_runtime']:.2f}" for c in ("ort_int8", "ov_int8")
                             if "speedup" in cols.get(c, {}))
            say(f"{name} · {key}: INT8 cell {i}/{len(pending)} measured in {record['seconds']:.0f}s "
                f"(vs the dense model in the same runtime/precision: {said or 'no INT8 column'})")
    out["setup"] = setup(measured)  # what every cell shares (versions, input shape, column labels, ...)
    out["summary"] = summary(out)
    return out


def _load_recovered(cell: dict):
    from toolchain.models import load_checkpoint

    from .recovery_grid import recovered_checkpoint

    weights = recovered_checkpoint(cell)
    return load_checkpoint(weights)[0] if weights is not None else None


@functools.cache
def _code_version() -> str:
    """The code that decides a cell's numbers: the runtime columns and the project's export/quantization."""
    import export.exporter
    import export.openvino
    import export.quantize
    from toolchain.pipeline import code_version

    from . import _recovery_runtimes

    return code_version(_recovery_runtimes, export.exporter, export.quantize, export.openvino, follow_imports=False)


def _cell_path(run: dict, key: str, cell: dict, root: Path, threads: int, repeats: int) -> Path:
    from toolchain.pipeline import digest

    digest_ = digest({"v": CELLS_VERSION, "ckpt": run["checkpoint_sha256"], "cell": key, "state": CELLS_STATE,
                      "recovered": (cell.get("recovery") or {}).get("key"), "threads": threads, "repeats": repeats,
                      "calib": CALIB_SIZE, "code": _code_version()})
    safe = key.replace("/", "-")
    return root / f"quantcell-{run.get('dataset')}-{run.get('model')}-{safe}-{digest_[:12]}.json"
