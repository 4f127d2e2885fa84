"""The selection protocol of the protocol grid, as pure functions of probabilities and cost points.

**Lossless rule (decided on the whole val split).** A pruned model passes when the upper end of the
95 % paired, class-stratified bootstrap interval (``toolchain.metrics.paired_bootstrap_diff``) of the
accuracy drop (dense - pruned) is at most ``tolerance`` points and that of every class's sensitivity
drop at most ``sens_tolerance`` points. The selected ratio is the largest grid ratio such that it and
every smaller grid ratio pass (a ratio beyond the first failure is never chosen, so val stops there).

**Holds on test.** Test is read once the ratio is chosen: the choice holds when the *point* accuracy
drop on test is <= ``tolerance`` and every class's point sensitivity drop <= ``sens_tolerance``.

**Equal cost.** Criteria are compared at equal MACs / parameters of the physically removed model by
the first grid ratio whose cost fraction is at most the budget: a measured point (exact interval),
not an interpolation; its actual cost is reported beside it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from toolchain.errors import ConfigError
from toolchain.lossless import drops, passes_bound, passes_point

__all__ = ["drops", "passes_bound", "passes_point", "select_ratio", "both_failed", "holds_fraction", "at_budget",
           "metric_ci"]

SUMMARY_KEYS = ("accuracy", "balanced_accuracy")


def select_ratio(ratios: Sequence[float], passed: Sequence[bool]) -> float:
    """Largest ratio whose own and every smaller ratio's check passed; 0.0 (dense) when the smallest fails."""
    if len(ratios) != len(passed):
        raise ConfigError(f"{len(ratios)} ratios but {len(passed)} pass flags")
    chosen = 0.0
    for r, ok in sorted(zip(ratios, passed, strict=True)):
        if not ok:
            break
        chosen = float(r)
    return chosen


def both_failed(points: Sequence[Mapping]) -> bool:
    """Whether the bound rule and the point rule have each failed at some evaluated ratio (ratio order):
    :func:`select_ratio` can then choose no later ratio under either rule, so val may stop."""
    return (any(not p["val_pass_bound"] for p in points)
            and any(not p["val_pass_point"] for p in points))


def holds_fraction(holds: Sequence[bool]) -> dict:
    """``k`` of ``n`` cells hold, the fraction and its exact (Clopper-Pearson) 95 % interval."""
    from toolchain.intervals import clopper_pearson

    k, n = int(sum(bool(h) for h in holds)), len(holds)
    if n == 0:
        return {"k": 0, "n": 0, "fraction": None, "ci": None}
    return {"k": k, "n": n, "fraction": k / n, "ci": list(clopper_pearson(k, n))}


def at_budget(points: Sequence[Mapping], key: str, budget: float) -> Mapping | None:
    """The point of smallest ``ratio`` whose ``key`` (a cost fraction of the dense model) is <= ``budget``;
    None when no evaluated ratio reaches the budget."""
    if not 0 < budget <= 1:
        raise ConfigError(f"a cost budget is a fraction of the dense model in (0, 1], got {budget}")
    meeting = [p for p in points if p.get(key) is not None and p[key] <= budget + 1e-12]
    return min(meeting, key=lambda p: p["ratio"]) if meeting else None


def metric_ci(m: Mapping, key: str) -> dict:
    """``{"value", "ci", "n"}`` of one accuracy-like figure of a ``compute_metrics`` dict."""
    return {"value": m.get(key), "ci": m.get(f"{key}_ci"), "n": m.get("n")}


def cell_id(cell: Mapping) -> tuple:
    """What makes a cell of one checkpoint: criterion, normalisation and (attribution only) sampling."""
    return cell["criterion"], cell["normalize"], cell.get("sampling") if cell.get("attribution") else None


def summarise(models: Sequence[Mapping]) -> dict:
    """Per criterion (and normalisation, all samplings pooled), per sampling of the attribution cells, per
    ``dataset/model`` (its checkpoints pooled) and over all attribution cells: how many val choices hold on test."""
    cells = [c for m in models for c in m["cells"]]
    attr = [c for c in cells if c["attribution"]]

    def fractions(group: Sequence[Mapping]) -> dict:
        return {"bound_rule": holds_fraction([c["selected"]["holds"] for c in group]),
                "point_rule": holds_fraction([c["selected_point_rule"]["holds"] for c in group]),
                "dense_selected": sum(c["selected"]["dense"] for c in group)}

    groups: dict[str, list] = {}
    samplings: dict[str, list] = {}
    for c in cells:
        groups.setdefault(f"{c['criterion']}/{c['normalize']}", []).append(c)
    for c in attr:
        samplings.setdefault(str(c.get("sampling")), []).append(c)
    per_model: dict[str, list] = {}
    for m in models:
        per_model.setdefault(f"{m.get('dataset')}/{m['model']}", []).extend(c for c in m["cells"] if c["attribution"])
    return {"per_criterion": {k: fractions(v) for k, v in groups.items()},
            "per_sampling": {k: fractions(v) for k, v in samplings.items()},
            "per_model": {k: fractions(v) for k, v in per_model.items() if v}, "attribution": fractions(attr)}
