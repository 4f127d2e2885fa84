"""Budgets: parsing, met within tolerance on tiny models, peers through the same removal code path."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import tiny_model
from toolchain.budget import Budget, measure, meets, one_budget, parse_budget, search_budget
from toolchain.errors import ConfigError


@pytest.mark.parametrize("kind,text,value", [("macs", "0.33", 0.33), ("params", "2.5M", 2.5e6),
                                             ("speedup", "3", 3.0), ("latency_ms", "1.5", 1.5)])
def test_parse_budget(kind, text, value):
    assert parse_budget(kind, text) == Budget(kind, pytest.approx(value))


@pytest.mark.parametrize("kind,text", [("macs", "-1"), ("macs", "abc"), ("speedup", "0.9"), ("flops", "2")])
def test_parse_budget_rejects(kind, text):
    with pytest.raises(ConfigError):
        parse_budget(kind, text)


def test_one_budget_refuses_two():
    assert one_budget(macs=None, speedup=None) is None
    assert one_budget(macs="0.5", speedup=None) == Budget("macs", 0.5)
    with pytest.raises(ConfigError):
        one_budget(macs="0.5", speedup="2")


def _setup(family, criterion="lrp"):
    from toolchain.importance import get_criterion
    from toolchain.recovery import masker_for, pruner_at
    from toolchain.units import find_unit_layers

    model = tiny_model(family)
    layers = find_unit_layers(model)
    x, y = torch.randn(8, 1, 16, 16), torch.arange(8) % 2
    crit = get_criterion(criterion)
    scores = crit(model, x if crit.needs_data else None, y, layers)
    return model, x[:2], pruner_at(model, masker_for(model, crit, scores, layers, x[:1]), x[:2])


@pytest.mark.parametrize("family", ["vgg", "resnet"])
@pytest.mark.parametrize("kind,value", [("macs", 0.5), ("params", 0.4)])
def test_budget_is_met_by_the_smallest_ratio(family, kind, value):
    model, example, prune = _setup(family)
    found = search_budget(prune, model, example, Budget(kind, value), resolution=0.02)
    assert found.met and meets(Budget(kind, value), found.cost)
    assert found.cost == measure(kind, model, found.model, example)  # measured on the removed model
    # tolerance: the next smaller ratio on the grid misses the budget (bisection found the boundary)
    below = [r for r in found.trace if r["ratio"] < found.ratio]
    assert below and not below[-1]["met"] and found.ratio - below[-1]["ratio"] <= 0.02 + 1e-9
    # and the budget is not overshot by much: the pruned MACs/params are within 15 % of the limit
    assert found.cost["pruned"] >= 0.85 * value * found.cost["dense"]


def test_unreachable_budget_says_so():
    model, example, prune = _setup("vgg")
    found = search_budget(prune, model, example, Budget("params", 1e-6), max_ratio=0.5)
    assert not found.met and found.ratio == 0.5 and found.model is not None


def test_latency_budget_uses_the_given_measurer():
    model, example, prune = _setup("vgg")
    calls = []

    def fake_latency(models, x, repeats=50):
        calls.append(x.shape[0])
        macs = {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()}
        return {k: {"median_ms": v / 1000} for k, v in macs.items()}

    found = search_budget(prune, model, example, Budget("speedup", 2.0), latency_fn=fake_latency,
                          latency_label="predicted (parameter count)")
    assert found.met and found.cost["ratio"] >= 2.0 and set(calls) == {1}
    assert found.summary()["latency_label"] == "predicted (parameter count)"


def test_ort_latency_measures_dense_and_pruned():
    from toolchain.budget import ort_latency_ms

    model, example, prune = _setup("vgg")
    pruned, _ = prune(0.5)
    lat = ort_latency_ms({"dense": model, "pruned": pruned}, example, repeats=5, warmup=1, threads=1)
    assert set(lat) == {"dense", "pruned"} and all(v["median_ms"] > 0 and v["runs"] == 5 for v in lat.values())


@pytest.mark.parametrize("peer", ["tp-magnitude", "tp-l1", "tp-lamp", "tp-taylor", "tp-hessian", "tp-random"])
def test_torch_pruning_peers_run_through_the_same_removal(peer):
    """A peer's removal equals masking (remove_units checks parity) and follows TP's own ranking."""
    import torch_pruning as tp

    from toolchain.importance import get_criterion
    from toolchain.importance.tp_peers import PEERS
    from toolchain.recovery import masker_for
    from toolchain.removal import remove_units
    from toolchain.removal.graph import analyse
    from toolchain.units import find_unit_layers

    model = tiny_model("vgg")
    layers = find_unit_layers(model)
    x, y = torch.randn(8, 1, 16, 16), torch.arange(8) % 2
    crit = get_criterion(peer)
    scores = crit(model, x, y, layers)  # data-free peers use x only for the graph trace
    masks = masker_for(model, crit, scores, layers, x[:1]).masks(0.3)
    pruned, report = remove_units(model, masks, x[:2], granularity="group")
    assert report["units"]["removed"] == report["units"]["masked"] > 0 and report["parity_max_abs"] < 1e-4
    if peer in ("tp-magnitude", "tp-l1", "tp-lamp"):  # data-free: TP's score of each group, unchanged
        imp = PEERS[peer]["make"]()
        an = analyse(model, layers, x[:1])
        ug = an.groups[0]
        group = an.dg.get_pruning_group(ug.root, ug.root_fn, list(range(ug.size)))
        member = next(iter(ug.members))
        assert torch.allclose(scores[member][ug.members[member]].double(), imp(group).double(), rtol=1e-5)
        assert isinstance(imp, tp.importance.Importance)
