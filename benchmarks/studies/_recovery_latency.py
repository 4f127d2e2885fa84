"""Criteria at equal measured latency: each medprune criterion's cell against each peer's cells by ORT speedup.

Cells at the same MACs target differ in measured speedup (the criteria remove different layers'
units), so the equal-MACs verdicts do not answer "at equal latency". Rule (no interpolation, only measured
cells of one recovery state, paired bootstrap over the same test images):

- *win*: the medprune cell is more accurate on test (paired 95 % interval of the difference > 0) than
  the peer's nearest cell that is **not faster** (largest speedup <= the medprune cell's): the medprune
  cell dominates it (at least as fast, more accurate);
- *lose*: the peer's nearest cell that is **not slower** (smallest speedup >= the medprune cell's) is more
  accurate (interval < 0): the peer dominates the medprune cell;
- *tie*: neither (or both, a non-monotone peer curve); *n/a*: the peer has no cell on either side.

Speedups are single measurements on a shared machine (the load is recorded per cell), so two cells whose
speedups differ by a few percent are equally fast within measurement noise; the rule still orders them
as measured and the table shows both speedups.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._recovery_report import N_BOOT
from ._recovery_verdicts import MEDPRUNE, group_of


def neighbours(speedup: float, peer_speedups: list[float]) -> tuple[int | None, int | None]:
    """Indices of the peer cell not faster (largest speedup <= ``speedup``) and not slower (smallest >=)."""
    slower = [i for i, s in enumerate(peer_speedups) if s <= speedup]
    faster = [i for i, s in enumerate(peer_speedups) if s >= speedup]
    return (max(slower, key=lambda i: peer_speedups[i]) if slower else None,
            min(faster, key=lambda i: peer_speedups[i]) if faster else None)


def verdict(vs_slower: dict | None, vs_faster: dict | None) -> str:
    """The rule (module docstring) from the paired intervals of (medprune − peer) accuracy, points."""
    if vs_slower is None and vs_faster is None:
        return "n/a"
    dominates = vs_slower is not None and vs_slower["ci_pts"][0] > 0
    dominated = vs_faster is not None and vs_faster["ci_pts"][1] < 0
    return "win" if dominates and not dominated else "lose" if dominated and not dominates else "tie"


def table(run: dict, rows: list[dict], state: str, n_boot: int = N_BOOT) -> list[dict[str, Any]]:
    """One entry per medprune cell x peer in recovery ``state`` (``rows`` from the report, with ``_key``)."""
    from toolchain.metrics import paired_bootstrap_diff

    y = np.asarray(run["labels"]["test"])
    mine = [r for r in rows if r["state"] == state]
    probs = {r["_key"]: np.asarray(run["cells"][r["_key"]]["probs"][f"{state}/test"]) for r in mine}
    memo: dict[tuple[str, str], dict] = {}

    def diff(a: dict, b: dict) -> dict:
        if (a["_key"], b["_key"]) not in memo:
            d = paired_bootstrap_diff(y, probs[a["_key"]], probs[b["_key"]], "accuracy", n_boot=n_boot)
            memo[(a["_key"], b["_key"])] = {"peer_target": b["target_macs_div"], "peer_speedup": b["speedup_ort"],
                                            "diff_pts": 100 * d["diff"], "ci_pts": [100 * c for c in d["ci"]],
                                            "n": d["n"]}
        return memo[(a["_key"], b["_key"])]

    out = []
    peers = sorted({r["criterion"] for r in mine} - set(MEDPRUNE))
    for a in sorted((r for r in mine if r["criterion"] in MEDPRUNE),
                    key=lambda r: (r["criterion"], r["speedup_ort"])):
        for peer in peers:
            cells = [r for r in mine if r["criterion"] == peer]
            lo, hi = neighbours(a["speedup_ort"], [r["speedup_ort"] for r in cells])
            vs_slower = diff(a, cells[lo]) if lo is not None else None
            vs_faster = diff(a, cells[hi]) if hi is not None else None
            out.append({"criterion": a["criterion"], "target_macs_div": a["target_macs_div"], "state": state,
                        "speedup": a["speedup_ort"], "peer": peer, "vs_not_faster": vs_slower,
                        "vs_not_slower": vs_faster, "verdict": verdict(vs_slower, vs_faster)})
    return out


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points (speedup, accuracy) no other point dominates (>= on both, > on one)."""
    return [i for i, (s, a) in enumerate(points)
            if not any(s2 >= s and a2 >= a and (s2 > s or a2 > a) for s2, a2 in points)]


def _side(d: dict | None) -> str:
    if d is None:
        return "—"
    return (f"÷{d['peer_target']:g} ×{d['peer_speedup']:.2f}: {d['diff_pts']:+.1f} "
            f"[{d['ci_pts'][0]:+.1f}, {d['ci_pts'][1]:+.1f}]")


def markdown(entries: list[dict], state_label: str) -> list[str]:
    if not entries:
        return []
    n = next((e[k]["n"] for e in entries for k in ("vs_not_faster", "vs_not_slower") if e[k]), None)
    lines = [f"Equal measured latency ({state_label}; test accuracy difference medprune − peer, paired bootstrap, "
             f"points, n={n}). Rule: win = more accurate than the peer's nearest cell that is not faster (dominates "
             "it); lose = the peer's nearest cell that is not slower is more accurate (dominated); else tie; "
             "n/a = no peer cell to compare. Speedups are single measurements on a shared machine.", "",
             "| criterion | MACs ÷ target | ORT speedup | peer | vs peer not faster | vs peer not slower | verdict |",
             "|---|---:|---:|---|---|---|---|"]
    for e in entries:
        lines.append(f"| {e['criterion']} | {e['target_macs_div']:g} | ×{e['speedup']:.2f} | {e['peer']} | "
                     f"{_side(e['vs_not_faster'])} | {_side(e['vs_not_slower'])} | {e['verdict']} |")
    tally: dict[str, int] = {}
    for e in entries:
        tally[e["verdict"]] = tally.get(e["verdict"], 0) + 1
    groups: dict[str, dict[str, int]] = {}  # attribution and medprune taylor apart (_recovery_verdicts.GROUPS)
    for e in entries:
        g = groups.setdefault(group_of(e["criterion"]) or "other", {})
        g[e["verdict"]] = g.get(e["verdict"], 0) + 1
    by_group = "; ".join(f"{g}: " + ", ".join(f"{k} {v}" for k, v in sorted(t.items())) for g, t in groups.items())
    return lines + ["", f"Tally at equal measured latency: {', '.join(f'{k} {v}' for k, v in sorted(tally.items()))}"
                    f" (by group: {by_group}; unadjusted for multiplicity)", ""]
