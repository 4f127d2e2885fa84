"""Report of the recovery study: intervals, val-chosen headline, verdicts, Markdown and the Pareto plot.

Every accuracy-like figure carries a 95 % interval: test accuracy (class-stratified percentile
bootstrap, ``compute_metrics``), its drop vs the dense model and the worst per-class sensitivity drop
(paired bootstrap over the same test images, ``toolchain.metrics``), and criterion-vs-criterion
accuracy differences at the same MACs target (paired). A verdict is *win*/*lose* when the paired
interval excludes 0, else *tie*.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import numpy as np

ATTRIBUTION = ("lrp", "dlb", "ig", "taylor")  # medprune's criteria (taylor: medprune's activation x grad)
GATE_ACC, GATE_SENS = 1.0, 2.0  # points, on val (the lossless rule)
N_BOOT = 1000
TARGETS = {"vgg19": 5, "resnet50": 3, "vit_b16": 2}  # issue 15's speedup_lossless targets (PneumoniaMNIST)


def _sens(y: np.ndarray, p: np.ndarray, c: int, w: np.ndarray) -> np.ndarray:
    hit = (p.argmax(1) == c) & (y == c)
    return (w * hit).sum(1) / np.maximum((w * (y == c)).sum(1), 1e-12)


def drops(y, dense, pruned, n_boot: int = N_BOOT) -> dict[str, Any]:
    """Accuracy drop and worst per-class sensitivity drop (points, dense - pruned), paired 95 % CIs."""
    from toolchain.intervals import bootstrap_replicates, percentile_interval

    y, a, b = np.asarray(y), np.asarray(dense), np.asarray(pruned)
    classes = np.unique(y)

    def acc(w):
        return (w * ((a.argmax(1) == y).astype(float) - (b.argmax(1) == y))).sum(1) / w.sum(1) * 100

    def worst(w):
        return np.max([(_sens(y, a, c, w) - _sens(y, b, c, w)) * 100 for c in classes], axis=0)

    one = np.ones((1, len(y)))
    out = {}
    for name, fn in (("accuracy_drop_pts", acc), ("worst_sensitivity_drop_pts", worst)):
        ci = percentile_interval(bootstrap_replicates(y, fn, n_boot, seed=0))
        out[name] = {"value": float(fn(one)[0]), "ci": list(ci) if ci else None}
    out["n"] = int(len(y))
    return out


def accuracy_summary(y, p, names) -> dict:
    """Accuracy and balanced accuracy with their 95 % intervals, and n (also the runtime columns' summary)."""
    from toolchain.metrics import compute_metrics

    m = compute_metrics(np.asarray(y), np.asarray(p), names)
    return {k: m.get(k) for k in ("accuracy", "accuracy_ci", "balanced_accuracy", "balanced_accuracy_ci", "n")}


def summarise_run(run: dict) -> dict[str, Any]:
    y = {s: run["labels"][s] for s in ("val", "test")}
    names = run["class_names"]
    rows = []
    for key, cell in run["cells"].items():
        for state in ("none", "kd"):
            if f"{state}/val" not in cell["probs"]:
                continue
            val = drops(y["val"], run["dense"]["val"], cell["probs"][f"{state}/val"], n_boot=200)
            rows.append({
                "criterion": cell["criterion"], "target_macs_div": cell["target_macs_div"], "recovered": state == "kd",
                "ratio": cell["ratio"], "macs_ratio": cell["macs"]["ratio"], "params_ratio":
                    cell["params"]["dense"] / cell["params"]["pruned"], "macs": cell["macs"]["pruned"],
                "params": cell["params"]["pruned"], "speedup_ort": cell["speedup_ort"],
                "latency_ms": {k: cell["latency_ms"][k]["median_ms"] for k in ("dense", "pruned")},
                "val": {"accuracy_drop_pts": val["accuracy_drop_pts"]["value"],
                        "worst_sensitivity_drop_pts": val["worst_sensitivity_drop_pts"]["value"],
                        **accuracy_summary(y["val"], cell["probs"][f"{state}/val"], names)},
                "test": {**accuracy_summary(y["test"], cell["probs"][f"{state}/test"], names),
                         **drops(y["test"], run["dense"]["test"], cell["probs"][f"{state}/test"])},
                "recovery": cell.get("recovery", {}).get("summary") if state == "kd" else None,
                "_key": key,
            })
    for r in rows:
        r["val"]["passes_gates"] = bool(r["val"]["accuracy_drop_pts"] <= GATE_ACC + 1e-9
                                        and r["val"]["worst_sensitivity_drop_pts"] <= GATE_SENS + 1e-9)
    return {"rows": rows, "headline": headline(rows), "verdicts": verdicts(run, rows)}


def headline(rows: list[dict]) -> dict[str, Any]:
    """speedup_lossless and best_criterion, both chosen on val; test read for the chosen model only."""
    kd = [r for r in rows if r["recovered"]] or rows
    passing = [r for r in kd if r["val"]["passes_gates"]]
    chosen = max(passing, key=lambda r: (r["macs_ratio"], r["val"]["balanced_accuracy"] or 0)) if passing else None
    by_crit: dict[str, list[float]] = {}
    for r in kd:
        by_crit.setdefault(r["criterion"], []).append(r["val"]["balanced_accuracy"] or 0.0)
    best = max(by_crit, key=lambda c: float(np.mean(by_crit[c]))) if by_crit else None
    out = {"best_criterion": best, "best_criterion_rule": "highest mean val balanced accuracy over recovered cells",
           "val_mean_balanced_accuracy": {c: float(np.mean(v)) for c, v in by_crit.items()}}
    if chosen:
        t = chosen["test"]
        out["speedup_lossless"] = {
            "speedup_ort": chosen["speedup_ort"], "macs_ratio": chosen["macs_ratio"], "criterion": chosen["criterion"],
            "target": chosen["target_macs_div"], "test_accuracy_drop_pts": t["accuracy_drop_pts"],
            "test_worst_sensitivity_drop_pts": t["worst_sensitivity_drop_pts"],
            "holds_on_test": bool(t["accuracy_drop_pts"]["value"] <= GATE_ACC
                                  and t["worst_sensitivity_drop_pts"]["value"] <= GATE_SENS)}
    else:
        out["speedup_lossless"] = None
    return out


def verdicts(run: dict, rows: list[dict]) -> list[dict]:
    """Each medprune criterion vs each Torch-Pruning peer/random at the same target and state (test)."""
    from toolchain.metrics import paired_bootstrap_diff

    y = np.asarray(run["labels"]["test"])
    out = []
    index = {(r["criterion"], r["target_macs_div"], r["recovered"]): r for r in rows}
    crits = sorted({r["criterion"] for r in rows})
    for (crit, target, rec), r in sorted(index.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][0])):
        if crit not in ATTRIBUTION:
            continue
        for peer in crits:
            if peer in ATTRIBUTION or (peer, target, rec) not in index:
                continue
            state = "kd" if rec else "none"
            pa = np.asarray(run["cells"][r["_key"]]["probs"][f"{state}/test"])
            pb = np.asarray(run["cells"][index[(peer, target, rec)]["_key"]]["probs"][f"{state}/test"])
            d = paired_bootstrap_diff(y, pa, pb, "accuracy", n_boot=N_BOOT)
            lo, hi = d["ci"]
            out.append({"criterion": crit, "peer": peer, "target_macs_div": target, "recovered": rec,
                        "macs_ratio": [r["macs_ratio"], index[(peer, target, rec)]["macs_ratio"]],
                        "diff_pts": 100 * d["diff"], "ci_pts": [100 * lo, 100 * hi], "n": d["n"],
                        "verdict": "win" if lo > 0 else "lose" if hi < 0 else "tie"})
    return out


def build(runs: list[dict], args: dict, command: str, started: str) -> dict[str, Any]:
    from benchmarks.harness import machine_info

    models = {}
    for run in runs:
        s = summarise_run(run)
        for r in s["rows"]:
            r.pop("_key", None)
        # "dataset:model": one section per dense checkpoint (headline paths split on "/")
        models[f"{run['dataset']}:{run['model']}"] = {
            "model": run["model"], "checkpoint": run["checkpoint"], "checkpoint_sha256": run["checkpoint_sha256"],
            "train_command": run["train_command"], "dataset": run["dataset"],
            "dataset_fingerprint": run["dataset_fingerprint"], **s}
    return {"command": command, "started": started, "args": args, "machine": machine_info(),
            "host": platform.node(), "gates": {"accuracy_drop_pts": GATE_ACC, "worst_sensitivity_drop_pts": GATE_SENS,
                                               "split": "val"}, "models": models}


def _ci(d: dict, nd: int = 1) -> str:
    ci = d.get("ci")
    return f"{d['value']:.{nd}f} [{ci[0]:.{nd}f}, {ci[1]:.{nd}f}]" if ci else f"{d['value']:.{nd}f}"


def _budget_text(args: dict, model: str) -> str:
    """What this run spent on recovery, from its own arguments (never a fixed sentence)."""
    subsets = args.get("recover_subset") or {}
    subset = subsets.get(model, subsets.get("*", 0)) if isinstance(subsets, dict) else 0
    epochs = args.get("recover_epochs")
    where = f"a {subset}-image train subset" if subset else "the full train split"
    return (f"Budget of this run: at most {epochs} distillation epoch(s) on {where} (best val epoch kept), "
            "MACs targets tried only as listed.")


def _target_line(model: str, rows: list[dict], sl: dict | None, budget: str = "") -> str:
    """The issue's target against what was reached, and what limits it (accuracy or latency vs MACs)."""
    target = TARGETS.get(model)
    kd = [r for r in rows if r["recovered"]] or rows
    if not kd:
        return ""
    fastest = max(kd, key=lambda r: r["speedup_ort"])
    per_mac = float(np.median([r["speedup_ort"] / r["macs_ratio"] for r in kd]))
    reached = sl["speedup_ort"] if sl else 1.0
    # the figure is judged once on test: a val-chosen model that fails on test does not count
    held = bool(sl and sl["holds_on_test"])
    verdict = ("reached" if target and held and reached >= target
               else "NOT reached" + ("" if held or not sl else " (the val-chosen model fails the gates on test)"))
    why = []
    if not any(r["val"]["passes_gates"] for r in kd if r["macs_ratio"] >= (target or 0)):
        why.append("accuracy: no recovered model at that MACs reduction passes the val gates")
    if per_mac < 0.9:
        why.append(f"latency does not follow MACs (median measured speedup per MACs reduction {per_mac:.2f})")
    return (f"Target (issue 15): speedup_lossless >= {target}x — {verdict} (x{reached:.2f}). Fastest recovered "
            f"model measured: x{fastest['speedup_ort']:.2f} at MACs ÷{fastest['macs_ratio']:.2f} ({fastest['criterion']},"
            f" val gates {'pass' if fastest['val']['passes_gates'] else 'fail'}). "
            + (f"Limits: {'; '.join(why)}." if why and verdict != "reached" else "")
            + ("" if held or not sl else " Limits: accuracy on test (worst per-class sensitivity).")
            + (" " + budget if budget else ""))


def markdown(doc: dict) -> str:
    lines = ["# Recovery study: criteria at equal MACs, with and without distillation recovery", "",
             f"Command: `{doc['command']}`  ", f"Started: {doc['started']} on {doc['host']}  ",
             "Gates (chosen on val): accuracy drop <= 1 pt, worst per-class sensitivity drop <= 2 pts. "
             "Test figures: 95 % intervals (accuracy: class-stratified bootstrap; drops: paired bootstrap vs dense "
             "over the same test images). Speedup: ONNX Runtime CPU batch 1, dense and pruned timed interleaved in "
             f"one process ({doc['args'].get('threads')} intra-op thread(s)), on a shared 2-core machine.", ""]
    a = doc["args"]
    if a.get("recover_epochs"):
        from toolchain.recovery import RecoveryConfig

        lines += [f"Recovery recipe (every criterion alike): up to {a['recover_epochs']} epoch(s), loss "
                  f"{a.get('kd_weight', 1.0):g} x KD (T = {RecoveryConfig().temperature:g}) + {a.get('ce_weight', 1.0):g} x class-weighted CE, lr "
                  f"{a.get('recover_lr') or 'of the dense model'}, batches {'augmented' if a.get('recover_augment') else 'not augmented'}"
                  ", warm-up + cosine, best val-balanced-accuracy epoch kept.", ""]
    if doc["args"].get("cached_only"):
        lines += ["This document was assembled with `--cached-only` from cells computed by parallel runs of the same "
                  "command, one per model x criterion (and target), without that flag; cells listed as missing below "
                  "were not computed within the session's CPU time.", ""]
    for label, m in doc["models"].items():
        model = m.get("model", label)
        h = m["headline"]
        have = {(r["criterion"], r["target_macs_div"]) for r in m["rows"]}
        targets = (doc["args"].get("model_macs") or {}).get(model) or doc["args"].get("macs", [])
        missing = [f"{c} ÷{t:g}" for t in targets for c in doc["args"].get("criteria", []) if (c, t) not in have]
        lines += [f"## {model} ({m['dataset']})", "",
                  f"Dense checkpoint `{m['checkpoint']}` sha256 `{m['checkpoint_sha256'][:16]}…` "
                  f"(`{m['train_command']}`)", ""]
        sl = h["speedup_lossless"]
        if sl:
            lines.append(f"**speedup_lossless** (val-chosen, test-judged once): ×{sl['speedup_ort']:.2f} measured "
                         f"(MACs ÷{sl['macs_ratio']:.2f}, {sl['criterion']}); test accuracy drop "
                         f"{_ci(sl['test_accuracy_drop_pts'])} pts, worst sensitivity drop "
                         f"{_ci(sl['test_worst_sensitivity_drop_pts'])} pts; holds on test: {sl['holds_on_test']}")
        else:
            lines.append("**speedup_lossless**: no recovered model passed the gates on val")
        lines += ["", _target_line(model, m["rows"], sl, _budget_text(doc["args"], model))]
        if missing:
            lines += ["", f"Missing cells (not computed): {', '.join(missing)}"]
        if "quant" in m:
            from ._recovery_quant import markdown as quant_markdown

            lines += [""] + (quant_markdown(m["quant"]) or ["INT8 columns: not measured (no cached measurement)."])
        lines += ["", f"**best_criterion** (mean val balanced accuracy, recovered): {h['best_criterion']}", "",
                  "| criterion | MACs ÷ target | recovered | ratio | MACs ÷ | params ÷ | ORT speedup | val acc drop | "
                  "val pass | test acc [95 % CI] (n) | test acc drop pts | test worst sens. drop pts |",
                  "|---|---:|---|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
        for r in sorted(m["rows"], key=lambda r: (r["target_macs_div"], r["recovered"], r["criterion"])):
            t = r["test"]
            ci = t.get("accuracy_ci") or [float("nan")] * 2
            lines.append(f"| {r['criterion']} | {r['target_macs_div']:g} | {'KD' if r['recovered'] else 'no'} | "
                         f"{r['ratio']:.2f} | {r['macs_ratio']:.2f} | {r['params_ratio']:.2f} | "
                         f"{r['speedup_ort']:.2f} | {r['val']['accuracy_drop_pts']:.1f} | "
                         f"{'yes' if r['val']['passes_gates'] else 'no'} | {t['accuracy']:.3f} [{ci[0]:.3f}, "
                         f"{ci[1]:.3f}] ({t['n']}) | {_ci(t['accuracy_drop_pts'])} | "
                         f"{_ci(t['worst_sensitivity_drop_pts'])} |")
        lines += ["", "Verdicts (test accuracy difference, medprune criterion − peer, paired bootstrap, points):", "",
                  "| criterion | peer | MACs ÷ | recovered | diff [95 % CI] | verdict |", "|---|---|---:|---|---:|---|"]
        for v in m["verdicts"]:
            lines.append(f"| {v['criterion']} | {v['peer']} | {v['target_macs_div']:g} | "
                         f"{'KD' if v['recovered'] else 'no'} | {v['diff_pts']:+.1f} [{v['ci_pts'][0]:+.1f}, "
                         f"{v['ci_pts'][1]:+.1f}] (n={v['n']}) | {v['verdict']} |")
        tally: dict[str, int] = {}
        for v in m["verdicts"]:
            tally[v["verdict"]] = tally.get(v["verdict"], 0) + 1
        lines += ["", f"Tally: {', '.join(f'{k} {n}' for k, n in sorted(tally.items()))}", ""]
    return "\n".join(lines) + "\n"


def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(doc["models"])
    fig, axes = plt.subplots(2, len(models), figsize=(6 * len(models), 9), squeeze=False)
    for col, model in enumerate(models):
        rows = doc["models"][model]["rows"]
        crits = sorted({r["criterion"] for r in rows})
        colors = dict(zip(crits, plt.cm.tab10.colors, strict=False))
        dense = rows[0]["test"]["accuracy"] + rows[0]["test"]["accuracy_drop_pts"]["value"] / 100 if rows else None
        for ax, xkey, xlabel in ((axes[0][col], "speedup_ort", "measured ORT batch-1 speedup (dense/pruned)"),
                                 (axes[1][col], "macs_ratio", "MACs reduction (dense/pruned)")):
            for c in crits:
                for rec in (True, False):
                    pts = sorted((r[xkey], 100 * r["test"]["accuracy"]) for r in rows
                                 if r["criterion"] == c and r["recovered"] == rec)
                    if pts:
                        ax.plot(*zip(*pts, strict=True), color=colors[c], ls="-" if rec else ":",
                                marker="o" if rec else "x", label=f"{c} {'KD' if rec else 'no recovery'}")
            if dense is not None:
                ax.axhline(100 * dense, color="k", lw=0.8, label="dense")
            ax.set_title(f"{model}: test accuracy vs {'measured speedup' if xkey == 'speedup_ort' else 'MACs'}")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("test accuracy (%)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def write(doc: dict, runs: list[dict], out: Path) -> None:
    from toolchain.atomic import atomic_file, atomic_path

    out.mkdir(parents=True, exist_ok=True)
    with atomic_file(out / "recovery.json", "w") as fh:
        json.dump(doc, fh, indent=1, default=str)
    with atomic_file(out / "recovery.md", "w") as fh:
        fh.write(markdown(doc))
    with atomic_path(out / "recovery.png") as tmp:
        plot(doc, tmp)
