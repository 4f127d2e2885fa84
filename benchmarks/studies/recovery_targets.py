"""Issue 15's speedup targets against the headline: target, headline value, best reached and what limits it.

    medprune study recovery_targets [--results DIR] [--out DIR]

A report that chooses nothing and reads no image: one row per dataset x model with a
``recovery/<dataset>/<model>/speedup_lossless`` key in headline.json, computed from that key, the results file it
cites (``source``/``path``: ``recovery.json``, ``recovery_selection.json`` or ``recovery_selection_long.json``,
whichever carries the pair's headline) and ``split_shift.json``. Columns:

* target: ``_recovery_report.TARGETS`` (the issue's; pairs without one are listed as such);
* headline: the value in headline.json, checked against its source (a stale key is a one-line error);
* best reached: the model deploy's rule chose on val among the recovered rows behind the headline (both arms'
  rows when the headline is the pooled long-recovery choice), with its measured speedup and its test drops as
  the source recorded them (read once, by the assembly that chose it);
* what limits it, each from the rows: *accuracy on val* (no recovered model measured at the target or faster
  passes deploy's rule on val), *accuracy on test* (the val choice fails the gates on test), *val→test shift*
  (the dense checkpoint's sensitivity of the failing class is lower on test than on val beyond the 95 % interval,
  ``split_shift.json``), *latency not following MACs* (models at MACs ÷target or more measured slower than the
  target), *time* (grid cells not computed, or a pre-registered arm still incomplete);
* recovery budget: the KD epochs and MACs levels the rows behind the headline had;
* post hoc, when ``recovery_search_aware.json`` is present and covers the pool behind a pair's headline (same
  source report, checkpoint and pre-registered choice): one clause after what limits it, what the search-aware
  rule (Bonferroni over the pool's k candidates) would choose and whether that model's committed test row holds,
  read from that file and labelled post hoc; it changes no headline and no verdict. Pairs it does not cover say
  nothing new (the study registry tracks outputs only, so this input is named here and in the report's header).

Run it after the recovery assemblies (``make recovery-selection`` does): it reads what they wrote.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from toolchain.errors import ConfigError

from ._selection_arms import DESIGN, LONG
from ._selection_arms import pooled_rows as _pooled
from ._selection_arms import state_rows as _rows
from .registry import RESULTS, StudyParser, command_line, study

LONG_DOC = "recovery_selection_long.json"  # the pre-registered long arm: it may hold a pair's pending rows
SEARCH_AWARE_DOC = "recovery_search_aware.json"  # post hoc (study recovery_search_aware): read when present


def _load(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None


def _missing_cells(doc: dict, m: dict, state: str) -> list[str]:
    """Grid cells (criterion x MACs level of the run's arguments) without a recovered row."""
    from .recovery_grid import macs_targets

    a = doc["args"]
    levels = macs_targets(a.get("model_macs"), m.get("dataset"), m["model"], a.get("macs"))
    have = {(r["criterion"], float(r["target_macs_div"])) for r in _rows(m, state)}
    return [f"{c} ÷{t:g}" for t in levels for c in a.get("criteria", []) if (c, float(t)) not in have]


def behind(entry: dict, results: Path) -> dict[str, Any]:
    """The rows, val choice and recovery budget behind one ``speedup_lossless`` headline entry."""
    from .recovery_grid import macs_targets

    source = results / Path(entry["source"]).name
    doc = _load(source)
    parts = entry.get("path", "").split("/")
    if len(parts) != 5 or parts[0] != "models" or parts[1] not in doc.get("models", {}):
        raise ConfigError(f"headline path {entry.get('path')!r} names no dataset x model section of {source.name}")
    label, part = parts[1], parts[2]
    m = doc["models"][label]
    h = m.get(part)
    if not h:
        raise ConfigError(f"{source.name}: models/{label} has no {part!r} part")
    if abs(h["deploy_ships"]["speedup_ort"] - float(entry["value"])) > 1e-9:
        raise ConfigError(f"headline.json's {label} speedup_lossless ({float(entry['value']):.4g}) is not what "
                          f"{source.name} holds ({h['deploy_ships']['speedup_ort']:.4g}): re-assemble it first")
    state = h.get("state", "kd")
    epochs = [doc["args"].get("recover_epochs")]
    pending = None
    if part == "arms":  # the pooled long-arm choice: both arms' recovered rows at the long levels it counts
        design_doc = _load(results / doc["design"]["earlier"])
        d = design_doc["models"][label]
        counted = h.get("levels")  # absent before the long arm had stages: every long row counted
        rows = (_pooled(d, m, state, counted) if counted is not None
                else _rows(d, state, DESIGN) + _rows(m, state, LONG))
        missing = _missing_cells(design_doc, d, state) + _missing_cells(doc, m, state)
        epochs = [design_doc["args"].get("recover_epochs")] + epochs
        levels = sorted({float(r["target_macs_div"]) for r in rows})
        if counted and h.get("missing"):  # a later stage incomplete: its rows do not count yet
            pending = {"missing": h["missing"], "epochs": doc["args"].get("recover_epochs"),
                       "rows": [r for r in _rows(m, state, LONG) if float(r["target_macs_div"]) not in counted]}
    else:
        rows, missing = _rows(m, state), _missing_cells(doc, m, state)
        levels = sorted({float(t) for t in macs_targets(doc["args"].get("model_macs"), m.get("dataset"), m["model"], [])}
                        or {float(r["target_macs_div"]) for r in rows})
    long_path = results / LONG_DOC
    if part != "arms" and long_path.is_file() and source.name != LONG_DOC:
        long_doc = _load(long_path)
        lm = long_doc.get("models", {}).get(label)
        if lm and not (lm.get("arms") or {}).get("complete", True):
            pending = {"missing": lm["selection"]["headline"]["missing"],
                       "epochs": long_doc["args"].get("recover_epochs"), "rows": _rows(lm, state, LONG)}
    return {"source": source.name, "label": label, "part": part, "section": m, "rows": rows,
            "chosen": h.get("speedup_lossless"), "missing": missing, "pending": pending,
            "epochs": [e for e in epochs if e is not None], "levels": levels}


def _chosen_row(b: dict) -> dict | None:
    """The recovered row the val choice is (for its test worst class)."""
    sl = b["chosen"]
    if not sl:
        return None
    for r in b["rows"]:
        if (r["criterion"], float(r["target_macs_div"])) == (sl["criterion"], float(sl["target"])) and \
                (sl.get("arm") is None or r["arm"] == sl["arm"]):
            return r
    return None


def _shift(sha: str, cls: str | None, shift_doc: dict | None) -> str:
    """The dense checkpoint's val − test sensitivity of ``cls`` (split_shift.json), when lower on test."""
    if shift_doc is None:
        return "val→test shift: not measured (no split_shift.json)"
    run = next((r for r in shift_doc.get("runs", []) if r.get("sha256") == sha), None)
    row = next((r for r in (run or {}).get("rows", []) if r.get("class") == cls), None)
    if row is None:
        return f"val→test shift: not measured for this checkpoint ({sha[:12]})"
    d = row["diff"]
    beyond = d["ci"][0] > 0
    return (f"val→test shift: the dense model's {cls} sensitivity is {100 * d['value']:+.1f} pts "
            f"[{100 * d['ci'][0]:+.1f}, {100 * d['ci'][1]:+.1f}] higher on val (n {row['val']['n']}) than on test "
            f"(n {row['test']['n']})" + ("" if beyond else ", within the interval") + " (split_shift.md)")


def limits(target: float | None, value: float, b: dict, shift_doc: dict | None) -> list[str]:
    """What keeps the pair below ``target`` (empty when met), each computed from the rows behind the headline."""
    if target is None or value >= target:
        return []
    rows, sl, out = b["rows"], b["chosen"], []
    fast = [r for r in rows if r["speedup_ort"] >= target]
    passing = [r for r in fast if r["val"]["passes_bound"]]
    if not fast:
        top = max(rows, key=lambda r: r["speedup_ort"], default=None)
        out.append(f"latency: no recovered model is measured at ×{target:g} or faster"
                   + (f" (fastest ×{top['speedup_ort']:.2f}, MACs ÷{top['macs_ratio']:.2f})" if top else ""))
    elif not passing:
        near = min(fast, key=lambda r: max(r["val"]["accuracy_drop_ci_pts"][1] - 1.0,
                                           r["val"]["worst_sensitivity_drop_upper_pts"] - 2.0))
        out.append(f"accuracy on val: none of the {len(fast)} recovered models measured at ×{target:g} or faster "
                   f"passes deploy's rule (nearest: {near['criterion']} ÷{near['macs_ratio']:.2f}"
                   + (f" {near['arm']}" if near.get("arm") else "") + f", upper bounds "
                   f"{near['val']['accuracy_drop_ci_pts'][1]:.1f} / {near['val']['worst_sensitivity_drop_upper_pts']:.1f}"
                   " pts vs gates 1 / 2)")
    elif sl and sl["holds_on_test"] and sl["speedup_ort"] < target:
        out.append(f"choice by MACs, not latency: {len(passing)} model(s) measured at ×{target:g} or faster pass val, "
                   f"but the most compressed one passing (÷{sl['macs_ratio']:.2f}) measures ×{sl['speedup_ort']:.2f}")
    if sl and not sl["holds_on_test"]:
        w, row = sl["test_worst_sensitivity_drop_pts"], _chosen_row(b)
        cls = row["test"].get("worst_class") if row else None
        if isinstance(cls, int):  # recorded as the class index
            cls = (b["section"].get("class_names") or [])[cls] if cls < len(b["section"].get("class_names") or []) else None
        out.append(f"accuracy on test: the val choice loses {w['value']:.1f} [{w['ci'][0]:.1f}, {w['ci'][1]:.1f}] pts "
                   f"of {cls or 'a class'}'s sensitivity (gate 2)")
        out.append(_shift(b["section"]["checkpoint_sha256"], cls, shift_doc))
    big = [r for r in rows if r["macs_ratio"] >= target]
    slow = [r for r in big if r["speedup_ort"] < target]
    if slow:
        per_mac = statistics.median(r["speedup_ort"] / r["macs_ratio"] for r in rows)
        out.append(f"latency not following MACs: {len(slow)} of {len(big)} models at MACs ÷{target:g} or more measure "
                   f"below ×{target:g} (median speedup per MACs reduction {per_mac:.2f}, n {len(rows)})")
    if b["missing"]:
        out.append(f"time: {len(b['missing'])} grid cell(s) not computed ({', '.join(b['missing'])})")
    if b["pending"]:
        p = b["pending"]
        fast = [r for r in p["rows"] if r["speedup_ort"] >= target]
        out.append(f"time: the pre-registered {p['epochs']}-epoch arm is incomplete ({len(p['missing'])} cells "
                   f"missing), so its rows do not count yet (so far {sum(r['val']['passes_bound'] for r in fast)} of "
                   f"its {len(fast)} models measured at ×{target:g} or faster pass val)")
    return out


def _best(b: dict) -> str:
    sl = b["chosen"]
    if not sl:
        return f"nothing passes deploy's rule on val ({len(b['rows'])} recovered models)"
    a, w = sl["test_accuracy_drop_pts"], sl["test_worst_sensitivity_drop_pts"]
    row = _chosen_row(b)
    n = sl.get("test_n") or (row["test"]["n"] if row else None)
    return (f"{sl['criterion']} MACs ÷{sl['macs_ratio']:.2f}" + (f" ({sl['arm']} arm)" if sl.get("arm") else "")
            + f", ×{sl['speedup_ort']:.2f} measured; test acc drop {a['value']:.1f} [{a['ci'][0]:.1f}, "
            f"{a['ci'][1]:.1f}], worst sens. drop {w['value']:.1f} [{w['ci'][0]:.1f}, {w['ci'][1]:.1f}] pts (n {n}): "
            + ("holds" if sl["holds_on_test"] else "FAILS") + " on test")


def _search_aware_record(b: dict, doc: dict | None) -> dict | None:
    """The search-aware study's record for the pool behind ``b``: the part judging ``b``'s source report (pooled
    over both arms exactly when the headline is the pooled choice), same dataset x model; None when not covered."""
    if doc is None or b["source"] not in doc.get("sources", []):
        return None
    report, pooled = f"({Path(b['source']).stem}.md)", b["part"] == "arms"
    for key, records in doc.get("parts", {}).items():
        rec = records.get(b["label"])
        if rec is not None and key.endswith(report) and key.startswith("pooled") == pooled:
            return rec
    return None


def _identity(choice: dict | None) -> tuple | None:
    """A val choice as (criterion, arm, MACs ratio): what ties a search-aware record to the report's pool."""
    return None if not choice else (choice["criterion"], choice.get("arm"), round(float(choice["macs_ratio"]), 6))


def _test_text(t: dict) -> str:
    a, w = t["accuracy_drop_pts"], t["worst_sensitivity_drop_pts"]
    return (f"acc drop {a['value']:.1f} [{a['ci'][0]:.1f}, {a['ci'][1]:.1f}], worst class {w['value']:.1f} "
            f"[{w['ci'][0]:.1f}, {w['ci'][1]:.1f}] pts, n {t['n']}")


def search_aware(b: dict, doc: dict | None) -> str | None:
    """One post-hoc clause on what the search-aware rule would choose from the pool behind ``b``, read from
    ``recovery_search_aware.json`` (``doc``); None when that file does not cover the pool. A record computed on
    another checkpoint or pool (its pre-registered choice is not the one behind the headline) is named as stale."""
    rec = _search_aware_record(b, doc)
    if rec is None:
        return None
    k, src = rec["k"], SEARCH_AWARE_DOC.replace(".json", ".md")
    sha = b["section"]["checkpoint_sha256"]
    if rec.get("checkpoint_sha256", sha) != sha or \
            ("pre_registered" in rec and _identity(rec["pre_registered"]) != _identity(b["chosen"])):
        return (f"post hoc search-aware result not shown: {SEARCH_AWARE_DOC} judged another pool or checkpoint "
                "(rerun `medprune study recovery_search_aware`)")
    head = f"selection over {k} candidates at 95 % each; post hoc, the search-aware rule"
    if rec.get("undetermined"):
        return f"{head}'s choice is undetermined ({rec['undetermined']}) — not a headline ({src})"
    head += f" (each bound at {100 * rec['confidence']:.4g} %)"
    c = rec["chosen"]
    if c is None:
        return f"{head} would choose none (the dense model stays, ×1.00) — not a headline ({src})"
    t = c["test"]
    return (f"{head} would choose {c['criterion']}" + (f" ({c['arm']} arm)" if c.get("arm") else "")
            + f" ÷{c['macs_ratio']:.2f} (×{c['speedup_ort']:.2f}), test {'holds' if t['holds_on_test'] else 'fails'}"
            f" ({_test_text(t)}, committed row) — not a headline ({src})")


def table(headline: dict[str, dict], results: Path, shift_doc: dict | None,
          search_doc: dict | None = None) -> list[dict[str, Any]]:
    """One row per ``recovery/<dataset>/<model>/speedup_lossless`` key of ``headline`` (``search_doc``: the
    post-hoc ``recovery_search_aware.json``, when present)."""
    from ._recovery_report import TARGETS

    out = []
    for key, entry in headline.items():
        parts = key.split("/")
        if len(parts) != 4 or parts[0] != "recovery" or parts[3] != "speedup_lossless":
            continue
        ds, model = parts[1], parts[2]
        b = behind(entry, results)
        target, value = TARGETS.get((ds, model)), float(entry["value"])
        out.append({"dataset": ds, "model": model, "target": target, "headline": value, "source": b["source"],
                    "met": None if target is None else value >= target, "best_reached": _best(b),
                    "limits": limits(target, value, b, shift_doc), "post_hoc_search_aware": search_aware(b, search_doc),
                    "budget": {"kd_epochs": b["epochs"], "macs_levels": b["levels"], "missing_cells": b["missing"],
                               "pending_arm": b["pending"]}})
    order = list(TARGETS)
    return sorted(out, key=lambda r: (order.index((r["dataset"], r["model"])) if (r["dataset"], r["model"]) in order
                                      else len(order), r["dataset"], r["model"]))


def markdown(rows: list[dict], command: str) -> str:
    lines = ["# Issue 15's speedup targets: what the headline reaches, and what limits it", "",
             f"Command: `{command}` (reads headline.json, the results file each key cites, split_shift.json and, "
             f"when present, the post-hoc {SEARCH_AWARE_DOC}; chooses nothing, reads no image).", "",
             "Target: `speedup_lossless`, the measured ONNX Runtime batch-1 speedup of the most compressed recovered "
             "model passing deploy's rule on val (upper 95 % bounds: accuracy drop <= 1 pt, every class's sensitivity "
             "drop <= 2 pts), judged once on test; x1.00 when nothing passes on val or the val choice fails on test. "
             "Best reached: that val choice as its source recorded it (drops in pts, 95 % paired bootstrap "
             "intervals, n test images).", "",
             "| dataset · model | target | headline (headline.json) | best reached: val choice, judged once on test "
             "| what limits it | recovery budget |", "|---|---:|---:|---|---|---|"]
    for r in rows:
        target = f"×{r['target']:g}" if r["target"] else "none set"
        verdict = "" if r["met"] is None else (" met" if r["met"] else " NOT met")
        b = r["budget"]
        budget = (" + ".join(str(e) for e in b["kd_epochs"]) + " KD epochs (pooled arms)" if len(b["kd_epochs"]) > 1
                  else f"{b['kd_epochs'][0]} KD epochs" if b["kd_epochs"] else "n/a")
        budget += "; MACs ÷" + "/÷".join(f"{t:g}" for t in b["macs_levels"])
        if b["missing_cells"]:
            budget += f"; {len(b['missing_cells'])} grid cell(s) not computed"
        limited = "; ".join(r["limits"]) or ("not determined" if r["met"] is False else "")
        # the post-hoc reading goes after the limits: it is not one of them, and it changes no verdict
        why = "; ".join(w for w in (limited, r.get("post_hoc_search_aware")) if w) or "—"
        lines.append(f"| {r['dataset']} · {r['model']} | {target} | ×{r['headline']:.2f}{verdict} "
                     f"(`{r['source']}`) | {r['best_reached']} | {why} | {budget} |")
    return "\n".join(lines) + "\n"


@study("recovery_targets", outputs=("recovery_targets.json", "recovery_targets.md"))
def main(argv: list[str] | None = None) -> int:
    from benchmarks import headline as hl
    from toolchain.atomic import atomic_file

    p = StudyParser("recovery_targets", __doc__)
    p.add_argument("--results", type=Path, default=RESULTS,
                   help="folder of headline.json, the recovery results and split_shift.json")
    p.add_out()
    args = p.parse_args(argv)
    if not (args.results / "headline.json").is_file():
        p.error(f"no headline.json in {args.results}")
    try:
        headline = hl.load(args.results / "headline.json")
    except hl.HeadlineError as exc:
        p.error(str(exc))
    shift_path = args.results / "split_shift.json"
    search_path = args.results / SEARCH_AWARE_DOC
    rows = table(headline, args.results, _load(shift_path) if shift_path.is_file() else None,
                 _load(search_path) if search_path.is_file() else None)
    if not rows:
        p.error("headline.json has no recovery/<dataset>/<model>/speedup_lossless key")
    command = command_line("recovery_targets", argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with atomic_file(args.out / "recovery_targets.json", "w") as fh:
        json.dump({"command": command, "rows": rows}, fh, indent=1, ensure_ascii=False)
    with atomic_file(args.out / "recovery_targets.md", "w") as fh:
        fh.write(markdown(rows, command))
    print(f"wrote {args.out / 'recovery_targets.md'}")
    return 0
