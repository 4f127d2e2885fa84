"""Ranking vs operating point of recovered models: why a model that passes on val can fail on test.

For the recovered rows that pass the point rule on val (the near-lossless ones), this section puts side
by side, for val and for test: the dense and the recovered model's ROC AUC (ranking; 95 % interval,
class-stratified bootstrap, ``toolchain.metrics``), the mean predicted probability of each class
(where the operating point sits) and each class's sensitivity drop with its paired 95 % interval
(``toolchain.lossless.drops``). Equal AUCs with a shifted mean probability say the student ranks images
as the teacher does and only its threshold moved; test is read here as a report, never to choose.
:func:`val_resolution` says how finely deploy's rule can resolve a class's sensitivity on val.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _figures(y, dense, probs, names, md: dict, d: dict | None = None) -> dict[str, Any]:
    """``md``: the dense model's metrics on this split (the same for every row, so computed once by the caller);
    ``d``: the row's per-class drops when the report already has them (val: the rule's own bootstrap)."""
    from toolchain.lossless import drops
    from toolchain.metrics import compute_metrics

    y, dense, probs = np.asarray(y), np.asarray(dense, np.float64), np.asarray(probs, np.float64)
    mp = compute_metrics(y, probs, names)
    d = d if d is not None else drops(y, dense, probs, names)
    return {"n": int(len(y)), "auc_dense": md.get("auc"), "auc_dense_ci": md.get("auc_ci"),
            "auc": mp.get("auc"), "auc_ci": mp.get("auc_ci"),
            "mean_prob_dense": dense.mean(0).tolist(), "mean_prob": probs.mean(0).tolist(),
            "sensitivity_drop_pts": d["sensitivity_drop_pts"], "sensitivity_drop_ci_pts": d["sensitivity_drop_ci_pts"]}


def table(run: dict, rows: list[dict]) -> list[dict[str, Any]]:
    """One entry per recovered row passing the point rule on val (``rows`` from the report, with ``_key``)."""
    from toolchain.metrics import compute_metrics

    names = list(run["class_names"])
    picked = [r for r in rows if r["recovered"] and r["val"]["passes_point"]]
    if not picked:
        return []
    splits = ("val", "test")
    dense = {s: compute_metrics(np.asarray(run["labels"][s]), np.asarray(run["dense"][s], np.float64), names)
             for s in splits}  # the dense model's AUC (with its bootstrap interval) once per split, not per row
    out = []
    for r in picked:
        probs = run["cells"][r["_key"]]["probs"]
        # val's per-class drops are those deploy's rule bootstrapped for the row (same seed and replicates)
        known = {"val": r["val"], "test": None}
        out.append({"criterion": r["criterion"], "target_macs_div": r["target_macs_div"], "state": r["state"],
                    **{s: _figures(run["labels"][s], run["dense"][s], probs[f"{r['state']}/{s}"], names, dense[s],
                                   known[s]) for s in splits}})
    return out


def _auc(f: dict, key: str) -> str:
    v, ci = f.get(key), f.get(f"{key}_ci")
    return "n/a" if v is None else f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{v:.3f}"


def _sens(f: dict) -> str:
    return "; ".join(f"{c} {v:+.1f} [{f['sensitivity_drop_ci_pts'][c][0]:+.1f}, {f['sensitivity_drop_ci_pts'][c][1]:+.1f}]"
                     for c, v in f["sensitivity_drop_pts"].items())


def _mean(f: dict) -> str:
    return " / ".join(f"{a:.2f}→{b:.2f}" for a, b in zip(f["mean_prob_dense"], f["mean_prob"], strict=True))


def markdown(entries: list[dict], labels: dict[str, str], class_names: list[str]) -> list[str]:
    if not entries:
        return []
    lines = ["Ranking vs operating point (recovered rows that pass the point rule on val; AUC 95 % class-stratified "
             "bootstrap, sensitivity drops dense − recovered with paired 95 % intervals, points; mean predicted "
             f"probability per class ({' / '.join(class_names)}) dense→recovered; n per split in brackets):", "",
             "| criterion | MACs ÷ | recovery | split (n) | AUC dense | AUC recovered | mean P dense→recovered | "
             "sensitivity drop per class |", "|---|---:|---|---|---:|---:|---|---|"]
    for e in entries:
        for split in ("val", "test"):
            f = e[split]
            lines.append(f"| {e['criterion']} | {e['target_macs_div']:g} | {labels.get(e['state'], e['state'])} | "
                         f"{split} ({f['n']}) | {_auc(f, 'auc_dense')} | {_auc(f, 'auc')} | {_mean(f)} | {_sens(f)} |")
    return lines + [""]


def val_resolution(y, names) -> dict[str, float]:
    """Per class: the upper 95 % bound of its sensitivity drop when a model loses exactly one of its val images
    and changes nothing else: below that, deploy's rule cannot tell a lossless model from one lost image."""
    from toolchain.lossless import drops

    y = np.asarray(y)
    dense = np.eye(len(names))[y]
    out = {}
    for c, name in enumerate(names):
        idx = np.flatnonzero(y == c)
        if len(idx):
            lost = dense.copy()
            lost[idx[0]] = np.roll(lost[idx[0]], 1)
            out[name] = drops(y, dense, lost, names)["sensitivity_drop_ci_pts"][name][1]
    return out
