"""What the recovery report keeps of each per-cell INT8 measurement, and the file it is kept in.

    rec = slim(json.loads(cell_cache.read_text()))   # ~8 KB measured -> ~2 KB reported
    saved, int8 = split(doc, "recovery_int8.json")    # recovery.json keeps a pointer + the summary
    assert merge(saved, int8) == doc

The per-cell cache files (``_recovery_quant._cell_path``) keep everything ``DenseReference.columns`` measured
(per-class sensitivities, fidelity vs PyTorch, machine load, ...). The report keeps, per cell, what
recovery.md prints and what a reader needs to check it: latency medians and quantiles, speedups, test
accuracy with its interval and n, accuracy and worst-sensitivity drops with their intervals, the
runtime/precision labels and the cell/recovery keys. ``slim`` is a structural subset of the measured
record, so the same code (``_recovery_quant_cells``) renders either.

Numbers recovery.md prints are kept to the fewest significant digits (at least 4) that print the same in
the table's format; numbers it derives from (latency medians: speedups are their ratios) are kept as
measured; the rest are rounded to 4 significant digits. A pair's values shared by every cell (versions,
input shape, dense PyTorch accuracy, ...) are kept once per pair (:func:`setup`).

With ~27 cells for each of 7 pairs, the per-cell section would still push recovery.json past the 2 MiB
limit on tracked files, so :func:`split` moves it to its own results file and leaves each pair a pointer
with the cell counts and the summary (the headline figures).
"""

from __future__ import annotations

import json
from typing import Any

from ._recovery_quant_cells import INT8, PTS, RATIO

KEEP, ROUND, EXACT = "keep", ".4g", "exact"  # ROUND: 4 significant digits; a format string: print-identical

# the column's runtime/format/precision labels and the rounds timed are the pair's (SETUP, COLUMN_LABELS); the
# drops' n is the test n (paired over the same images)
_COLUMN = {"error": KEEP, "size_mb": ROUND, "latency_ms": {"median_ms": EXACT, "p90_ms": ROUND, "min_ms": ROUND},
           "dense_latency_ms": {"median_ms": EXACT}, "test": {"accuracy": ROUND, "accuracy_ci": ROUND, "n": KEEP}}
_DROPS = {"accuracy_drop_pts": ROUND, "accuracy_drop_ci_pts": ROUND, "worst_sensitivity_drop_pts": ROUND,
          "worst_sensitivity_drop_ci_pts": ROUND, "worst_class": KEEP}
# an INT8 column: recovery.md prints its accuracy drops vs both dense models and its worst drop vs dense FP32
_INT8_COLUMN = _COLUMN | {
    "speedup": {"vs_dense_ort_fp32": ROUND, "vs_dense_same_runtime": ROUND},
    "vs_dense_fp32": _DROPS | {k: PTS for k in ("accuracy_drop_pts", "accuracy_drop_ci_pts",
                                                "worst_sensitivity_drop_pts", "worst_sensitivity_drop_ci_pts")},
    "vs_dense_same_runtime": _DROPS | {"accuracy_drop_pts": PTS, "accuracy_drop_ci_pts": PTS},
    "vs_torch": {"top1_agreement": ROUND}}
# an FP32 column: recovery.md prints the ORT one's speedup; its drops are the study's rows' (the same model in
# FP32), so only the accuracy drop is kept, to show the export's fidelity
_FP32_COLUMN = _COLUMN | {"speedup": {"vs_dense_ort_fp32": ROUND, "vs_dense_same_runtime": RATIO},
                          "vs_dense_fp32": {"accuracy_drop_pts": ROUND, "accuracy_drop_ci_pts": ROUND}}
RECORD = {"criterion": KEEP, "target": KEEP, "macs_ratio": RATIO, "speedup_ort_study": ROUND, "recovery_key": KEEP,
          "state": KEEP, "cached": KEEP,
          "runtime": {"n_test": KEEP, "columns": {col: spec for q, (_, f) in INT8.items()
                                                  for col, spec in ((f, _FP32_COLUMN), (q, _INT8_COLUMN))}}}
# values of a cell's runtime block that are the pair's, not the cell's: kept once per pair
SETUP = ("reference", "threads", "repeats", "warmup", "batch", "input_shape", "n_calib", "class_names", "versions",
         "dense_torch_fp32")
COLUMN_LABELS = ("runtime", "format", "precision")  # per column, kept once per pair under setup["columns"]


def slim(record: dict) -> dict[str, Any]:
    """What the report keeps of one per-cell record (``measure_cells``'s, or a cache file's): see RECORD."""
    if not isinstance(record, dict) or not isinstance((record.get("runtime") or {}).get("columns"), dict):
        raise ValueError("a per-cell INT8 record needs runtime.columns")
    return _pick(record, RECORD)


def setup(records: list[dict]) -> dict[str, Any]:
    """The pair's measurement setup, from its cells' runtime blocks: per SETUP key the one value every cell
    shares, or ``{"differs": [values]}`` when cells were measured under different setups (e.g. versions)."""
    blocks = [r.get("runtime") or {} for r in records]
    out = {key: _shared([b[key] for b in blocks if key in b]) for key in SETUP}
    columns = {col: [{k: c[col][k] for k in COLUMN_LABELS if k in c[col]} for c in
                     (b.get("columns") or {} for b in blocks) if col in c] for col in RECORD["runtime"]["columns"]}
    out["columns"] = {col: _shared(labels) for col, labels in columns.items() if labels}
    return {k: v for k, v in out.items() if v is not None}


def _shared(values: list) -> Any:
    """The one value of ``values`` (None when empty), or ``{"differs": [distinct values]}``."""
    seen = list({json.dumps(v, sort_keys=True): v for v in values}.values())
    return (seen[0] if len(seen) == 1 else {"differs": seen}) if seen else None


def split(doc: dict, name: str) -> tuple[dict, dict | None]:
    """``(doc without the per-cell sections, their own document or None)``: each pair's ``quant_cells`` moves to
    the document saved as ``name``; the pair keeps ``quant_cells_ref`` (file, cell counts, summary)."""
    with_cells = [k for k, m in doc["models"].items() if "quant_cells" in m]
    if not with_cells:
        return doc, None
    models, moved = {}, {}
    for key, m in doc["models"].items():
        if key not in with_cells:
            models[key] = m
            continue
        qc = m["quant_cells"]
        models[key] = {k: v for k, v in m.items() if k != "quant_cells"} | {"quant_cells_ref": {
            "file": name, "cells": len(qc.get("cells") or {}), "missing": len(qc.get("missing") or {}),
            "summary": qc.get("summary")}}
        moved[key] = {"checkpoint_sha256": m.get("checkpoint_sha256"), "quant_cells": qc}
    int8 = {"command": doc.get("command"), "started": doc.get("started"), "host": doc.get("host"),
            "part_of": name.replace("_int8.json", ".json"), "models": moved}
    return {**doc, "models": models}, int8


def merge(saved: dict, int8: dict | None) -> dict:
    """The inverse of :func:`split`: the report document as rendered (e.g. to render recovery.md again)."""
    if int8 is None:
        return saved
    if int8.get("started") != saved.get("started") or int8.get("command") != saved.get("command"):
        raise ValueError("the INT8 file comes from another run of the study than the report it is merged into")
    moved = int8.get("models") or {}
    models = {key: ({k: v for k, v in m.items() if k != "quant_cells_ref"} | {"quant_cells": moved[key]["quant_cells"]}
                    if key in moved else m) for key, m in saved["models"].items()}
    return {**saved, "models": models}


def _pick(obj: Any, spec: Any) -> Any:
    if isinstance(spec, dict):
        return {k: _pick(obj[k], s) for k, s in spec.items() if isinstance(obj, dict) and k in obj}
    return obj if spec in (KEEP, EXACT) else _round(obj, spec)


def _round(value: Any, fmt: str) -> Any:
    """``value`` (or each item of a list) to 4 significant digits, or (``fmt`` of a table: ".1f") to the fewest
    significant digits, at least 4, that print the same in that format."""
    if isinstance(value, list):
        return [_round(v, fmt) for v in value]
    if not isinstance(value, float):
        return value
    if fmt == ROUND:
        return float(f"{value:.4g}")
    for digits in range(4, 18):
        short = float(f"{value:.{digits}g}")
        if format(short, fmt) == format(value, fmt):
            return short
    return value
