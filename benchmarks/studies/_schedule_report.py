"""Report of the recovery-schedule study: the pre-registered rules, per-cell figures, verdicts, Markdown, plot.

Every figure is computed as the recovery study computes it (``_recovery_report.state_figures``: val drops
with deploy's bound rule, test accuracy and drops with 95 % intervals and n); comparisons between two
recoveries of a cell (longer vs 2 epochs, iterative vs one-shot) are paired bootstrap intervals of the
test accuracy difference over the same test images (``toolchain.metrics.paired_bootstrap_diff``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ._recovery_report import GATE_ACC, GATE_SENS, N_BOOT, _ci, state_figures

# Written and committed before any longer or iterative cell was computed (the .md carries it verbatim).
PREREGISTERED = [
    "**Pre-registered (committed before the run; test read once per model, after the run):**",
    "",
    "- *Cells.* PneumoniaMNIST, the recovery study's dense checkpoints, reference images and KD recipe (KL on "
    "T=4 logits, weight 1, no cross-entropy, the dense model's lr, cosine schedule, best val epoch kept, early "
    "stopping after 2 epochs without val balanced-accuracy gain). One-shot: VGG19 MACs ÷5 (lrp, taylor, "
    "tp-taylor) and ResNet50 ÷3 (lrp, tp-taylor), the same pruned model recovered for 6 epochs instead of 2. "
    "Iterative: VGG19 ÷5 lrp, 3 geometric MACs steps (÷5^(1/3), ÷5^(2/3), ÷5), each rescored with LRP on the "
    "current model, 2 epochs each (6 in all, as the longer one-shot).",
    "- *Q1 rule (longer recovery).* A cell passes when deploy's bound rule passes on val (`toolchain.lossless`: "
    "upper 95 % bounds of the accuracy drop <= 1 pt and of every class's sensitivity drop <= 2 pts). It holds "
    "on test when its test point accuracy drop <= 1 pt and worst class sensitivity drop <= 2 pts (the recovery "
    "study's check). **Adopt** the 6-epoch recipe for deploy / the recovery study iff at least one of the five "
    "cells passes on val after 6 epochs and holds on test; otherwise do not adopt, and report the val drops "
    "(point and upper bound) at 2 and 6 epochs.",
    "- *Q2 rule (iterative).* Iterative beats one-shot when the paired 95 % interval of the test accuracy "
    "difference (iterative − one-shot 6 epochs, same test images) lies above 0 and its val rule verdict is "
    "not worse; loses when the interval lies below 0; otherwise tie. The 2-epoch one-shot is shown for "
    "reference only.",
    "",
]


def _row(run: dict, cell: dict, label: str) -> dict[str, Any]:
    probs = {s: cell["probs"][f"kd/{s}"] for s in ("val", "test")}
    rec = (cell.get("recovery") or {}).get("summary") or {}
    if "trail" in cell:  # iterative: the epochs every step ran (each keeps its best val epoch)
        steps = [((s.get("recovery") or {}).get("summary") or {}) for s in cell["trail"]]
        rec = {k: "+".join(str(s.get(k)) for s in steps) for k in ("epochs_run", "best_epoch")}
    return {"label": label, "criterion": cell["criterion"], "target_macs_div": cell["target_macs_div"],
            "ratio": cell.get("ratio"), "macs_ratio": cell["macs"]["ratio"], "speedup_ort": cell["speedup_ort"],
            "load_avg_1min": cell.get("load_avg_1min"),
            "epochs_run": rec.get("epochs_run"), "best_epoch": rec.get("best_epoch"),
            **state_figures(run, probs)}


def _holds(test: dict) -> bool:
    return bool(test["accuracy_drop_pts"]["value"] <= GATE_ACC + 1e-9
                and test["worst_sensitivity_drop_pts"]["value"] <= GATE_SENS + 1e-9)


def paired(y, pa, pb) -> dict[str, Any]:
    """Test accuracy difference a − b (points) with its paired 95 % interval, n and the win/tie/lose reading."""
    from toolchain.metrics import paired_bootstrap_diff

    d = paired_bootstrap_diff(np.asarray(y), np.asarray(pa), np.asarray(pb), "accuracy", n_boot=N_BOOT)
    lo, hi = 100.0 * d["ci"][0], 100.0 * d["ci"][1]
    return {"diff_pts": 100.0 * d["diff"], "ci_pts": [lo, hi], "n": d["n"],
            "reading": "above" if lo > 0 else "below" if hi < 0 else "overlaps 0"}


def build(oneshot: list[dict], iterative: list[dict], args: dict, command: str, started: str) -> dict[str, Any]:
    from benchmarks.harness import machine_info

    cells, by_key = [], {}
    for group in oneshot:
        short, long = group["short"], group["long"]
        y = long["labels"]["test"]
        for key, cl in long["cells"].items():
            cs = short["cells"].get(key)
            rows = [_row(long, cl, f"one-shot {args['long_epochs']} ep")]
            if cs is not None:
                rows.insert(0, _row(short, cs, "one-shot 2 ep"))
            entry = {"dataset": long["dataset"], "model": group["model"], "criterion": cl["criterion"],
                     "target_macs_div": group["target"], "rows": rows,
                     "same_pruned_model": cs is not None and cs["ratio"] == cl["ratio"]
                     and cs["macs"]["pruned"] == cl["macs"]["pruned"],
                     "long_vs_short": paired(y, cl["probs"]["kd/test"], cs["probs"]["kd/test"]) if cs else None}
            entry["passes_val_long"] = rows[-1]["val"]["passes_bound"]
            entry["holds_test_long"] = _holds(rows[-1]["test"])
            cells.append(entry)
            by_key[(group["model"], group["target"], cl["criterion"])] = (long, cl, entry)
    iters = []
    for it in iterative:
        run, long_cell, entry = by_key.get((it["model"], it["target"], it["criterion"]), (None, None, None))
        if run is None:
            continue  # no one-shot baseline to compare with
        row = _row(run, it["cell"], f"iterative {it['cell']['steps']}x{it['cell']['epochs_per_step']} ep")
        cmp_ = paired(run["labels"]["test"], it["cell"]["probs"]["kd/test"], long_cell["probs"]["kd/test"])
        not_worse = row["val"]["passes_bound"] or not entry["passes_val_long"]
        verdict = "win" if cmp_["reading"] == "above" and not_worse else "lose" if cmp_["reading"] == "below" else "tie"
        iters.append({"model": it["model"], "criterion": it["criterion"], "target_macs_div": it["target"],
                      "row": row, "vs_oneshot_long": cmp_, "verdict": verdict, "trail": it["cell"]["trail"]})
    adopt = any(c["passes_val_long"] and c["holds_test_long"] for c in cells)
    return {"command": command, "started": started, "args": args, "machine": machine_info(),
            "preregistered": PREREGISTERED, "oneshot": cells, "iterative": iters,
            "decision": {"adopt_longer_recipe": adopt, "cells": len(cells),
                         "pass_val_long": sum(c["passes_val_long"] for c in cells),
                         "pass_val_short": sum(c["rows"][0]["val"]["passes_bound"] for c in cells if len(c["rows"]) > 1),
                         "hold_test_long": sum(c["passes_val_long"] and c["holds_test_long"] for c in cells)}}


def _row_md(e: dict, r: dict) -> str:
    v, t = r["val"], r["test"]
    return (f"| {e['model']} | {r['criterion']} | ÷{e['target_macs_div']:g} | {r['label']} | {r['epochs_run']}/"
            f"{r['best_epoch']} | {r['macs_ratio']:.2f} | ×{r['speedup_ort']:.2f} | {v['accuracy_drop_pts']:.2f} "
            f"[{v['accuracy_drop_ci_pts'][0]:.2f}, {v['accuracy_drop_ci_pts'][1]:.2f}] | "
            f"{v['worst_sensitivity_drop_pts']:.2f} (≤{v['worst_sensitivity_drop_upper_pts']:.2f}) | "
            f"{'pass' if v['passes_bound'] else 'fail'} | {t['accuracy']:.4f} [{t['accuracy_ci'][0]:.4f}, "
            f"{t['accuracy_ci'][1]:.4f}] (n {t['n']}) | {_ci(t['accuracy_drop_pts'], 2)} | "
            f"{_ci(t['worst_sensitivity_drop_pts'], 2)} | {'yes' if _holds(t) else 'no'} |")


def _cmp_md(c: dict | None) -> str:
    return "n/a" if c is None else f"{c['diff_pts']:+.2f} [{c['ci_pts'][0]:+.2f}, {c['ci_pts'][1]:+.2f}] (n {c['n']})"


def markdown(doc: dict) -> str:
    a, dec = doc["args"], doc["decision"]
    lines = ["# Recovery schedule: longer and iterative recovery vs the recovery study's 2 epochs", "",
             f"Command: `{doc['command']}` (started {doc['started']}; recipe read from `{a['baseline']}`)", "",
             *(["Assembled with `--cached-only` from the cells a run of the same command without that flag computed "
                "(each cell is cached when it finishes).", ""] if a.get("cached_only") else []),
             *PREREGISTERED, "## Results", "",
             "Val: drops dense − recovered in points, paired class-stratified 95 % bootstrap (deploy's bound rule); "
             "worst sensitivity drop point (upper bound). Test: accuracy with its 95 % interval and n; accuracy drop "
             "and worst class sensitivity drop with paired 95 % intervals. Epochs: run/best (early stopping on val).",
             "", "| model | criterion | MACs target | recovery | epochs | MACs ÷ | ORT | val acc drop | val worst sens "
             "drop | val rule | test accuracy | test acc drop | test worst sens drop | holds on test |",
             "|---|---|---|---|---|---:|---:|---|---|---|---|---|---|---|"]
    for e in doc["oneshot"]:
        lines += [_row_md(e, r) for r in e["rows"]]
    for it in doc["iterative"]:
        lines.append(_row_md(it, it["row"]))
    lines += ["", "Longer vs 2-epoch recovery of the same pruned model (test accuracy difference, points, paired 95 %):",
              ""]
    lines += [f"- {e['model']} {e['criterion']} ÷{e['target_macs_div']:g}: {_cmp_md(e['long_vs_short'])}"
              + ("" if e["same_pruned_model"] else " (pruned models differ: not paired on the same student)")
              for e in doc["oneshot"]]
    twice = [e for e in doc["oneshot"] if e["same_pruned_model"]]
    lines += ["", "Measurement noise: the longer cells search and time the same pruned model again, so each is timed "
              "twice (ORT batch-1 speedup, 2-epoch cell's timing / 6-epoch cell's, 1-min load average in brackets): "
              + "; ".join(f"{e['model']} {e['criterion']} ×{e['rows'][0]['speedup_ort']:.2f} "
                          f"({e['rows'][0]['load_avg_1min'] or float('nan'):.1f}) / ×{e['rows'][-1]['speedup_ort']:.2f} "
                          f"({e['rows'][-1]['load_avg_1min'] or float('nan'):.1f})" for e in twice) + "."] if twice else []
    lines += ["", "Iterative vs one-shot at the same total epochs (test accuracy difference, points, paired 95 %):", ""]
    lines += [f"- {it['model']} {it['criterion']} ÷{it['target_macs_div']:g}: {_cmp_md(it['vs_oneshot_long'])} → "
              f"**{it['verdict']}**; steps: " + ", ".join(
                  f"÷{s['cost']['ratio']:.2f} val acc {s['val']['accuracy']:.4f}" for s in it["trail"])
              for it in doc["iterative"]] or ["- not computed"]
    failing = [(e, r) for e, r in [(e, e["rows"][-1]) for e in doc["oneshot"]] + [(i, i["row"]) for i in doc["iterative"]]
               if not r["val"]["passes_bound"]]
    lines += ["", "Why deploy's val rule fails (longer and iterative recoveries; upper 95 % bounds):", ""]
    lines += [f"- {e['model']} {r['criterion']} {r['label']}: " + "; ".join(r["val"]["failed"]) for e, r in failing]
    lines += ["", "## Decision (pre-registered rule)", "",
              f"{dec['pass_val_long']}/{dec['cells']} cells pass deploy's val rule after {a['long_epochs']} epochs "
              f"({dec['pass_val_short']} after 2); {dec['hold_test_long']} of them hold on test. "
              + ("**Adopt** the longer recipe." if dec["adopt_longer_recipe"] else
                 "**Do not adopt** the longer recipe: no cell passes on val and holds on test."), ""]
    return "\n".join(lines)


def _interval(f: dict, split: str, what: str) -> tuple[float, list[float]]:
    """(point, [low, high]) of a row's drop; val's worst sensitivity drop has its point and the largest
    per-class upper bound (what deploy's rule reads), so its bar runs from the point to that bound."""
    if split == "test":
        return f[what]["value"], f[what]["ci"]
    if what == "accuracy_drop_pts":
        return f[what], f["accuracy_drop_ci_pts"]
    return f[what], [f[what], f["worst_sensitivity_drop_upper_pts"]]


def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ._pairs import save_png

    rows = [(e, r) for e in doc["oneshot"] for r in e["rows"]] + [(it, it["row"]) for it in doc["iterative"]]
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), sharex=True)
    for (i, what, gate), (j, split) in ((a, b) for a in ((0, "accuracy_drop_pts", GATE_ACC),
                                                         (1, "worst_sensitivity_drop_pts", GATE_SENS))
                                        for b in ((0, "val"), (1, "test"))):
        ax = axes[i][j]
        for k, (_, r) in enumerate(rows):
            v, ci = _interval(r[split], split, what)
            ax.errorbar(k, v, yerr=[[v - ci[0]], [ci[1] - v]], fmt="o", capsize=3,
                        color="C1" if "iterative" in r["label"] else "C0" if "2 ep" in r["label"] else "C2")
        ax.axhline(gate, ls="--", color="grey")
        ax.set_ylabel(f"{split} {what[:-4].replace('_', ' ')}, pts")
        ax.set_xticks(range(len(rows)), [f"{e['model']} {r['criterion']}\n{r['label']}" for e, r in rows],
                      rotation=70, fontsize=6)
    axes[0][0].set_title("val (bars: 95 % CI; worst sensitivity: point to the rule's upper bound)", fontsize=8)
    axes[0][1].set_title("test (bars: paired 95 % CI)", fontsize=8)
    save_png(fig, path)


def findings(doc: dict) -> list[str]:
    """The pre-registered decision and the iterative verdicts, one line each (printed and stored)."""
    dec = doc["decision"]
    return [f"longer recovery: {dec['pass_val_long']}/{dec['cells']} cells pass deploy's val rule "
            f"({dec['pass_val_short']} at 2 epochs), {dec['hold_test_long']} hold on test; adopt: "
            f"{dec['adopt_longer_recipe']}"] + [
        f"iterative {it['model']} {it['criterion']} ÷{it['target_macs_div']:g} vs one-shot: {it['verdict']} "
        f"({_cmp_md(it['vs_oneshot_long'])})" for it in doc["iterative"]]


def write(doc: dict, out: Path) -> None:
    from ._pairs import publish

    publish(out, "recovery_schedule", doc, findings, markdown, plot)
