"""Report parts of the selection-split design (``recovery_selection``): what it changes, whether it is complete
enough to carry the headline, and the earlier study's figures beside it.

The rows, headline and verdicts are the recovery study's (``_recovery_report``); this module only adds the
design's own section (:func:`section`, per dataset x model), the Markdown preface that states it (:func:`preface`)
and the headline keys of the dataset x model pairs the pre-registered rule lets through (:func:`headline_entries`).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

NICE = {"pneumoniamnist": "PneumoniaMNIST"}


def split_text(split: dict[str, float]) -> str:
    """``{"val_from_train": 0.2}`` → words for the selection split (Markdown and headline labels)."""
    if "val_from_train" in split:
        return f"val = official val + a stratified {100 * split['val_from_train']:.0f} % of train, cut before training"
    return f"val = a stratified {100 * split['val_fraction']:.0f} % of train, cut before training"


def completeness(rows: list[dict], criteria: list[str], levels: list[float], state: str) -> dict[str, Any]:
    """Whether every criterion has a ``state`` row at each of ``levels`` (the headline's levels), and which miss."""
    have = {(r["criterion"], float(r["target_macs_div"])) for r in rows if r.get("state", "kd") == state}
    missing = [f"{c} ÷{t:g}" for t in levels for c in criteria if (c, float(t)) not in have]
    return {"levels": list(levels), "criteria": list(criteria), "complete": not missing, "missing": missing}


def _tally(verdicts: list[dict], state: str) -> dict[str, dict]:
    """Medprune criteria vs peers at equal MACs after recovery (``state``), on test: per group (attribution,
    medprune taylor) wins, ties, losses with the Holm correction and without (``_recovery_verdicts.tally``)."""
    from ._recovery_verdicts import tally

    return tally(verdicts, state)


def summary(m: dict) -> dict[str, Any]:
    """The comparable figures of one dataset x model section of a recovery document (this design or the earlier)."""
    h, state = m["headline"], m["headline"].get("state", "kd")
    mine = [r for r in m["rows"] if r.get("state", "kd") == state]
    return {"checkpoint_sha256": m["checkpoint_sha256"], "val_n": mine[0]["val"]["n"] if mine else None,
            "val_resolution": m.get("val_resolution"), "deploy_ships": h["deploy_ships"],
            "speedup_lossless": h["speedup_lossless"], "best_criterion": h["best_criterion"],
            "passing_val": sum(bool(r["val"]["passes_bound"]) for r in mine), "rows": len(mine),
            "verdicts": _tally(m.get("verdicts") or [], state)}


def section(m: dict, labels: list[int], criteria: list[str], levels: list[float], headline_levels: int,
            split: dict[str, float], earlier: dict | None) -> dict[str, Any]:
    """The design's figures of one dataset x model: val n per class, completeness for the headline, and the
    earlier study's section (``earlier``, from its results) summarised alike."""
    names = m["class_names"]
    counts = Counter(int(v) for v in labels)
    return {"split": split, "val_n_per_class": {n: counts.get(i, 0) for i, n in enumerate(names)},
            "levels": list(levels), "headline": completeness(m["rows"], criteria, levels[:headline_levels],
                                                              m["headline"].get("state", "kd")),
            "this": summary(m), "earlier": summary(earlier) if earlier else None}


def _ships(s: dict) -> str:
    d, sl = s["deploy_ships"], s["speedup_lossless"]
    if sl and sl["holds_on_test"]:
        return f"×{d['speedup_ort']:.2f} ({sl['criterion']} MACs ÷{sl['macs_ratio']:.2f}, holds on test)"
    if sl:
        return (f"×1.00 (val chose {sl['criterion']} MACs ÷{sl['macs_ratio']:.2f} ×{sl['speedup_ort']:.2f}; it fails "
                "on test)")
    return "×1.00 (nothing passes on val)"


def _resolution(s: dict) -> str:
    res = s.get("val_resolution") or {}
    return ", ".join(f"{c} {v:.1f}" for c, v in res.items()) or "n/a"


def preface(doc: dict, prereg: str, owned: set[str] = frozenset()) -> list[str]:
    """Markdown put under the report's title: the design, then per dataset x model the val n, the rule's val
    resolution, the headline status and the earlier study's figures. ``owned``: headline keys the complete
    long-recovery arm carries instead (``_selection_arms.superseded``)."""
    d = doc["design"]
    lines = [f"**Pre-registered selection-split design** ([{prereg}]({prereg}), committed before any model or cell "
             "of it): the recovery study unchanged (recipe, criteria, report) on dense models trained with a larger "
             "selection split: " + "; ".join(f"{ds}: {split_text(s)}" for ds, s in d["split"].items())
             + ". Test splits unchanged, read once per chosen model. Cells are the recovery study's own (same cache "
             "keys: checkpoint, criterion, MACs target, references, recipe), computed level by level in the "
             "pre-registered order. Criteria: " + ", ".join(d["criteria"])
             + "; MACs levels in the pre-registered order: "
             + ", ".join(f"{m} ÷" + "/÷".join(f"{t:g}" for t in ts) for m, ts in d["levels"].items())
             + f". Headline rule: a dataset x model whose first {d['headline_levels']} levels are complete for all "
             "criteria takes `recovery/<dataset>/<model>/speedup_lossless` and `best_criterion` from this design, "
             f"whatever the result; otherwise the headline stays on the earlier study ([{d['earlier']}]"
             f"({d['earlier']}), official val only), compared below.", "",
             "| dataset · model | design val n (per class) | one lost val image → pts | earlier val n · one lost image "
             "→ pts | headline levels complete | deploy ships (this design) | deploy ships (earlier) | cells passing "
             "the val rule (this / earlier) | best criterion (this / earlier) | medprune criteria vs peers, recovered, "
             "test, per group: Holm-adjusted (unadjusted) (this / earlier) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for label, m in doc["models"].items():
        s = m.get("selection")
        if not s:
            continue
        t, e = s["this"], s["earlier"] or {}
        per_class = ", ".join(f"{c} {n}" for c, n in s["val_n_per_class"].items())
        status = "yes" if s["headline"]["complete"] else f"no ({len(s['headline']['missing'])} missing)"
        lines.append(
            f"| {label.replace(':', ' · ')} | {t['val_n']} ({per_class}) | {_resolution(t)} | "
            + (f"{e['val_n']} · {_resolution(e)}" if e else "n/a") + f" | {status} | {_ships(t)} | "
            + (_ships(e) if e else "n/a") + f" | {t['passing_val']} of {t['rows']} / "
            + (f"{e['passing_val']} of {e['rows']}" if e else "n/a") + f" | {t['best_criterion']} / "
            + (e.get("best_criterion") or "n/a") + f" | {_verdicts(t)} / " + (_verdicts(e) if e else "n/a") + " |")
    lines.append("")
    for label, m in doc["models"].items():
        s = m.get("selection")
        if s and not s["headline"]["complete"]:
            lines.append(f"- {label}: the headline stays on the earlier study; missing for it: "
                         + ", ".join(s["headline"]["missing"]) + ".")
        elif s and f"recovery/{label.replace(':', '/')}/speedup_lossless" in owned:
            lines.append(f"- {label}: the headline is the pre-registered long-recovery arm's, pooled with this "
                         "design's rows (its levels are complete; recovery_selection_long.md).")
        elif s:
            lines.append(f"- {label}: the headline is this design's (levels "
                         + "/".join(f"÷{v:g}" for v in s["headline"]["levels"]) + " complete).")
    return lines + [""]


def _verdicts(s: dict) -> str:
    from ._recovery_verdicts import tally_text

    return tally_text(s.get("verdicts") or {})


def headline_entries(doc: dict, source: str, part: str = "headline",
                     arm: str = "") -> dict[str, dict]:
    """``recovery/<dataset>/<model>/{speedup_lossless,best_criterion}`` of the pairs the rule lets through
    (headline levels complete), read from this design's document at ``source`` (checked by benchmarks.headline):
    from each model's ``part`` (``headline``; ``arms``: the long arm's pooled choice), ``arm`` naming it."""
    out: dict[str, dict] = {}
    for label, m in doc["models"].items():
        s = m.get("selection")
        if not s or not s["headline"]["complete"] or part not in m:
            continue
        ds, model = label.split(":")
        h, base = m[part], {"source": source, "command": doc["command"]}
        design = (f"{NICE.get(ds, ds)} {model}, pre-registered selection-split design ({split_text(s['split'])})"
                  + (f", {arm}" if arm else ""))
        out[f"recovery/{ds}/{model}/best_criterion"] = {
            "value": h["best_criterion"], "unit": "text", **base, "path": f"models/{label}/{part}/best_criterion",
            "label": f"{design}: best criterion after recovery (mean val balanced accuracy)"}
        sl = h["speedup_lossless"]
        if sl:
            which = f"{sl['criterion']}" + (f" {sl['arm']} arm" if sl.get("arm") else "")
            what = (f"most compressed recovered model passing deploy's lossless rule on val ({which}, "
                    f"MACs ÷{sl['macs_ratio']:.2f})" if sl["holds_on_test"] else
                    f"x1.00: the model chosen on val by deploy's rule ({which}, MACs ÷{sl['macs_ratio']:.2f}, "
                    f"x{sl['speedup_ort']:.2f}) FAILS the gates on test, so the dense model stays")
            a, w = sl["test_accuracy_drop_pts"], sl["test_worst_sensitivity_drop_pts"]
            note = (f"holds on test: {sl['holds_on_test']}; test accuracy drop {a['value']:.2f} pts "
                    f"{[round(x, 2) for x in a['ci']]}, worst per-class sensitivity drop {w['value']:.2f} pts "
                    f"{[round(x, 2) for x in w['ci']]} (n={m['rows'][0]['test']['n']})")
        else:
            what = "no recovered model passes deploy's lossless rule on val, so the dense model stays (x1.00)"
            note = f"val n {s['this']['val_n']}; cells passing the val rule: 0 of {h.get('rows', s['this']['rows'])}"
        out[f"recovery/{ds}/{model}/speedup_lossless"] = {
            "value": h["deploy_ships"]["speedup_ort"], "unit": "×", **base,
            "path": f"models/{label}/{part}/deploy_ships/speedup_ort",
            "label": f"{design}: measured ORT batch-1 speedup, {what}", "note": note}
    return out


def search_aware_lines(doc: dict, design: dict | None = None) -> list[str]:
    """The post-hoc section on what the search-aware rule would choose on val (``_selection_search_aware``; it reads
    val probabilities from the cell cache, never test), for the report being assembled; ``design``: the 2-epoch
    arm's results when ``doc`` is the long arm's (its pools are pooled over both arms)."""
    from . import _selection_search_aware as sa

    return sa.markdown(sa.post_hoc(doc, design))
