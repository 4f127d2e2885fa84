"""The paper's six claims, each judged by a fixed rule on the grid's rows (never written by hand).

``rows_of`` flattens the results JSON written by ``medprune study paper_grid`` into one :class:`Row` per
(cell, ratio); ``judge_claims`` returns a verdict per claim (CONFIRMED / REFUTED / PARTIAL / NOT TESTED).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

ATTRIBUTION = ("lrp", "dlb", "ig")  # the paper's attribution criteria
PAPER_RANGES = {"vgg19": (0.45, 0.55), "resnet50": (0.25, 0.35), "vit_b16": (0.65, 0.85)}
LOW_RATIO = 0.3  # "low" pruning ratios for claim 6
CONFIRMED, REFUTED, PARTIAL, UNTESTED = "CONFIRMED", "REFUTED", "PARTIAL", "NOT TESTED"


# ---------------------------------------------------------------- flattening


@dataclass
class Row:
    dataset: str
    model: str
    criterion: str
    sampling: str
    data_free: bool
    dense_acc: float | None
    n_test: int | None
    dense_bal: float | None = None
    acc: dict[float, float] = field(default_factory=dict)  # test accuracy per ratio
    bal: dict[float, float] = field(default_factory=dict)
    auc: dict[float, float | None] = field(default_factory=dict)
    lossless: float | None = None  # selected on val
    lossless_acc: float | None = None  # test accuracy at it
    lossless_bal: float | None = None
    fidelity: dict[str, dict] = field(default_factory=dict)


def rows_of(results: dict) -> list[Row]:
    """One Row per finished grid cell (cells that failed or did not run are skipped)."""
    out = []
    for cell in results.get("cells", []):
        res = cell.get("result")
        if not res:
            continue
        model = (results.get("models", {}).get(cell["dataset"]) or {}).get(cell["model"]) or {}
        dense_test = (model.get("dense") or {}).get("test") or {}
        row = Row(cell["dataset"], cell["model"], cell["criterion"], cell["sampling"], bool(cell.get("data_free")),
                  dense_test.get("accuracy"), dense_test.get("n"), dense_test.get("balanced_accuracy"))
        for key, m in (res.get("ratios") or {}).items():
            r = float(key)
            row.acc[r], row.bal[r], row.auc[r] = m.get("accuracy"), m.get("balanced_accuracy"), m.get("auc")
        lossless = res.get("lossless") or {}
        row.lossless = lossless.get("ratio")
        row.lossless_acc = (lossless.get("test") or {}).get("accuracy")
        row.lossless_bal = (lossless.get("test") or {}).get("balanced_accuracy")
        row.fidelity = {k: v for k, v in (res.get("fidelity") or {}).items() if isinstance(v, dict)}
        out.append(row)
    return out


def _mean(values: Iterable) -> float | None:
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    return float(np.mean(v)) if v else None


def _ordered(values: Iterable[str], order: Iterable[str]) -> list[str]:
    values = list(dict.fromkeys(values))
    order = list(order)
    return sorted(values, key=lambda v: (order.index(v) if v in order else len(order), v))


def _f(v, digits: int = 3) -> str:
    return "—" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"


def _pct(v) -> str:
    return "—" if v is None else f"{100 * v:.0f} %"


# ---------------------------------------------------------------- claims


@dataclass
class Claim:
    number: int
    text: str
    verdict: str
    evidence: str
    rule: str


def _combine(verdicts: list[str]) -> str:
    tested = [v for v in verdicts if v != UNTESTED]
    if not tested:
        return UNTESTED
    if all(v == CONFIRMED for v in tested):
        return CONFIRMED
    if all(v == REFUTED for v in tested):
        return REFUTED
    return PARTIAL


def _ranking(values: dict[str, float | None]) -> list[tuple[str, float]]:
    return sorted(((k, v) for k, v in values.items() if v is not None), key=lambda kv: -kv[1])


def _top(ranking: list[tuple[str, float]], name: str) -> str:
    """'unique' when ``name`` alone is first, 'tie' when it shares first place, '' otherwise."""
    if not ranking:
        return ""
    best = ranking[0][1]
    firsts = [k for k, v in ranking if abs(v - best) < 1e-12]
    if name not in firsts:
        return ""
    return "unique" if len(firsts) == 1 else "tie"


def _fmt_rank(ranking: list[tuple[str, float]], pct: bool = False) -> str:
    return " > ".join(f"{k} {_pct(v) if pct else _f(v)}" for k, v in ranking)


def _by_dataset(rows: list[Row]) -> dict[str, list[Row]]:
    out: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        out[r.dataset].append(r)
    return dict(out)


def _lossless_by(rows: list[Row], key: Callable[[Row], str]) -> dict[str, float | None]:
    groups: dict[str, list] = defaultdict(list)
    for r in rows:
        groups[key(r)].append(r.lossless)
    return {k: _mean(v) for k, v in groups.items()}


def _acc_by(rows: list[Row], key: Callable[[Row], str]) -> dict[str, float | None]:
    groups: dict[str, list] = defaultdict(list)
    for r in rows:
        groups[key(r)].extend(r.acc.values())
    return {k: _mean(v) for k, v in groups.items()}


def claim_vit_most_robust(rows: list[Row]) -> Claim:
    rule = ("per dataset, mean lossless ratio of each model over the attribution criteria (lrp, dlb, ig; all "
            "criteria when none ran) and all samplings; CONFIRMED when vit_b16 is strictly largest on every "
            "dataset, REFUTED when on none, PARTIAL otherwise (ties count as not strictly largest)")
    verdicts, parts = [], []
    for ds, rs in _by_dataset(rows).items():
        attr = [r for r in rs if r.criterion in ATTRIBUTION] or rs
        ranking = _ranking(_lossless_by(attr, lambda r: r.model))
        if "vit_b16" not in dict(ranking) or len(ranking) < 2:
            verdicts.append(UNTESTED)
            parts.append(f"{ds}: needs vit_b16 and another model")
            continue
        top = _top(ranking, "vit_b16")
        verdicts.append(CONFIRMED if top == "unique" else REFUTED)
        parts.append(f"{ds}: {_fmt_rank(ranking, pct=True)}" + (" (vit_b16 tied first)" if top == "tie" else ""))
    return Claim(1, "ViT is the most robust model (largest lossless ratio)", _combine(verdicts), "; ".join(parts), rule)


def _range_verdict(rows: list[Row], model: str) -> tuple[str, str]:
    lo, hi = PAPER_RANGES[model]
    verdicts, parts = [], []
    for ds, rs in _by_dataset(rows).items():
        mine = [r for r in rs if r.model == model and r.criterion == "lrp"]
        basis = "lrp"
        if not mine:
            mine = [r for r in rs if r.model == model and r.criterion in ATTRIBUTION]
            basis = "attribution criteria"
        values = [r.lossless for r in mine if r.lossless is not None]
        if not values:
            verdicts.append(UNTESTED)
            continue
        mean = float(np.mean(values))
        inside = [lo - 1e-9 <= v <= hi + 1e-9 for v in values]
        if lo - 1e-9 <= mean <= hi + 1e-9:
            verdicts.append(CONFIRMED)
        elif any(inside):
            verdicts.append(PARTIAL)
        else:
            verdicts.append(REFUTED)
        parts.append(f"{ds}: {model} ({basis}) mean {_pct(mean)}, per sampling "
                     + ", ".join(f"{r.sampling} {_pct(r.lossless)}" for r in mine))
    return _combine(verdicts), "; ".join(parts) or f"{model} not run"


_RANGE_RULE = ("lossless ratio of the model with LRP (the paper's method; lrp/dlb/ig when LRP did not run), "
               "searched on val; CONFIRMED when its mean over samplings lies in the range, PARTIAL when only some "
               "samplings do, REFUTED when none does; combined over datasets")


def claim_vgg_range(rows: list[Row]) -> Claim:
    verdict, evidence = _range_verdict(rows, "vgg19")
    return Claim(2, "VGG19 is lossless up to 45–55 % pruning", verdict, evidence, _RANGE_RULE)


def claim_resnet_vit_ranges(rows: list[Row]) -> Claim:
    v1, e1 = _range_verdict(rows, "resnet50")
    v2, e2 = _range_verdict(rows, "vit_b16")
    tested = [v for v in (v1, v2) if v != UNTESTED]
    verdict = _combine(tested) if tested else UNTESTED
    return Claim(3, "ResNet50 is lossless up to 25–35 %, ViT-B/16 up to 65–85 %", verdict,
                 f"ResNet50 → {v1}: {e1}. ViT → {v2}: {e2}", _RANGE_RULE + "; both sub-claims combined")


def claim_lrp_best(rows: list[Row]) -> Claim:
    rule = ("criteria ranked over all models, samplings and datasets by (a) mean lossless ratio and (b) mean test "
            "accuracy over the fixed ratios; CONFIRMED when LRP is strictly first in both and DLB and IG (both run) "
            "hold places 2–3 in both, PARTIAL when LRP is first (or tied first) in at least one, REFUTED otherwise")
    if not any(r.criterion == "lrp" for r in rows):
        return Claim(4, "LRP is the best criterion, then DLB and IG", UNTESTED, "lrp not run", rule)
    lossless = _ranking(_lossless_by(rows, lambda r: r.criterion))
    acc = _ranking(_acc_by(rows, lambda r: r.criterion))
    follow = {c for c in ("dlb", "ig") if any(r.criterion == c for r in rows)}

    def full(ranking):
        return _top(ranking, "lrp") == "unique" and {k for k, _ in ranking[1:1 + len(follow)]} == follow

    if full(lossless) and full(acc) and follow == {"dlb", "ig"}:
        verdict = CONFIRMED
    elif _top(lossless, "lrp") or _top(acc, "lrp"):
        verdict = PARTIAL
    else:
        verdict = REFUTED
    evidence = f"by mean lossless ratio: {_fmt_rank(lossless, pct=True)}; by mean test accuracy: {_fmt_rank(acc)}"
    return Claim(4, "LRP is the best criterion, then DLB and IG", verdict, evidence, rule)


def claim_clustering_best(rows: list[Row]) -> Claim:
    rule = ("samplings ranked over the data-dependent criteria (data-free ones ignore sampling), all models and "
            "datasets, by (a) mean lossless ratio and (b) mean test accuracy over the fixed ratios; CONFIRMED "
            "when clustering is strictly first in both, PARTIAL when first (or tied first) in one, REFUTED otherwise")
    dep = [r for r in rows if not r.data_free]
    if not any(r.sampling == "clustering" for r in dep) or len({r.sampling for r in dep}) < 2:
        return Claim(5, "Clustering-based reference sampling is best", UNTESTED, "needs clustering and another "
                     "sampling with a data-dependent criterion", rule)
    lossless = _ranking(_lossless_by(dep, lambda r: r.sampling))
    acc = _ranking(_acc_by(dep, lambda r: r.sampling))
    tops = [_top(lossless, "clustering"), _top(acc, "clustering")]
    verdict = CONFIRMED if tops == ["unique", "unique"] else PARTIAL if any(tops) else REFUTED
    evidence = f"by mean lossless ratio: {_fmt_rank(lossless, pct=True)}; by mean test accuracy: {_fmt_rank(acc)}"
    return Claim(5, "Clustering-based reference sampling is best", verdict, evidence, rule)


def claim_low_ratios_improve(rows: list[Row]) -> Claim:
    rule = (f"count (cell, ratio <= {LOW_RATIO}) whose test accuracy exceeds the dense model's; CONFIRMED when at "
            "least one gain is larger than one test image (1/n), PARTIAL when gains exist but none exceeds one "
            "image (within noise), REFUTED when no low ratio beats dense")
    gains = []
    total = 0
    for r in rows:
        if r.dense_acc is None:
            continue
        for ratio, acc in r.acc.items():
            if ratio <= LOW_RATIO + 1e-9 and acc is not None:
                total += 1
                if acc > r.dense_acc + 1e-12:
                    gains.append((acc - r.dense_acc, r, ratio))
    if not total:
        return Claim(6, "Low pruning ratios sometimes improve accuracy", UNTESTED, f"no ratio <= {LOW_RATIO} ran",
                     rule)
    one_image = [g for g, r, _ in gains if r.n_test and g > 1.0 / r.n_test + 1e-12]
    verdict = CONFIRMED if one_image else PARTIAL if gains else REFUTED
    evidence = f"{len(gains)} of {total} low-ratio evaluations beat dense ({len(one_image)} by more than one image)"
    if gains:
        g, r, ratio = max(gains, key=lambda t: t[0])
        evidence += (f"; largest gain +{100 * g:.1f} points: {r.dataset}/{r.model}/{r.criterion}/{r.sampling} "
                     f"at {ratio:g} ({_f(r.dense_acc)} → {_f(r.acc[ratio])})")
    return Claim(6, "Low pruning ratios sometimes improve accuracy", verdict, evidence, rule)


def judge_claims(results: dict) -> list[Claim]:
    rows = rows_of(results)
    return [claim_vit_most_robust(rows), claim_vgg_range(rows), claim_resnet_vit_ranges(rows),
            claim_lrp_best(rows), claim_clustering_best(rows), claim_low_ratios_improve(rows)]
