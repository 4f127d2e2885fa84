"""INT8 per criterion x MACs target in the recovery report: what pruning adds on top of quantization.

    qc = quant_cells_for_run(run, cache_root=root)      # _recovery_quant: measured / cached per cell
    qc["summary"] == summary(qc)
    lines = markdown(qc)                                  # recovery.md, under the pair's section

Reads the per-cell runtime columns (``_recovery_runtimes``: each recovered model timed interleaved
against the dense model's sessions in every runtime x precision) and derives, per INT8 runtime:

* the pruned INT8 model's speedup over the dense model *in the same runtime and precision* (dense INT8):
  what pruning adds on top of that quantization;
* its speedup over the dense FP32 model of the same runtime: pruning and INT8 together;
* the dense model's INT8-only speedup (dense FP32 ÷ dense INT8, from the same interleaved rounds).

Speedups are ratios of median latencies (``latency_ms.median_ms``). Accuracy drops are the columns'
paired bootstrap intervals over the test images, against the dense PyTorch FP32 model and against the
dense INT8 model. Every recovered cell is shown: nothing here is chosen, so no split decides anything.
"""

from __future__ import annotations

import statistics
from typing import Any

# INT8 column -> (label, the FP32 column of the same runtime). One entry per runtime with an INT8 path.
INT8: dict[str, tuple[str, str]] = {"ort_int8": ("ORT", "ort_fp32"), "ov_int8": ("OpenVINO", "ov_fp32")}
# how the tables print drops (points) and ratios; ``_recovery_quant_record`` keeps the digits these need
PTS, RATIO = ".1f", ".2f"


def cell_speedups(record: dict) -> dict[str, dict[str, float]]:
    """Per INT8 column of one cell: ``vs_dense_int8``, ``vs_dense_fp32`` (same runtime) and ``dense_int8_only``.

    A column that could not be measured (export error) is left out.
    """
    cols = record["runtime"]["columns"]
    out = {}
    for col, (_, fp32) in INT8.items():
        q, f = cols.get(col) or {}, cols.get(fp32) or {}
        if "latency_ms" not in q or "latency_ms" not in f:
            continue
        mine, dense_q, dense_f = (q["latency_ms"]["median_ms"], q["dense_latency_ms"]["median_ms"],
                                  f["dense_latency_ms"]["median_ms"])
        out[col] = {"vs_dense_int8": dense_q / mine, "vs_dense_fp32": dense_f / mine, "dense_int8_only": dense_f / dense_q}
    return out


def summary(qc: dict) -> dict[str, Any]:
    """Per INT8 column: per MACs target, the median over criteria of pruned INT8 ÷ dense INT8 speedup (with
    its range and count), and the dense model's INT8-only speedup (median over the cells' timings)."""
    out: dict[str, Any] = {}
    records = list((qc.get("cells") or {}).values())
    for col in INT8:
        per = [(r["target"], cell_speedups(r).get(col)) for r in records]
        per = [(t, s) for t, s in per if s is not None]
        if not per:
            continue
        targets = sorted({t for t, _ in per})
        out[col] = {
            "by_target": {f"{t:g}": _spread([s["vs_dense_int8"] for u, s in per if u == t]) for t in targets},
            "dense_int8_only": _spread([s["dense_int8_only"] for _, s in per]),
        }
    return out


def _spread(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def sentence(qc: dict) -> str:
    """One sentence: at equal runtime precision, what pruning adds on top of INT8, beside dense INT8 alone."""
    s = qc.get("summary") or {}
    parts, alone = [], []
    for col, (label, _) in INT8.items():
        if col not in s:
            continue
        by = ", ".join(f"×{v['median']:.2f} at MACs ÷{t} ({v['n']} criteria, ×{v['min']:.2f}–{v['max']:.2f})"
                       for t, v in s[col]["by_target"].items())
        parts.append(f"{label} {by}")
        d = s[col]["dense_int8_only"]
        alone.append(f"{label} ×{d['median']:.2f} (range ×{d['min']:.2f}–{d['max']:.2f} over {d['n']} timings)")
    if not parts:
        return "INT8 per criterion: no recovered cell measured."
    return ("**What pruning adds on top of INT8** (median over criteria of pruned INT8 ÷ dense INT8 latency speedup, "
            f"same runtime and precision): {'; '.join(parts)}; beside it, dense INT8 alone vs dense FP32: "
            f"{'; '.join(alone)}.")


def _ci(d: dict, value: str, ci: str) -> str:
    lo, hi = d[ci]
    return f"{d[value]:{PTS}} [{lo:{PTS}}, {hi:{PTS}}]"


def _runtime_cells(record: dict, col: str, speed: dict | None) -> list[str]:
    """The table cells of one INT8 column: speedups vs dense INT8 and FP32, drops vs dense FP32 and INT8."""
    c = record["runtime"]["columns"].get(col) or {}
    if speed is None or "vs_dense_fp32" not in c:
        return [f"not measured: {str(c.get('error', 'no column'))[:80]}", "", "", "", ""]
    fp32, same = c["vs_dense_fp32"], c.get("vs_dense_same_runtime")
    return [f"{speed['vs_dense_int8']:.2f}", f"{speed['vs_dense_fp32']:.2f}",
            _ci(fp32, "accuracy_drop_pts", "accuracy_drop_ci_pts"),
            _ci(same, "accuracy_drop_pts", "accuracy_drop_ci_pts") if same else "",
            f"{_ci(fp32, 'worst_sensitivity_drop_pts', 'worst_sensitivity_drop_ci_pts')} ({fp32['worst_class']})"]


def markdown(qc: dict | None) -> list[str]:
    """The pair's per-cell INT8 section of recovery.md (heading, caption, sentence, table, what is missing)."""
    if not qc:
        return []
    cells = qc.get("cells") or {}
    if not cells:  # nothing measured for this pair: say so in one line instead of a caption with no table
        return [f"**INT8 per criterion and MACs target**: not measured for this pair ({len(qc.get('missing') or {})} "
                "recovered cells not cached; `--runtimes-per-cell` measures them).", ""]
    any_rt = next(iter(cells.values()), {}).get("runtime", {})
    lines = ["**INT8 per criterion and MACs target** (recovered models, KD): "
             f"ORT static QDQ and OpenVINO NNCF INT8, calibrated on {qc.get('n_calib')} train images; batch 1, "
             f"{qc.get('threads')} thread(s); each recovered model is timed interleaved against the dense model's "
             f"sessions in every runtime and precision ({qc.get('repeats')} rounds), speedups are ratios of median "
             "latencies. Drops: points, dense − model, with paired bootstrap 95 % intervals over the "
             f"n = {any_rt.get('n_test', '?')} test images, against the dense PyTorch FP32 model and against the "
             "dense model quantized the same way in the same runtime (dense INT8). Every cached recovered cell is "
             "shown; nothing is chosen here.", "", sentence(qc), ""]
    if cells:
        head = ["criterion", "MACs ÷ (target)", "ORT FP32 × vs dense FP32"]
        for label, _ in INT8.values():
            head += [f"{label} INT8 × vs dense INT8", f"{label} INT8 × vs dense FP32",
                     f"{label} INT8 acc drop vs dense FP32", f"{label} INT8 acc drop vs dense INT8",
                     f"{label} INT8 worst sens. drop vs dense FP32"]
        lines += ["| " + " | ".join(head) + " |", "|---|---:|" + "---:|" * (len(head) - 2)]
        for r in sorted(cells.values(), key=lambda r: (r["target"], r["criterion"])):
            speed = cell_speedups(r)
            f32 = r["runtime"]["columns"].get("ort_fp32") or {}
            row = [r["criterion"], f"{r['macs_ratio']:{RATIO}} ({r['target']:g})",
                   f"{f32['speedup']['vs_dense_same_runtime']:{RATIO}}" if "speedup" in f32 else "not measured"]
            for col in INT8:
                row += _runtime_cells(r, col, speed.get(col))
            lines.append("| " + " | ".join(row) + " |")
    missing = qc.get("missing") or {}
    if missing:
        lines += ["", "Not measured: " + ", ".join(f"{k} ({why})" for k, why in sorted(missing.items())) + "."]
    return lines + [""]


def overview(models: dict[str, dict]) -> list[str]:
    """The cross-pair table at the top of recovery.md's INT8 part: one row per dataset x model of the report,
    read from each pair's :func:`summary` (nothing recomputed); a pair without measured cells says so.
    Empty when no pair has the per-cell section (``--runtimes-per-cell`` not asked)."""
    if not any("quant_cells" in m for m in models.values()):
        return []
    labels = [label for label, _ in INT8.values()]
    head = (["dataset", "model", "cells measured"] + [f"{lb}: pruned INT8 × vs dense INT8, by MACs target" for lb in labels]
            + [f"{lb}: dense INT8 × vs dense FP32" for lb in labels])
    lines = ["## INT8 per recovered cell: all pairs", "",
             "What pruning adds on top of INT8, per dataset x model: the median over criteria of the recovered (KD) "
             "model's INT8 speedup over the dense model's INT8 in the same runtime, per MACs target (÷target ×median "
             "(number of criteria)); beside it, the dense model's INT8 speedup over its FP32 (median over the cells' "
             "interleaved timings). Batch 1, ratios of median latencies; each pair's section below has the table per "
             "criterion with accuracy drops and their 95 % intervals.", "",
             "| " + " | ".join(head) + " |", "|---|---|---:|" + "---|" * len(labels) + "---:|" * len(labels)]
    for m in models.values():
        qc = m.get("quant_cells") or {}
        n_cells, n_missing = len(qc.get("cells") or {}), len(qc.get("missing") or {})
        row = [str(m.get("dataset")), str(m.get("model"))]
        if not n_cells:
            why = f"{n_missing} recovered cells not cached" if "quant_cells" in m else "`--runtimes-per-cell` not run"
            lines.append("| " + " | ".join(row + [f"not measured ({why})"] + [""] * 2 * len(labels)) + " |")
            continue
        s = qc.get("summary") or {}
        by = [", ".join(f"÷{t} ×{v['median']:{RATIO}} ({v['n']})" for t, v in s[col]["by_target"].items())
              if col in s else "not measured" for col in INT8]
        alone = [f"×{s[col]['dense_int8_only']['median']:{RATIO}}" if col in s else "" for col in INT8]
        lines.append("| " + " | ".join(row + [f"{n_cells} of {n_cells + n_missing}"] + by + alone) + " |")
    return lines + [""]
