"""hparam_policy: the same sweep for every model (recipe lr x factors, all else equal) and the val choice."""

from __future__ import annotations

import types

import pytest

from benchmarks.studies import hparam_policy as hp
from toolchain.errors import ConfigError
from toolchain.recipes import RECIPES


def _args(**kw):
    base = dict(data="pneumoniamnist", seed=0, lr_factors=[1 / 3, 1.0, 3.0])
    return types.SimpleNamespace(**{**base, **kw})


@pytest.mark.parametrize("model", sorted(RECIPES))
def test_candidates_vary_only_the_learning_rate(model):
    cfgs = hp.candidates(model, _args(), n_train=4708)
    assert [c.lr for c in cfgs] == pytest.approx([RECIPES[model].lr / 3, RECIPES[model].lr, RECIPES[model].lr * 3],
                                                 rel=1e-2)
    others = [{k: v for k, v in c.to_dict().items() if k != "lr"} for c in cfgs]
    assert all(o == others[0] for o in others)
    assert others[0]["build_args"] == RECIPES[model].build_args and others[0]["device"] == "cpu"
    assert (others[0]["epochs"], others[0]["train_subset"]) == (2, 1500)  # toolchain.recipes.CPU_BUDGET


def test_choose_takes_the_best_val_score_and_breaks_ties_towards_the_recipe():
    rows = [{"lr": 1e-4, "val_balanced_accuracy": 0.90}, {"lr": 3e-4, "val_balanced_accuracy": 0.92},
            {"lr": 1e-3, "val_balanced_accuracy": 0.92}]
    assert hp.choose(rows, recipe_lr=1e-3)["lr"] == 1e-3
    assert hp.choose(rows, recipe_lr=1e-4)["lr"] == 3e-4  # tie without the recipe: the smaller lr
    with pytest.raises(ConfigError):
        hp.choose([], 1e-3)


def test_bad_factor_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError):
        hp.main(["--lr-factors", "0,1", "--out", str(tmp_path)])


def _rows(scores: dict[float, float]) -> list[dict]:
    return [{"lr": lr, "val_balanced_accuracy": v} for lr, v in scores.items()]


def test_edge_rule_extends_one_step_towards_the_chosen_edge_at_most_twice():
    top = _rows({1e-3: 0.80, 3e-3: 0.85, 1e-2: 0.90})
    assert hp.extension(top, 3e-3, extended=0) == pytest.approx(3e-2)
    assert hp.extension(top, 3e-3, extended=1) == pytest.approx(3e-2)
    assert hp.extension(top, 3e-3, extended=2) is None  # the cap
    bottom = _rows({3.33e-5: 0.90, 1e-4: 0.85, 3e-4: 0.80})
    assert hp.extension(bottom, 1e-4, extended=0) == pytest.approx(1.11e-5)
    inside = _rows({3.33e-5: 0.80, 1e-4: 0.90, 3e-4: 0.85})
    assert hp.extension(inside, 1e-4, extended=0) is None
    assert hp.extension(_rows({1e-4: 0.9}), 1e-4, extended=0) is None  # one point: no edge
    tie = _rows({1e-4: 0.90, 3e-4: 0.90, 1e-3: 0.80})  # tie goes to the recipe's lr, which is inside
    assert hp.extension(tie, 3e-4, extended=0) is None
