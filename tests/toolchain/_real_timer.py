"""Checks shared by the real-timer budget tests (``test_budget_real_timer``, ``test_deploy_latency_budget``): a
pass-through spy on ``toolchain.budget.ort_latency_ms`` and the consistency of a budget search's record with what
the timer returned. No assertion is on a timed value (machines are noisy), only on the tool's bookkeeping."""

from __future__ import annotations

import pytest
import torch

import toolchain.budget as budget_mod
from toolchain.budget import Budget, meets

MEASURED = "measured: onnxruntime CPU batch 1, this machine"


def spy_ort_timer(monkeypatch) -> list[dict]:
    """Every result of the real ``ort_latency_ms`` during the test (it still times; nothing is replaced)."""
    real, seen = budget_mod.ort_latency_ms, []

    def spy(models, example, *args, **kwargs):
        out = real(models, example, *args, **kwargs)
        seen.append(out)
        return out

    monkeypatch.setattr(budget_mod, "ort_latency_ms", spy)
    return seen


def dense_median_ms(model: torch.nn.Module, x: torch.Tensor) -> float:
    return budget_mod.ort_latency_ms({"dense": model}, x, repeats=50)["dense"]["median_ms"]


def check_search(search: dict, budget: Budget, timings: list[dict], resolution: float, max_ratio: float) -> None:
    """The search's record (``Found.summary()``, as prune's JSON holds it) is consistent with the real timings."""
    trace = search["trace"]
    assert search["latency_label"] == MEASURED and trace
    # each evaluated ratio was timed once, dense and pruned interleaved, and the trace holds those very medians
    timed = [t for t in timings if set(t) == {"dense", "pruned"}]
    assert len(timed) >= len(trace)
    recorded = {(t["dense"]["median_ms"], t["pruned"]["median_ms"]) for t in timed}
    for point in trace:
        cost = point["cost"]
        assert (cost["dense"], cost["pruned"]) in recorded and cost["pruned"] > 0
        assert cost["ratio"] == pytest.approx(cost["dense"] / cost["pruned"], rel=1e-12)
        assert point["met"] == meets(budget, cost) == (cost["pruned"] <= budget.value)
    assert all(t[k]["runs"] == 50 and t[k]["q1_ms"] <= t[k]["median_ms"] <= t[k]["q3_ms"] for t in timed for k in t)
    at = {round(p["ratio"], 9): p for p in trace}
    assert search["cost"] == at[round(search["ratio"], 9)]["cost"] and search["met"] == meets(budget, search["cost"])
    met = sorted(p["ratio"] for p in trace if p["met"])
    top = int(max_ratio / resolution + 1e-9) * resolution
    if search["met"]:  # the smallest ratio that met it; the grid step below it missed (or is the dense model)
        assert search["ratio"] == pytest.approx(met[0])
        below = at.get(round(search["ratio"] - resolution, 9))
        assert search["ratio"] == pytest.approx(resolution) or (below is not None and not below["met"])
    else:  # not met: said so, at the largest ratio the search may try
        assert not met and search["ratio"] == pytest.approx(top)
