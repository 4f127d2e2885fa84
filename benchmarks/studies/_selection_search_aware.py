"""Post hoc: what the search-aware lossless rule would choose on val in the selection-split design (issue 15).

The pre-registered choice of a dataset x model (``recovery_selection``; pooled over both arms where the long arm
owns the headline, ``_selection_arms.pooled``) is the most compressed recovered model passing deploy's rule on val,
each candidate bounded at 95 %. Over a pool of k candidates that selects for lucky val draws: stop 18's
PneumoniaMNIST VGG19 choice, one of 49, passed on val and failed on test. This section judges the same pool by the
search-aware rule (``toolchain.lossless.SEARCH_AWARE_RULE``: every bound at 1 - 0.05/k, Bonferroni) and reports
the model it would choose, with its val bounds.

It reads val only: each candidate's recovered val probabilities come from the recovery study's cell cache and the
dense model's from its dense cache, and a cell is used only when its 95 % bounds reproduce the committed row's
exactly (else the pair is reported as undetermined). The chosen model's test figures are the committed report's row
for that cell (every recovered cell's test accuracy and drops are in the report), never a new reading; the section
says so (``POST_HOC``) and changes no headline key.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from toolchain.lossless import judge, rule_line, search_confidence, search_n_boot

from ._recovery_report import GATE_ACC, GATE_SENS, holds_on_test

POST_HOC = "post hoc, read after the test result of the pre-registered rule was known; changes no headline"
GATES = (GATE_ACC, GATE_SENS)  # points: deploy's --tolerance / --sens-tolerance, the report's gates


def pool(m: dict, design: dict | None = None) -> tuple[list[dict], dict | None]:
    """``(candidates, pre-registered choice)`` of one dataset x model section ``m``: the long arm's pooled rows at
    its counted levels when ``design`` (the pair's 2-epoch section) is given and a stage is complete, else the
    section's recovered rows of its headline state; the choice is the committed ``speedup_lossless`` of that pool."""
    from ._selection_arms import DESIGN, pooled_rows, state_rows

    state = m["headline"].get("state", "kd")
    arms = m.get("arms") or {}
    if design is not None and arms.get("levels"):
        return pooled_rows(design, m, state, arms["levels"]), arms.get("speedup_lossless")
    if design is not None:  # no complete long stage: the 2-epoch arm's choice stands
        return state_rows(design, state, DESIGN), design["headline"]["speedup_lossless"]
    return state_rows(m, state), m["headline"]["speedup_lossless"]


def choose(rows: list[dict], names: list[str], y: np.ndarray, dense: np.ndarray,
           val_probs: Callable[[dict], np.ndarray | None], tolerance: float = GATES[0],
           sens_tolerance: float = GATES[1]) -> dict[str, Any]:
    """The search-aware choice over ``rows`` (k = their number): the most compressed row whose val drops pass
    ``judge(k=k)``, ties as the pre-registered rule breaks them (higher val balanced accuracy, then the first).
    Rows are judged from the most compressed down, so only those down to the choice are read; a row whose val
    probabilities are missing, or do not reproduce its committed 95 % bounds, leaves the choice undetermined."""
    k = len(rows)
    order = sorted(range(k), key=lambda i: (-rows[i]["macs_ratio"], -(rows[i]["val"]["balanced_accuracy"] or 0), i))
    out: dict[str, Any] = {"k": k, "confidence": search_confidence(k), "n_boot": search_n_boot(k), "rule": rule_line(k),
                           "val_n": int(len(y)), "chosen": None, "skipped": [], "undetermined": None}
    for i in order:
        r = rows[i]
        p = val_probs(r)
        if p is None or not _reproduces(judge(y, dense, p, names, tolerance=tolerance, sens_tolerance=sens_tolerance),
                                        r["val"]):
            out["undetermined"] = (f"{_name(r)}: its cached val probabilities are "
                                   + ("missing" if p is None else "not the report's (its 95 % bounds differ)"))
            return out
        v = judge(y, dense, p, names, tolerance=tolerance, sens_tolerance=sens_tolerance, k=k)
        entry = {**_identity(r), "passes_95": bool(r["val"]["passes_bound"]), "val": _bounds(v)}
        if v["passes"]:
            out["chosen"] = {**entry, "test": _committed_test(r)}
            return out
        out["skipped"].append(entry)
    return out


def post_hoc(doc: dict, design_doc: dict | None = None, root: Path | None = None,
             gates: tuple[float, float] = GATES) -> dict[str, dict]:
    """Per dataset x model of a selection-split document (``design_doc``: the 2-epoch arm's, when ``doc`` is the
    long arm's): the pool, its k, the pre-registered choice and :func:`choose`'s (at ``gates``, points: accuracy,
    sensitivity), from the cell cache at ``root``."""
    root = root or _cache_root()
    out = {}
    for label, m in doc["models"].items():
        design = (design_doc or {}).get("models", {}).get(label) if design_doc is not None else None
        if design_doc is not None and design is None:
            continue
        rows, prereg = pool(m, design)
        if not rows:
            continue
        y, dense = _dense_val(root, m["checkpoint_sha256"], m["dataset_fingerprint"])
        if y is None:
            out[label] = {"k": len(rows), "undetermined": "the dense model's val probabilities are not cached"}
            continue
        got = choose(rows, list(m["class_names"]), y, dense,
                     lambda r, m=m: _cell_val(root, m["dataset"], m["model"], r), *gates)
        out[label] = {"checkpoint_sha256": m["checkpoint_sha256"], "pool": "pooled over both arms" if design else
                      "recovered rows", "pre_registered": _prereg(prereg), **got}
    return out


def markdown(records: dict[str, dict], title: str = "###") -> list[str]:
    """The section: the rule, then one row per dataset x model (its pool's k, both choices), then what was skipped."""
    if not records:
        return []
    lines = [f"{title} Search-aware rule on the same pools ({POST_HOC})", "",
             "Each pool's candidates judged on val with bounds simultaneous over the pool's k candidates (Bonferroni: "
             "every upper bound at 1 - 0.05/k from the same paired class-stratified bootstrap with k x 2000 "
             "replicates; gates 1 / 2 pts; `toolchain.lossless.SEARCH_AWARE_RULE`, deploy's `--search-aware`). "
             "Val probabilities from the cell cache, checked against the committed 95 % bounds. The chosen model's "
             "test figures are the committed report's row for that cell, not a new reading.", "",
             "| dataset · model | pool (k) | each bound at | pre-registered choice (95 % each) → test | "
             "search-aware choice: val upper bounds (accuracy / worst class, pts) | its test figures (committed "
             "row), n | holds on test |", "|---|---|---|---|---|---|---|"]
    notes = []
    for label, rec in records.items():
        name = label.replace(":", " · ")
        if rec.get("undetermined"):
            lines.append(f"| {name} | {rec['k']} | — | {_prereg_text(rec.get('pre_registered'))} | undetermined | — | — |")
            notes.append(f"- {name}: undetermined: {rec['undetermined']}.")
            continue
        c = rec["chosen"]
        at = f"{100 * rec['confidence']:.4g} %"
        if c is None:
            chosen, test, holds = "none passes: the dense model stays (×1.00)", "—", "—"
        else:
            t = c["test"]
            chosen = (f"{c['criterion']}{_arm(c)} MACs ÷{c['macs_ratio']:.2f} (×{c['speedup_ort']:.2f}): "
                      f"{c['val']['accuracy_upper_pts']:.2f} / {c['val']['worst_sensitivity_upper_pts']:.2f}")
            test = (f"accuracy drop {_ci(t['accuracy_drop_pts'])}, worst class {_ci(t['worst_sensitivity_drop_pts'])}"
                    f", n={t['n']}")
            holds = "yes" if t["holds_on_test"] else "no"
        lines.append(f"| {name} | {rec['pool']}, k = {rec['k']} (val n={rec['val_n']}) | {at} | "
                     f"{_prereg_text(rec['pre_registered'])} | {chosen} | {test} | {holds} |")
        if rec["skipped"]:
            notes.append(f"- {name}: more compressed candidates that fail the search-aware bounds ("
                         + "; ".join(f"{s['criterion']}{_arm(s)} ÷{s['macs_ratio']:.2f}: "
                                     f"{s['val']['accuracy_upper_pts']:.2f} / {s['val']['worst_sensitivity_upper_pts']:.2f}"
                                     f"{', passed at 95 %' if s['passes_95'] else ''}" for s in rec["skipped"]) + ").")
    return lines + ["", *notes, ""] if notes else lines + [""]


# ---- val inputs from the recovery study's caches (recovery_grid) --------------------------------------------------
def _cache_root() -> Path:
    from .recovery_grid import _cache_root as root

    return root()


def _dense_val(root: Path, sha256: str, fingerprint: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    from .recovery_grid import dense_probs_path

    path = dense_probs_path(root, sha256, fingerprint)
    if not path.is_file():
        return None, None
    d = json.loads(path.read_text())
    return np.asarray(d["labels"]["val"]), np.asarray(d["dense"]["val"], np.float64)


def _cell_val(root: Path, data: str, model: str, row: dict) -> np.ndarray | None:
    """The ``<state>/val`` probabilities of the cached cell behind ``row`` (same criterion, MACs target, measured
    speedup and pruned MACs); None when no cached cell matches."""
    state = row.get("state", "kd")
    for path in sorted(root.glob(f"{data}-{model}-{row['criterion']}-{float(row['target_macs_div']):g}-*.json")):
        cell = json.loads(path.read_text())
        if (cell.get("speedup_ort") == row["speedup_ort"] and cell.get("macs", {}).get("pruned") == row["macs"]
                and f"{state}/val" in cell.get("probs", {})):
            return np.asarray(cell["probs"][f"{state}/val"], np.float64)
    return None


# ---- small helpers ------------------------------------------------------------------------------------------------
def _reproduces(v: dict, committed: dict) -> bool:
    same = np.allclose(v["accuracy_drop_ci_pts"], committed["accuracy_drop_ci_pts"], rtol=0, atol=1e-9)
    cis = committed["sensitivity_drop_ci_pts"]
    return bool(same and set(cis) == set(v["sensitivity_drop_ci_pts"]) and all(
        np.allclose(v["sensitivity_drop_ci_pts"][c], cis[c], rtol=0, atol=1e-9) for c in cis))


def _bounds(v: dict) -> dict[str, Any]:
    upper = {c: ci[1] for c, ci in v["sensitivity_drop_ci_pts"].items()}
    return {"accuracy_drop_pts": v["accuracy_drop_pts"], "accuracy_drop_ci_pts": v["accuracy_drop_ci_pts"],
            "accuracy_upper_pts": v["accuracy_drop_ci_pts"][1], "sensitivity_drop_ci_pts": v["sensitivity_drop_ci_pts"],
            "worst_sensitivity_upper_pts": max(upper.values()) if upper else 0.0, "passes": v["passes"],
            "failed": v["failed"], "confidence": v["confidence"], "n_boot": v["n_boot"], "n": v["n"]}


def _identity(r: dict) -> dict[str, Any]:
    return {"criterion": r["criterion"], "arm": r.get("arm"), "target_macs_div": r["target_macs_div"],
            "macs_ratio": r["macs_ratio"], "speedup_ort": r["speedup_ort"]}


def _committed_test(r: dict) -> dict[str, Any]:
    t = r["test"]
    a, w = t["accuracy_drop_pts"], t["worst_sensitivity_drop_pts"]
    return {"accuracy_drop_pts": a, "worst_sensitivity_drop_pts": w, "n": t["n"], "source": "committed report row",
            "holds_on_test": holds_on_test(t)}


def _prereg(sl: dict | None) -> dict | None:
    if not sl:
        return None
    keys = ("criterion", "arm", "target", "macs_ratio", "speedup_ort", "holds_on_test", "test_accuracy_drop_pts",
            "test_worst_sensitivity_drop_pts")
    return {k: sl.get(k) for k in keys}


def _prereg_text(p: dict | None) -> str:
    if not p:
        return "none passes (×1.00)"
    return (f"{p['criterion']}{_arm(p)} ÷{p['macs_ratio']:.2f} (×{p['speedup_ort']:.2f}) → holds on test: "
            f"{'yes' if p['holds_on_test'] else 'no'}")


def _name(r: dict) -> str:
    return f"{r['criterion']}{_arm(r)} ÷{float(r['target_macs_div']):g}"


def _arm(r: dict) -> str:
    return f" ({r['arm']} arm)" if r.get("arm") else ""


def _ci(d: dict) -> str:
    return f"{d['value']:.2f} [{d['ci'][0]:.2f}, {d['ci'][1]:.2f}] pts"
