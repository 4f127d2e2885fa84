"""The longer-recovery arm of the selection-split design (``recovery_selection --arm long``) and the pre-registered
headline over both arms (recovery_long_preregistration.md).

The long arm is the design's cells with the recovery recipe's epochs raised (``LONG``); the dense checkpoints, MACs
targets, reference images and timing are the design's, so each long cell has a 2-epoch twin pruned identically.
Its MACs levels are fixed per dataset x model in pre-registered stages (``LONG_STAGES``: the pre-registration's, then
an amendment's). The headline of a dataset x model is decided over the pooled recovered rows of both arms at the long
levels of every stage up to the first incomplete one (:func:`pooled`): the most compressed model passing deploy's rule
on val, ties to the higher val balanced accuracy and then to the 2-epoch arm (its rows come first, and
``_recovery_report.headline`` keeps the first of equal maxima), judged once on test. A stage added later therefore
counts only once all its cells exist; until then the pair keeps the choice of its earlier stages, and with no
complete stage the 2-epoch arm's. This module builds that choice and the Markdown preface that reports it per arm,
level and criterion; the rows themselves are ``_recovery_report``'s.
"""

from __future__ import annotations

from typing import Any

from toolchain.errors import ConfigError

DESIGN, LONG = "2-epoch", "long"
# the long arm, fixed by its pre-registration: VGG19 only, KD for 6 epochs instead of 2, MACs ÷5 and ÷8 for both
# pairs; amendment 5 adds ÷6.5 and ÷7 for PneumoniaMNIST only, as a second stage (its own completeness, see above)
LONG_EPOCHS = 6
LONG_STAGES: dict[str, tuple[tuple[float, ...], ...]] = {"pneumoniamnist/vgg19": ((5.0, 8.0), (6.5, 7.0)),
                                                         "chest_xray_224/vgg19": ((5.0, 8.0),)}


def long_levels(data: str, model: str) -> tuple[float, ...]:
    """Every long-arm MACs level of ``data/model``, ascending (the order of its rows in the report); () if none."""
    return tuple(sorted({t for stage in LONG_STAGES.get(f"{data}/{model}", ()) for t in stage}))


def state_rows(m: dict, state: str, arm: str | None = None) -> list[dict]:
    """The rows of one dataset x model section in recovery ``state``, each tagged with its ``arm``."""
    return [{**r, "arm": arm} for r in m["rows"] if r.get("state", "kd") == state]


def pooled_rows(design: dict, long: dict, state: str, levels: list[float]) -> list[dict]:
    """The rows a pooled choice is made from: the 2-epoch arm's (first: it wins exact ties), then the long arm's at
    ``levels`` (the long levels the headline counts)."""
    wanted = {float(t) for t in levels}
    return state_rows(design, state, DESIGN) + [r for r in state_rows(long, state, LONG)
                                                if float(r["target_macs_div"]) in wanted]


def stages(long: dict, criteria: list[str], state: str) -> list[dict[str, Any]]:
    """Per pre-registered stage of the section's dataset x model: its levels, whether every criterion has a
    ``state`` row at each, and which cells miss (``_selection_report.completeness``)."""
    from ._selection_report import completeness

    pair = f"{long['dataset']}/{long['model']}"
    if pair not in LONG_STAGES:
        raise ConfigError(f"the long arm has no MACs levels for {pair} (it has {', '.join(LONG_STAGES)})")
    return [completeness(long["rows"], criteria, list(stage), state) for stage in LONG_STAGES[pair]]


def counted_levels(status: list[dict]) -> list[float]:
    """The long levels the headline counts: those of every stage up to the first incomplete one."""
    out: list[float] = []
    for s in status:
        if not s["complete"]:
            break
        out += s["levels"]
    return out


def _key(sl: dict | None) -> tuple | None:
    return (sl["arm"], sl["criterion"], float(sl["target"])) if sl else None


def _choice(rows: list[dict], state: str) -> dict[str, Any]:
    """``headline`` over ``rows``, its chosen model tagged with its arm and test n."""
    from ._recovery_report import choose, headline

    h = headline(rows, state)
    if h["speedup_lossless"]:
        chosen = choose(rows)  # the row headline() chose (same rule), for its arm
        h["speedup_lossless"].update(arm=chosen["arm"], test_n=chosen["test"]["n"])
    return h


def pooled(design: dict, long: dict, criteria: list[str]) -> dict[str, Any]:
    """The pre-registered choice over both arms' recovered rows of one dataset x model (``design`` and ``long``:
    their sections in ``recovery_selection.json`` / ``recovery_selection_long.json``), as ``headline`` gives it
    (``speedup_lossless``, ``deploy_ships``, ``best_criterion``), plus the chosen model's arm and per-arm counts.
    ``complete``: every long level is there; ``levels``: the long levels counted (complete stages, see the module);
    ``earlier_stages``: the choice each shorter run of complete stages made (already read on test then)."""
    from ._recovery_report import choose

    if design["checkpoint_sha256"] != long["checkpoint_sha256"]:
        raise ConfigError(f"the 2-epoch arm's {design['dataset']}:{design['model']} was computed from checkpoint "
                          f"{design['checkpoint_sha256'][:12]}, the long arm's from {long['checkpoint_sha256'][:12]}")
    state = design["headline"].get("state", "kd")
    status = stages(long, criteria, state)
    levels = counted_levels(status)
    # no complete stage: nothing is chosen, and the counts cover every row as it is reported
    rows = pooled_rows(design, long, state, levels or list(long_levels(long["dataset"], long["model"])))
    per_arm = {}
    for arm in (DESIGN, LONG):
        mine = [r for r in rows if r["arm"] == arm]
        best = choose(mine)
        per_arm[arm] = {"rows": len(mine), "passing_val": sum(bool(r["val"]["passes_bound"]) for r in mine),
                        "most_compressed_passing": f"{best['criterion']} ÷{best['macs_ratio']:.2f}" if best else None}
    missing = [c for s in status for c in s["missing"]]
    out = {"complete": not missing, "levels": levels, "missing": missing, "rows": len(rows), "per_arm": per_arm,
           "state": state, "rule": "bound, pooled over both arms (recovery_long_preregistration.md)"}
    if not levels:  # no pooled choice, so no test reading: the pair keeps the 2-epoch arm's headline
        return out
    # the test readings made before this choice: the 2-epoch arm's, then each shorter run of complete stages'
    first = design["headline"]["speedup_lossless"]
    read = [((DESIGN, first["criterion"], float(first["target"])) if first else None, "the 2-epoch arm's choice")]
    earlier = []
    n_done = next((i for i, s in enumerate(status) if not s["complete"]), len(status))
    for k in range(1, n_done):
        upto = counted_levels(status[:k])
        h = _choice(pooled_rows(design, long, state, upto), state)
        earlier.append({"levels": upto, **h})
        read.append((_key(h["speedup_lossless"]), "the choice over long levels " + _levels(upto)))
    h = _choice(rows, state)
    sl = h["speedup_lossless"]
    if sl:
        before = [why for k, why in read if k is not None and k == _key(sl)]
        sl["read_before"] = before[0] if before else None
        sl["new_test_reading"] = not before
        sl["earlier_readings"] = [why for k, why in read if k is not None]
    return {**h, **out, "earlier_stages": earlier}


def _levels(levels: list[float]) -> str:
    return "/".join(f"÷{t:g}" for t in levels)


def add_arms(doc: dict, design_doc: dict) -> None:
    """``models[*]["arms"]``: the pooled choice of every long dataset x model the 2-epoch arm's document has."""
    for label, m in doc["models"].items():
        d = design_doc.get("models", {}).get(label)
        if d is None:
            raise ConfigError(f"the 2-epoch arm's results have no {label}: assemble `recovery_selection` first")
        m["arms"] = pooled(d, m, m["selection"]["headline"]["criteria"])


def superseded(long_doc: dict | None) -> set[str]:
    """Headline keys the long arm owns (a stage of its pair complete): the 2-epoch assembly must not write them."""
    out = set()
    for label, m in (long_doc or {}).get("models", {}).items():
        a = m.get("arms") or {}
        if a.get("levels", a.get("complete")):  # documents before stages: complete was the only stage
            ds, model = label.split(":")
            out |= {f"recovery/{ds}/{model}/speedup_lossless", f"recovery/{ds}/{model}/best_criterion"}
    return out


def _cell(row: dict | None) -> str:
    if row is None:
        return "— | —"
    v = row["val"]
    verdict = "pass" if v["passes_bound"] else "fail"
    return (f"{verdict} ({v['accuracy_drop_ci_pts'][1]:.1f} / {v['worst_sensitivity_drop_upper_pts']:.1f}) | "
            f"×{row['speedup_ort']:.2f} (÷{row['macs_ratio']:.2f})")


def _ci(d: dict) -> str:
    return f"{d['value']:.1f} [{d['ci'][0]:.1f}, {d['ci'][1]:.1f}]"


def _kept_line(label: str, design: dict, missing: list[str]) -> str:
    """An incomplete long arm: the pair keeps the 2-epoch arm's headline (its test reading, already made)."""
    h = design["headline"]
    sl, kept = h["speedup_lossless"], f"×{h['deploy_ships']['speedup_ort']:.2f}"
    if sl:
        kept += (f" ({sl['criterion']} MACs ÷{sl['macs_ratio']:.2f}; test accuracy drop "
                 f"{_ci(sl['test_accuracy_drop_pts'])} pts, worst per-class sensitivity drop "
                 f"{_ci(sl['test_worst_sensitivity_drop_pts'])} pts, n={design['rows'][0]['test']['n']})")
    return (f"- {label}: long levels incomplete ({len(missing)} cells missing: {', '.join(missing)}) — no pooled "
            f"headline; the pair keeps the 2-epoch arm's {kept} (recovery_selection.md). The long rows above are "
            "reported as they are.")


def _chosen_line(label: str, a: dict, target: float | None) -> str:
    sl, ships = a["speedup_lossless"], a["deploy_ships"]
    if not sl:
        return f"- {label}: no recovered model of either arm passes deploy's rule on val: x1.00."
    reached = ships["speedup_ort"]
    verdict = "met" if target and sl["holds_on_test"] and reached >= target else "NOT met"
    read = (f"the model already read on test as {sl['read_before']}" if sl.get("read_before") else
            "a new test reading" + (f" of a test split already read for {', '.join(sl['earlier_readings'])}"
                                    if sl.get("earlier_readings") else ""))
    return (f"- {label}: val chose {sl['criterion']} MACs ÷{sl['macs_ratio']:.2f} ({sl['arm']} arm, ×"
            f"{sl['speedup_ort']:.2f} measured; {read}); test accuracy drop {_ci(sl['test_accuracy_drop_pts'])} pts, "
            f"worst per-class sensitivity drop {_ci(sl['test_worst_sensitivity_drop_pts'])} pts (n={sl['test_n']}); "
            f"holds on test: {sl['holds_on_test']}; headline speedup_lossless ×{reached:.2f}, best_criterion "
            f"{a['best_criterion']}" + (f"; target ×{target:g} {verdict}" if target else "") + ".")


def _pending_line(label: str, a: dict) -> str:
    """A later stage incomplete: its levels are not counted, the headline is the complete stages' choice above."""
    waiting = sorted({float(c.rsplit("÷", 1)[1]) for c in a["missing"]})
    return (f"- {label}: long level(s) {_levels(waiting)} incomplete ({len(a['missing'])} cells missing: "
            f"{', '.join(a['missing'])}) — not counted: the headline above is the choice over long levels "
            f"{_levels(a['levels'])} (the complete stages), and the other rows are reported as they are.")


def _earlier_line(label: str, e: dict) -> str:
    """The choice of a shorter run of complete stages: its test reading, made when it was the headline."""
    sl = e["speedup_lossless"]
    what = (f"{sl['criterion']} MACs ÷{sl['macs_ratio']:.2f} ({sl['arm']} arm, ×{sl['speedup_ort']:.2f}); test "
            f"accuracy drop {_ci(sl['test_accuracy_drop_pts'])} pts, worst per-class sensitivity drop "
            f"{_ci(sl['test_worst_sensitivity_drop_pts'])} pts (n={sl['test_n']}); holds on test: "
            f"{sl['holds_on_test']}" if sl else "nothing passing deploy's rule on val (x1.00)")
    return f"- {label}, earlier reading: over long levels {_levels(e['levels'])} only, val chose {what}."


def _limits(label: str, design: dict, long: dict, target: float | None, levels: list[float]) -> str:
    """What stops the pair short of the target: the val rule at the levels that would reach it (read on val),
    among the rows the headline counts (long ``levels``)."""
    if not target:
        return ""
    rows = pooled_rows(design, long, "kd", levels)
    fast = [r for r in rows if r["speedup_ort"] >= target]
    if not fast:
        return f"- {label}: no recovered model of either arm is measured at ×{target:g} or faster (latency)."
    passing = [r for r in fast if r["val"]["passes_bound"]]
    if passing:
        return (f"- {label}: {len(passing)} of {len(fast)} models measured at ×{target:g} or faster pass the val rule.")
    near = min(fast, key=lambda r: max(r["val"]["accuracy_drop_ci_pts"][1] - 1.0,
                                       r["val"]["worst_sensitivity_drop_upper_pts"] - 2.0))
    return (f"- {label}: accuracy on val limits it: none of the {len(fast)} models measured at ×{target:g} or faster "
            f"passes the val rule; the nearest ({near['criterion']} ÷{near['macs_ratio']:.2f}, {near['arm']} arm) has "
            f"upper bounds {near['val']['accuracy_drop_ci_pts'][1]:.1f} pts accuracy / "
            f"{near['val']['worst_sensitivity_drop_upper_pts']:.1f} pts worst sensitivity (gates 1 / 2).")


def _stages_text(data: str, model: str) -> str:
    stages = LONG_STAGES.get(f"{data}/{model}", ())
    text = "; then ".join(_levels(list(st)) for st in stages)
    return f"Long-arm MACs levels, by pre-registered stage: {text}" + (
        " (a later stage counts for the headline only once it and every earlier one are complete)."
        if len(stages) > 1 else ".")


def preface(doc: dict, design_doc: dict, prereg: str, criteria: list[str]) -> list[str]:
    """Markdown under the long arm's title: the arm, the pooled rule, and per dataset x model a table per level x
    criterion of both arms' val verdict and measured speedup, then the pooled choice read once on test."""
    from ._recovery_report import TARGETS

    lines = [f"**Pre-registered long-recovery arm \"kd-long\"** ([{prereg}]({prereg}), committed before any cell of "
             "it): the selection-split design's VGG19 cells (same checkpoints, pruned models, reference images, timing) "
             f"recovered with KD for {doc['args']['recover_epochs']} epochs instead of "
             f"{design_doc['args']['recover_epochs']}, at MACs levels fixed per pair in pre-registered stages. Headline "
             "rule: over the long levels of every complete stage of a pair (up to the first incomplete one), the most "
             "compressed recovered model of **both arms** passing deploy's rule on val, judged once on test "
             "(test was read once before, for the 2-epoch arm's choice). The report body below is the long arm alone: "
             "its `speedup_lossless` and `Target` lines are the long arm's own val choice, shown for reference only; "
             "they are neither the pre-registered rule nor the headline, which is stated here.", "",
             "Per level and criterion: val verdict of deploy's rule (upper 95 % bounds: accuracy drop / worst "
             "class's sensitivity drop, pts; gates 1 / 2), and measured ORT batch-1 speedup (MACs ÷). Recovered "
             "(KD) rows.", ""]
    tail = []
    for label, m in doc["models"].items():
        a, d = m.get("arms"), design_doc["models"].get(label)
        if not a or d is None:
            continue
        index = {(r["arm"], r["criterion"], float(r["target_macs_div"])): r
                 for r in state_rows(d, "kd", DESIGN) + state_rows(m, "kd", LONG)}
        levels = sorted({t for _, _, t in index} | set(long_levels(m["dataset"], m["model"])))
        lines += [f"### {label.replace(':', ' · ')}", "", _stages_text(m["dataset"], m["model"]), "",
                  f"| MACs ÷ target | criterion | {DESIGN}: val | {DESIGN}: speedup | {LONG}: val | {LONG}: speedup |",
                  "|---:|---|---|---:|---|---:|"]
        for t in levels:
            for c in criteria:
                lines.append(f"| {t:g} | {c} | {_cell(index.get((DESIGN, c, t)))} | {_cell(index.get((LONG, c, t)))} |")
        counted = f" (rows the headline counts: long levels {_levels(a['levels'])})" if a["missing"] and a["levels"] \
            else ""
        lines += ["", f"Passing the val rule{counted}: " + "; ".join(
            f"{arm} {p['passing_val']} of {p['rows']} (most compressed: {p['most_compressed_passing'] or 'none'})"
            for arm, p in a["per_arm"].items()) + ".", ""]
        target = TARGETS.get((m["dataset"], m["model"]))
        if not a["levels"]:
            tail.append(_kept_line(label, d, a["missing"]))
        else:
            tail += [_chosen_line(label, a, target), *[_earlier_line(label, e) for e in a["earlier_stages"]],
                     _pending_line(label, a) if a["missing"] else ""]
        tail.append(_limits(label, d, m, target, a["levels"] or list(long_levels(m["dataset"], m["model"]))))
    return lines + ["Pooled headline (pre-registered):", "", *[t for t in tail if t], ""]
