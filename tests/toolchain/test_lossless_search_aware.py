"""The search-aware lossless rule (toolchain.lossless: Bonferroni over the k candidates judged on val), the
ratio search and deploy's ratio stage with it, and `medprune prune --find-lossless --search-aware`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest

from tests.toolchain.test_cli_prune import _run
from toolchain.errors import ConfigError
from toolchain.lossless import (
    RULE,
    SEARCH_AWARE_RULE,
    drops,
    grid_search_k,
    judge,
    rule_line,
    search_confidence,
    search_n_boot,
)
from toolchain.metrics import PAIRED_N_BOOT
from toolchain.prune_eval import BoundEvaluator, RatioEvaluator, find_lossless

NAMES = ["a", "b"]


def _onehot(pred):
    return np.eye(2)[np.asarray(pred)]


def _pair(discordant: int, per_class: int = 500):
    """Labels, dense and pruned probabilities on ``2 x per_class`` images: the pruned model loses ``discordant // 2``
    images the dense model gets right and gains as many the dense model gets wrong (point drop 0), spread over both
    classes, so only the interval's width, growing with the discordant images, can fail the rule."""
    y = np.repeat([0, 1], per_class)
    dense = y.copy()
    wrong = np.r_[0:30, per_class:per_class + 30]  # 60 images the dense model misclassifies
    dense[wrong] = 1 - y[wrong]
    pruned = dense.copy()
    half = discordant // 2
    gained = np.stack([wrong[:30], wrong[30:]], 1).ravel()[:half]  # alternating classes
    lost = np.r_[np.arange(40, 40 + half // 2 + half % 2), np.arange(per_class + 40, per_class + 40 + half // 2)]
    pruned[gained] = y[gained]
    pruned[lost] = 1 - y[lost]
    return y, _onehot(dense), _onehot(pruned)


def test_k1_is_the_95_percent_rule_bit_for_bit():
    y, dense, pruned = _pair(20)
    assert search_confidence(1) == 0.95 and search_n_boot(1) == PAIRED_N_BOOT
    assert judge(y, dense, pruned, NAMES, tolerance=1.0, sens_tolerance=2.0, k=1) == \
        judge(y, dense, pruned, NAMES, tolerance=1.0, sens_tolerance=2.0)
    assert drops(y, dense, pruned, NAMES, n_boot=PAIRED_N_BOOT, confidence=0.95) == drops(y, dense, pruned, NAMES)
    assert "search_k" not in judge(y, dense, pruned, NAMES, tolerance=1.0, sens_tolerance=2.0)
    assert rule_line(1).startswith(SEARCH_AWARE_RULE) and "k = 1" in rule_line(1)


def test_a_candidate_passing_at_95_percent_fails_the_bonferroni_bound():
    y, dense, pruned = _pair(16, 150)
    one = judge(y, dense, pruned, NAMES, tolerance=3.0, sens_tolerance=6.0)
    many = judge(y, dense, pruned, NAMES, tolerance=3.0, sens_tolerance=6.0, k=5)
    assert one["accuracy_drop_pts"] == many["accuracy_drop_pts"] == 0.0
    assert one["passes"] and not many["passes"]
    assert many["accuracy_drop_ci_pts"][1] > 3.0 >= one["accuracy_drop_ci_pts"][1]
    assert many["search_k"] == 5 and many["confidence"] == pytest.approx(1 - 0.05 / 5)
    assert many["n_boot"] == 5 * PAIRED_N_BOOT and "k = 5" in many["failed"][0]
    # identical models pass at any k: no discordant image, no width
    assert judge(y, dense, dense, NAMES, tolerance=0.0, sens_tolerance=0.0, k=50)["passes"]


@pytest.mark.parametrize("k", [0, -3, 2.5, True, "4", None])
def test_bad_k_is_a_clear_error(k):
    y, dense, pruned = _pair(4)
    with pytest.raises(ConfigError, match="integer >= 1"):
        judge(y, dense, pruned, NAMES, tolerance=1.0, sens_tolerance=2.0, k=k)
    with pytest.raises(ConfigError, match="integer >= 1"):
        search_confidence(k)


def test_too_few_replicates_for_the_level_is_refused():
    y, dense, pruned = _pair(4)
    with pytest.raises(ValueError, match="largest replicate"):
        drops(y, dense, pruned, NAMES, n_boot=100, confidence=search_confidence(40))


def test_grid_search_k_counts_the_longest_path_of_scan_and_bisection():
    assert grid_search_k([*range(10, 91, 10), 99], 99) == 10 + 4  # prune: max ratio 0.99
    assert grid_search_k(list(range(10, 91, 10)), 90) == 9 + 4  # deploy: max ratio 0.9
    assert grid_search_k([], 99) == 7  # bisection of [0, 100) alone
    with pytest.raises(ConfigError):
        grid_search_k([10, 10], 99)


@dataclass
class _Synthetic(BoundEvaluator):
    """Deploy's evaluator with probabilities made up per ratio: ``_pair(round(60 * ratio), 150)`` (no model); searched
    with tolerances of 3 and 6 points, the 95 % rule passes up to about 20 discordant images, k = 14 up to about 9."""

    def probs(self, ratio: float, split: str):
        y, dense, pruned = _pair(int(round(60 * ratio)), 150)
        return (dense if ratio == 0.0 else pruned), y


def _synthetic():
    return _Synthetic(SimpleNamespace(ds=SimpleNamespace(class_names=NAMES)), {}, [])


def test_search_aware_search_chooses_a_smaller_ratio_with_its_k_recorded():
    plain = find_lossless(_synthetic(), 3.0, 6.0)
    aware = find_lossless(_synthetic(), 3.0, 6.0, search_aware=True)
    assert plain["rule"] == RULE and "search_k" not in plain
    assert aware["search_k"] == 14 and aware["rule"] == rule_line(14)
    assert 0 < aware["ratio"] < plain["ratio"]
    assert all(t["search_k"] == 14 for t in aware["trace"]) and len(aware["trace"]) <= 14
    with pytest.raises(ConfigError, match="bound rule"):  # the point rule has no interval to widen
        find_lossless(RatioEvaluator(None, {}, []), 1.0, 2.0, search_aware=True)


def test_deploy_ratio_stage_applies_the_flag_and_keeps_old_keys(tmp_path):
    from devices.deploy.ratio import RatioChoice

    common = dict(importance="x", ratio="auto", granularity="neuron", tolerance=3.0, sens_tolerance=6.0,
                  search_margin=1.0, max_ratio=0.9, round_to=0, seed=0)
    plain = RatioChoice(**common, evaluator=_synthetic())
    aware = RatioChoice(**common, search_aware=True, evaluator=_synthetic())
    assert "search_aware" not in plain.key() and aware.key()["search_aware"] is True
    a, b = plain.run(tmp_path), aware.run(tmp_path)
    assert a["rule"] == RULE and b["rule"] == rule_line(13) and b["val"]["search_k"] == 13
    assert b["ratio"] < a["ratio"] and b["val"]["passes"] and "search_k" not in a["val"]


# ---- the CLI (test_cli_prune's tiny checkpoint and runner) --------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tests.conftest import train_tiny_resnet

    return train_tiny_resnet(tmp_path_factory.mktemp("prune_search_aware"))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_prune_find_lossless_search_aware_prints_its_rule_and_k(tiny, tmp_path, capsys):
    weights, npz = tiny
    js = tmp_path / "out.json"
    code, out, err = _run(["prune", "-c", str(weights), "--data", str(npz), "--criterion", "taylor",
                           "--sampling", "random", "--n-per-class", "3", "--ratios", "0.3", "--find-lossless",
                           "--search-aware", "--tolerance", "5", "--sens-tolerance", "10", "--json", str(js), "-q"],
                          capsys)
    assert code == 0, err
    lossless = json.loads(js.read_text())["lossless"]
    assert lossless["search_k"] == 14 and lossless["rule"] == rule_line(14)
    assert f"lossless rule: {rule_line(14)}" in " ".join(out.split())
    assert all(t["search_k"] == 14 for t in lossless["trace"])


@pytest.mark.parametrize("extra", [[], ["--find-lossless", "--lossless-rule", "point"],
                                   ["--find-lossless", "--speedup", "2"]])
def test_prune_search_aware_without_a_bound_search_is_one_line(tiny, capsys, extra):
    weights, npz = tiny
    code, _, err = _run(["prune", "-c", str(weights), "--data", str(npz), "--search-aware", *extra], capsys)
    assert code == 2 and "--search-aware applies to --find-lossless" in err and "Traceback" not in err


@pytest.mark.parametrize("search_aware", [False, True])
def test_deploy_budget_back_off_counts_every_ratio_and_recipe_it_may_judge(monkeypatch, search_aware):
    """Deploy's budget path: k = back-off ratios x recovery recipes, fixed before the first judgment; the recovered
    model at the budget passes at k = 1 but not at k = 8 (made-up verdicts), so the flag changes what ships."""
    import devices.deploy.recover as rec

    seen = []

    @dataclass
    class FakeRecover:  # the stage, without recovery: its verdict depends on the ratio and on k only
        prune: str
        recovery: dict
        budget: dict
        tolerance: float
        sens_tolerance: float
        seed: int
        search_k: int = 1
        ctx: object = None
        pruned: object = None
        device: str = "cpu"

        def __call__(self, pipe):
            seen.append((self.pruned.ratio, self.search_k))
            ok = self.pruned.ratio < 0.5 or self.search_k == 1
            return SimpleNamespace(data={"judge_val": {"passes": ok, "failed": [] if ok else ["accuracy"],
                                                       "accuracy_drop_pts": 0.0, "worst_sensitivity_drop_pts": 0.0}})

    monkeypatch.setattr(rec, "Recover", FakeRecover)
    monkeypatch.setattr(rec, "BudgetCost", lambda **kw: (lambda pipe: SimpleNamespace(data={
        "cost": {"ratio": 1.5}, "latency_label": "counted", "latency_quantity": "macs"})))
    cfg = SimpleNamespace(search_aware=search_aware, budget=lambda: {"kind": "macs", "value": 0.5}, tolerance=1.0,
                          sens_tolerance=2.0, seed=0, device="cpu", ship_best_passing=True, precision="fp32",
                          kd_temperature=None, kd_weight=None, ce_weight=None, recover_augment=None, recover_epochs=1)
    budget = SimpleNamespace(data={"ratio": 0.6, "met": True, "cost": {"ratio": 2.0}, "latency_label": "counted",
                                   "latency_quantity": "macs"})
    pipe = SimpleNamespace(console=SimpleNamespace(print=lambda *a, **k: None))
    _, selection, pruned = rec.recover_pruned(cfg, pipe, None, SimpleNamespace(ratio=0.6, key_digest="p"), budget,
                                              lambda r: SimpleNamespace(ratio=r, key_digest=f"p{r}"), None, None)
    k = 4 * len(rec.CANDIDATES) if search_aware else 1  # ratios 0.6, 0.45, 0.3, 0.15 x recipes
    assert {s[1] for s in seen} == {k}
    assert selection["rule"] == (rule_line(k) if search_aware else RULE)
    assert selection["ratio"] == (0.45 if search_aware else 0.6) and pruned.ratio == selection["ratio"]
