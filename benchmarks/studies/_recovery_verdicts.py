"""Verdicts of the recovery study: each medprune criterion against each peer at the same MACs target and recovery
state, on test accuracy (paired bootstrap over the same test images), with a family-wise correction.

Groups. *Attribution* is the mission's attribution criteria, read from their one home
(``paper.claims.ATTRIBUTION``: lrp, dlb, ig). medprune's ``taylor`` (gradient x activation) is a data-driven
first-order criterion of the same family as Torch-Pruning's group Taylor (``tp-taylor``), so its comparisons
are tallied on their own row, *medprune taylor*, and never count for attribution. Peers are every other
criterion of the run (Torch-Pruning's importances, random).

Multiplicity. One table (dataset x model x recovery state) holds up to 60 comparisons. Each gets a two-sided
bootstrap p-value from the very draws its interval comes from, p = 2 min(P(d <= 0), P(d >= 0)) floored at
1/(B+1), and the p-values of the table are Holm-Bonferroni adjusted together (attribution and taylor rows
alike: one family). *win*/*lose* needs the adjusted p < ``ALPHA`` (sign of the difference), else *tie*; the
unadjusted rule (95 % interval excludes 0) is kept beside it so the correction's effect is visible. B grows
with the family (``n_boot_for``) so the floor of p cannot by itself make every comparison a tie.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from .paper.claims import ATTRIBUTION

ALPHA = 0.05
# group -> criteria; a criterion in no group is a peer
GROUPS: dict[str, tuple[str, ...]] = {"attribution": tuple(ATTRIBUTION), "medprune taylor": ("taylor",)}
MEDPRUNE = tuple(c for members in GROUPS.values() for c in members)  # every medprune criterion judged vs peers
OUTCOMES = ("win", "tie", "lose")


def group_of(criterion: str) -> str | None:
    """The verdict group of ``criterion`` (``GROUPS``), None for a peer."""
    return next((g for g, members in GROUPS.items() if criterion in members), None)


def n_boot_for(family: int, floor: int) -> int:
    """Bootstrap draws for a family of ``family`` comparisons: at least ``floor``, and enough that the smallest
    p-value (1/(B+1)) times the family size stays <= ALPHA/10, so Holm can reject when the data allow it."""
    if family < 0 or floor < 1:
        raise ValueError(f"need family >= 0 and floor >= 1, got {family}, {floor}")
    return max(int(floor), math.ceil(10 * family / ALPHA))


def bootstrap_p(replicates) -> float:
    """Two-sided p of "no difference" from bootstrap replicates ``d``: 2 min(P(d <= 0), P(d >= 0)), floored at
    1/(B+1) (B finite replicates) and capped at 1."""
    d = np.asarray(replicates, dtype=np.float64).reshape(-1)
    d = d[np.isfinite(d)]
    if d.size == 0:
        raise ValueError("no finite bootstrap replicate")
    return float(min(1.0, max(2.0 * min(np.mean(d <= 0), np.mean(d >= 0)), 1.0 / (d.size + 1))))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order: sorted ascending, the i-th (from 0) is multiplied by
    m - i, made non-decreasing and capped at 1. Reject where adjusted p < alpha (family-wise error <= alpha)."""
    p = np.asarray(pvalues, dtype=np.float64).reshape(-1)
    if p.size and not (np.all(np.isfinite(p)) and p.min() >= 0 and p.max() <= 1):
        raise ValueError(f"p-values must lie in [0, 1], got {p.tolist()}")
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, np.maximum.accumulate(p[order] * (p.size - np.arange(p.size))))
    out = np.empty_like(p)
    out[order] = scaled
    return out.tolist()


def interval_outcome(ci) -> str:
    """The unadjusted rule: *win*/*lose* when the 95 % interval of (medprune - peer) excludes 0, else *tie*."""
    lo, hi = ci
    return "win" if lo > 0 else "lose" if hi < 0 else "tie"


def holm_outcome(diff: float, p_holm: float) -> str:
    """The corrected rule: *win*/*lose* (sign of ``diff``) when the Holm-adjusted p < ``ALPHA``, else *tie*."""
    return "tie" if p_holm >= ALPHA or diff == 0 else "win" if diff > 0 else "lose"


def paired_test(y: np.ndarray, chunks: list[np.ndarray], pa: np.ndarray, pb: np.ndarray) -> dict[str, Any]:
    """accuracy(a) - accuracy(b): point value, percentile 95 % interval and bootstrap p from the same draws
    (``chunks``: ``toolchain.intervals.stratified_counts``, the draws ``paired_bootstrap_diff`` makes; the
    equal-latency table (``_recovery_latency``) tests its pairs with it too)."""
    from toolchain.intervals import percentile_interval
    from toolchain.metrics import accuracy

    ones = np.ones((1, len(y)))
    reps = np.concatenate([accuracy(y, pa, c) - accuracy(y, pb, c) for c in chunks])
    diff = float((accuracy(y, pa, ones) - accuracy(y, pb, ones))[0])
    return {"diff": diff, "ci": list(percentile_interval(reps)), "p": bootstrap_p(reps), "n": int(len(y)),
            "n_boot": int(reps.size)}


def verdicts(run: dict, rows: list[dict], states: Sequence[str], n_boot: int) -> list[dict]:
    """Each medprune criterion vs each peer at the same target and state (test), Holm-adjusted per state.
    ``states``: the recovery states in report order; ``n_boot``: the fewest draws (``n_boot_for``)."""
    from toolchain.intervals import stratified_counts

    index = {(r["criterion"], r["target_macs_div"], r["state"]): r for r in rows}
    peers = sorted({r["criterion"] for r in rows} - set(MEDPRUNE))
    pairs = [(r, index[(peer, target, state)])
             for (crit, target, state), r in sorted(index.items(), key=lambda kv: (kv[0][1], states.index(kv[0][2]),
                                                                                   kv[0][0]))
             if crit in MEDPRUNE for peer in peers if (peer, target, state) in index]
    family = Counter(a["state"] for a, _ in pairs)
    y = np.asarray(run["labels"]["test"])
    chunks = list(stratified_counts(y, n_boot_for(max(family.values(), default=0), n_boot), seed=0))
    out = []
    for a, b in pairs:
        state = a["state"]
        d = paired_test(y, chunks, *(np.asarray(run["cells"][r["_key"]]["probs"][f"{state}/test"]) for r in (a, b)))
        lo, hi = d["ci"]
        out.append({"criterion": a["criterion"], "group": group_of(a["criterion"]), "peer": b["criterion"],
                    "target_macs_div": a["target_macs_div"], "state": state, "recovered": state != "none",
                    "macs_ratio": [a["macs_ratio"], b["macs_ratio"]], "diff_pts": 100 * d["diff"],
                    "ci_pts": [100 * lo, 100 * hi], "n": d["n"], "n_boot": d["n_boot"], "p": d["p"],
                    "family": family[state],
                    "verdict_unadjusted": interval_outcome((lo, hi))})
    for state in family:
        mine = [v for v in out if v["state"] == state]
        for v, adjusted in zip(mine, holm([v["p"] for v in mine]), strict=True):
            v["p_holm"] = adjusted
            v["verdict"] = holm_outcome(v["diff_pts"], adjusted)
    return out


def tally(verdicts: list[dict], state: str | None = None) -> dict[str, dict[str, dict[str, int] | None]]:
    """Per group, the outcomes with the Holm correction (``holm``; None for verdicts assembled before it) and
    without (``unadjusted``), over the verdicts of ``state`` (all states when None). A verdict is corrected when it
    carries its unadjusted twin (``verdict_unadjusted``; both rules were added together), so the equal-latency
    entries, whose Holm p-values sit on their two sides, tally here too."""
    out: dict[str, dict[str, dict[str, int] | None]] = {}
    for v in verdicts:
        if state is not None and v.get("state") != state:
            continue
        g = out.setdefault(v.get("group") or group_of(v["criterion"]) or "other", {"holm": {}, "unadjusted": {}})
        corrected = "verdict_unadjusted" in v
        unadjusted = v.get("verdict_unadjusted", v["verdict"])  # before the correction "verdict" was the CI rule
        g["unadjusted"][unadjusted] = g["unadjusted"].get(unadjusted, 0) + 1
        if corrected and g["holm"] is not None:
            g["holm"][v["verdict"]] = g["holm"].get(v["verdict"], 0) + 1
        else:
            g["holm"] = None
    return out


def _counts(c: dict[str, int] | None) -> str:
    if c is None:
        return "n/a (assembled before the correction)"
    # outcomes beyond win/tie/lose (the equal-latency table's n/a: no peer cell on either side) follow them
    return " ".join(f"{k} {c.get(k, 0)}" for k in (*OUTCOMES, *sorted(set(c) - set(OUTCOMES))))


def tally_text(t: dict[str, dict[str, dict[str, int] | None]]) -> str:
    """``attribution: Holm win 1 tie 9 lose 0 (unadjusted win 3 tie 7 lose 0); medprune taylor: ...``."""
    return "; ".join(f"{g}: Holm {_counts(c['holm'])} (unadjusted {_counts(c['unadjusted'])})"
                     for g, c in sorted(t.items(), key=lambda kv: list(GROUPS).index(kv[0]) if kv[0] in GROUPS
                                        else len(GROUPS))) or "none"


def markdown(verdicts: list[dict], state_labels: dict[str, str]) -> list[str]:
    """The verdict table and, per recovery state, both tallies per group."""
    if not verdicts:
        return ["", "Verdicts: none (no medprune criterion and peer share a MACs target and state).", ""]
    b = max(v.get("n_boot", 0) for v in verdicts)
    lines = ["", f"Verdicts (test accuracy difference, medprune criterion − peer, points; paired class-stratified "
             f"bootstrap over the same n test images, B = {b} draws). Groups: attribution = "
             f"{', '.join(GROUPS['attribution'])}; medprune taylor = taylor (gradient × activation, the first-order "
             "family of tp-taylor: tallied on its own, never as attribution); peers = the other criteria. The 95 % "
             "interval is unadjusted. p: two-sided, from the same draws, 2·min(P(d ≤ 0), P(d ≥ 0)), floored at "
             "1/(B+1). **Family-wise correction: Holm–Bonferroni over the m comparisons of one recovery state of "
             f"this dataset × model** (attribution and taylor rows together); verdict = win/lose when the Holm-"
             f"adjusted p < {ALPHA:g} (sign of the difference), else tie. Unadjusted verdict (interval excludes 0) "
             "beside it.", "",
             "| criterion | group | peer | MACs ÷ | recovery | diff [95 % CI] (n) | p | Holm p (m) | verdict | "
             "unadjusted |", "|---|---|---|---:|---|---:|---:|---:|---|---|"]
    for v in verdicts:
        lines.append(f"| {v['criterion']} | {v['group']} | {v['peer']} | {v['target_macs_div']:g} | "
                     f"{state_labels.get(v['state'], v['state'])} | {v['diff_pts']:+.1f} [{v['ci_pts'][0]:+.1f}, "
                     f"{v['ci_pts'][1]:+.1f}] (n={v['n']}) | {v['p']:.4f} | {v['p_holm']:.4f} ({v['family']}) | "
                     f"{v['verdict']} | {v['verdict_unadjusted']} |")
    lines.append("")
    for state in dict.fromkeys(v["state"] for v in verdicts):
        lines.append(f"Tally, recovery {state_labels.get(state, state)} (m = {sum(v['state'] == state for v in verdicts)}): "
                     + tally_text(tally(verdicts, state)) + "  ")
    return lines + [""]
