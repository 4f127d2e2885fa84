"""Criteria at equal measured latency: each medprune criterion's cell against each peer's cells by ORT speedup.

Cells at the same MACs target differ in measured speedup (the criteria remove different layers'
units), so the equal-MACs verdicts do not answer "at equal latency". Rule (no interpolation, only measured
cells of one recovery state, paired bootstrap over the same test images):

- *win*: the medprune cell is more accurate on test than the peer's nearest cell that is **not faster**
  (largest speedup <= the medprune cell's): the medprune cell dominates it (at least as fast, more accurate);
- *lose*: the peer's nearest cell that is **not slower** (smallest speedup >= the medprune cell's) is more
  accurate: the peer dominates the medprune cell;
- *tie*: neither (or both, a non-monotone peer curve); *n/a*: the peer has no cell on either side.

"More accurate" is decided twice, as for the equal-MACs verdicts (``_recovery_verdicts``, whose functions
this module calls): *verdict* with the family-wise correction, the Holm-adjusted two-sided paired-bootstrap
p of that comparison < 0.05, and *verdict_unadjusted* with the paired 95 % interval excluding 0. The family
is every distinct (medprune cell, peer cell) comparison of the table (one dataset x model x recovery state);
the p-values come from the very draws of the intervals, B >= 200 m (``n_boot_for``).

Speedups are single measurements on a shared machine (the load is recorded per cell), so two cells whose
speedups differ by a few percent are equally fast within measurement noise; the rule still orders them
as measured and the table shows both speedups.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._recovery_report import N_BOOT
from ._recovery_verdicts import (
    ALPHA,
    MEDPRUNE,
    group_of,
    holm,
    holm_outcome,
    interval_outcome,
    n_boot_for,
    paired_test,
    tally,
    tally_text,
)

SIGN = {"win": 1, "tie": 0, "lose": -1}


def neighbours(speedup: float, peer_speedups: list[float]) -> tuple[int | None, int | None]:
    """Indices of the peer cell not faster (largest speedup <= ``speedup``) and not slower (smallest >=)."""
    slower = [i for i, s in enumerate(peer_speedups) if s <= speedup]
    faster = [i for i, s in enumerate(peer_speedups) if s >= speedup]
    return (max(slower, key=lambda i: peer_speedups[i]) if slower else None,
            min(faster, key=lambda i: peer_speedups[i]) if faster else None)


def _outcome(side: dict, adjusted: bool) -> str:
    """One side's comparison as win/tie/lose for the medprune cell, by Holm p (``adjusted``) or by its interval."""
    return holm_outcome(side["diff_pts"], side["p_holm"]) if adjusted else interval_outcome(side["ci_pts"])


def verdict(vs_slower: dict | None, vs_faster: dict | None, adjusted: bool = False) -> str:
    """The rule (module docstring) from the two sides' paired comparisons of (medprune − peer) accuracy,
    points: by the 95 % interval, or by the Holm-adjusted p when ``adjusted``."""
    if vs_slower is None and vs_faster is None:
        return "n/a"
    dominates = vs_slower is not None and SIGN[_outcome(vs_slower, adjusted)] > 0
    dominated = vs_faster is not None and SIGN[_outcome(vs_faster, adjusted)] < 0
    return "win" if dominates and not dominated else "lose" if dominated and not dominates else "tie"


def _plan(mine: list[dict]) -> list[tuple[dict, str, dict | None, dict | None]]:
    """(medprune cell, peer, peer cell not faster, peer cell not slower) for each medprune cell x peer."""
    peers = sorted({r["criterion"] for r in mine} - set(MEDPRUNE))
    out = []
    for a in sorted((r for r in mine if r["criterion"] in MEDPRUNE), key=lambda r: (r["criterion"], r["speedup_ort"])):
        for peer in peers:
            cells = [r for r in mine if r["criterion"] == peer]
            lo, hi = neighbours(a["speedup_ort"], [r["speedup_ort"] for r in cells])
            out.append((a, peer, cells[lo] if lo is not None else None, cells[hi] if hi is not None else None))
    return out


def _tests(y: np.ndarray, probs: dict[str, np.ndarray], pairs: list[tuple[dict, dict]], n_boot: int) -> dict:
    """Paired test of each distinct (medprune cell, peer cell) pair on one set of draws, Holm-adjusted together."""
    from toolchain.intervals import stratified_counts

    chunks = list(stratified_counts(y, n_boot_for(len(pairs), n_boot), seed=0))
    out = {}
    for a, b in pairs:
        d = paired_test(y, chunks, probs[a["_key"]], probs[b["_key"]])
        out[(a["_key"], b["_key"])] = {"peer_target": b["target_macs_div"], "peer_speedup": b["speedup_ort"],
                                       "diff_pts": 100 * d["diff"], "ci_pts": [100 * c for c in d["ci"]],
                                       "n": d["n"], "n_boot": d["n_boot"], "p": d["p"], "family": len(pairs)}
    for side, adjusted in zip(out.values(), holm([s["p"] for s in out.values()]), strict=True):
        side["p_holm"] = adjusted
    return out


def table(run: dict, rows: list[dict], state: str, n_boot: int = N_BOOT) -> list[dict[str, Any]]:
    """One entry per medprune cell x peer in recovery ``state`` (``rows`` from the report, with ``_key``);
    ``n_boot``: the fewest draws (grown with the family, ``n_boot_for``)."""
    y = np.asarray(run["labels"]["test"])
    mine = [r for r in rows if r["state"] == state]
    probs = {r["_key"]: np.asarray(run["cells"][r["_key"]]["probs"][f"{state}/test"]) for r in mine}
    plan = _plan(mine)
    pairs = {(a["_key"], b["_key"]): (a, b) for a, _, *sides in plan for b in sides if b is not None}
    tests = _tests(y, probs, list(pairs.values()), n_boot)
    out = []
    for a, peer, slower, faster in plan:
        vs_slower, vs_faster = (tests[(a["_key"], b["_key"])] if b is not None else None for b in (slower, faster))
        out.append({"criterion": a["criterion"], "group": group_of(a["criterion"]),
                    "target_macs_div": a["target_macs_div"], "state": state, "speedup": a["speedup_ort"],
                    "peer": peer, "vs_not_faster": vs_slower, "vs_not_slower": vs_faster,
                    "verdict": verdict(vs_slower, vs_faster, adjusted=True),
                    "verdict_unadjusted": verdict(vs_slower, vs_faster)})
    return out


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points (speedup, accuracy) no other point dominates (>= on both, > on one)."""
    return [i for i, (s, a) in enumerate(points)
            if not any(s2 >= s and a2 >= a and (s2 > s or a2 > a) for s2, a2 in points)]


def _side(d: dict | None) -> str:
    if d is None:
        return "—"
    p = f", p {d['p']:.4f}, Holm {d['p_holm']:.4f}" if "p_holm" in d else ""
    return (f"÷{d['peer_target']:g} ×{d['peer_speedup']:.2f}: {d['diff_pts']:+.1f} "
            f"[{d['ci_pts'][0]:+.1f}, {d['ci_pts'][1]:+.1f}]{p}")


def markdown(entries: list[dict], state_label: str) -> list[str]:
    """The equal-latency table, its rule and family, and both tallies per group (``_recovery_verdicts.tally``)."""
    if not entries:
        return []
    sides = [e[k] for e in entries for k in ("vs_not_faster", "vs_not_slower") if e[k]]
    n = sides[0]["n"] if sides else None
    m, b = (max((s.get(k, 0) for s in sides), default=0) for k in ("family", "n_boot"))
    lines = [f"Equal measured latency ({state_label}; test accuracy difference medprune − peer, paired class-"
             f"stratified bootstrap over the same n={n} test images, points, B = {b} draws). Rule: win = more "
             "accurate than the peer's nearest cell that is not faster (dominates it); lose = the peer's nearest "
             "cell that is not slower is more accurate (dominated); else tie; n/a = no peer cell to compare. "
             f"**Family-wise correction: Holm–Bonferroni over the m = {m} distinct (medprune cell, peer cell) "
             f"comparisons of this table**; \"more accurate\" = Holm-adjusted two-sided bootstrap p < {ALPHA:g} "
             "(p = 2·min(P(d ≤ 0), P(d ≥ 0)) from the interval's draws, floored at 1/(B+1)). The unadjusted "
             "verdict (95 % interval excludes 0; intervals shown unadjusted) is beside it. Speedups are single "
             "measurements on a shared machine.", "",
             "| criterion | group | MACs ÷ target | ORT speedup | peer | vs peer not faster | vs peer not slower | "
             "verdict (Holm) | unadjusted |", "|---|---|---:|---:|---|---|---|---|---|"]
    for e in entries:
        corrected = "verdict_unadjusted" in e  # entries assembled before the correction hold the interval rule
        lines.append(f"| {e['criterion']} | {e.get('group') or group_of(e['criterion']) or 'other'} | "
                     f"{e['target_macs_div']:g} | ×{e['speedup']:.2f} | {e['peer']} | {_side(e['vs_not_faster'])} | "
                     f"{_side(e['vs_not_slower'])} | {e['verdict'] if corrected else 'n/a'} | "
                     f"{e.get('verdict_unadjusted', e['verdict'])} |")
    return lines + ["", f"Tally at equal measured latency (m = {m}): {tally_text(tally(entries))}", ""]
