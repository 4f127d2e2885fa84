"""Recovery study report: drops with paired intervals, the headline chosen on val only, verdicts."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.studies import _recovery_report as rep


def _onehot(pred, k=2):
    return np.eye(k)[np.asarray(pred)]


def test_test_drops_come_from_toolchain_lossless():
    from toolchain.lossless import worst_sensitivity_drop

    y = np.array([0] * 10 + [1] * 10)
    dense = _onehot(y)
    pruned = _onehot(np.r_[[1, 1], y[2:]])  # two class-0 errors: accuracy -10 pts, class-0 sensitivity -20 pts
    d = rep.test_drops(y, dense, pruned, n_boot=200)
    assert d["accuracy_drop_pts"]["value"] == pytest.approx(10.0)
    assert d["worst_sensitivity_drop_pts"]["value"] == pytest.approx(20.0) and d["worst_class"] == 0
    assert d["worst_sensitivity_drop_pts"]["ci"] == worst_sensitivity_drop(y, dense, pruned, n_boot=200)["ci"]
    lo, hi = d["accuracy_drop_pts"]["ci"]
    assert 0 <= lo <= 10 <= hi and d["n"] == 20


def test_val_figures_apply_deploys_bound_rule_and_show_the_point_rule():
    y = np.array([0] * 100 + [1] * 100)
    dense = _onehot(y)
    one = _onehot(np.r_[[1], y[1:]])  # one class-0 image lost: point drop 1 pt, its upper bound above 2 pts
    v = rep._val_figures(y, dense, one, ["a", "b"])
    assert v["passes_point"] and not v["passes_bound"] and v["worst_sensitivity_drop_upper_pts"] > 2.0
    same = rep._val_figures(y, dense, dense, ["a", "b"])
    assert same["passes_point"] and same["passes_bound"]


def _row(crit, macs, val_acc_drop, val_sens, test_acc_drop, bal=0.9, bound=None, state="kd"):
    point = val_acc_drop <= 1 and val_sens <= 2
    return {"criterion": crit, "recovered": True, "state": state, "macs_ratio": macs, "speedup_ort": macs * 0.8,
            "target_macs_div": macs,
            "val": {"accuracy_drop_pts": val_acc_drop, "worst_sensitivity_drop_pts": val_sens,
                    "balanced_accuracy": bal, "passes_point": point, "passes_bound": point if bound is None else bound},
            "test": {"accuracy_drop_pts": {"value": test_acc_drop, "ci": [0, 1]},
                     "worst_sensitivity_drop_pts": {"value": 0.0, "ci": [0, 1]}}}


def test_headline_is_chosen_on_val_and_judged_on_test():
    rows = [_row("lrp", 2.0, 0.5, 1.0, 3.0, bal=0.95),   # passes val, fails test: still the val choice at ÷2
            _row("tp-magnitude", 4.0, 2.5, 1.0, 0.0),      # best on test, fails val: never chosen
            _row("lrp", 3.0, 0.8, 1.5, 0.5, bal=0.90)]     # most compressed passing on val
    h = rep.headline(rows)
    assert h["speedup_lossless"]["macs_ratio"] == 3.0 and h["speedup_lossless"]["holds_on_test"]
    assert h["best_criterion"] == "lrp"
    none = rep.headline([_row("lrp", 2.0, 5.0, 1.0, 0.0)])
    assert none["speedup_lossless"] is None
    assert none["deploy_ships"]["speedup_ort"] == 1.0 and "dense" in none["deploy_ships"]["model"]
    assert h["deploy_ships"]["speedup_ort"] == h["speedup_lossless"]["speedup_ort"]
    fails = rep.headline([_row("lrp", 2.0, 0.5, 1.0, 3.0)])  # chosen on val, fails the test gate
    assert fails["speedup_lossless"]["macs_ratio"] == 2.0 and not fails["speedup_lossless"]["holds_on_test"]
    assert fails["deploy_ships"]["speedup_ort"] == 1.0 and "fails deploy's test gate" in fails["deploy_ships"]["model"]


def test_headline_uses_the_bound_rule_and_shows_the_point_rule_beside_it():
    rows = [_row("lrp", 2.0, 0.2, 0.5, 3.0, bound=True),
            _row("taylor", 4.0, 0.8, 1.9, 0.0, bound=False)]  # passes the point rule only
    h = rep.headline(rows)
    assert h["rule"] == "bound" and h["speedup_lossless"]["macs_ratio"] == 2.0
    assert not h["speedup_lossless"]["holds_on_test"]
    assert h["speedup_lossless_point"]["macs_ratio"] == 4.0 and h["speedup_lossless_point"]["holds_on_test"]


def test_headline_reads_the_recipes_state_only():
    rows = [_row("lrp", 5.0, 0.2, 0.5, 0.0, state="kd"), _row("lrp", 3.0, 0.2, 0.5, 0.0, state="kda"),
            _row("lrp", 8.0, 0.2, 0.5, 0.0, state="none")]
    assert rep.headline(rows, "kda")["speedup_lossless"]["macs_ratio"] == 3.0
    assert rep.headline(rows, "kd")["speedup_lossless"]["macs_ratio"] == 5.0


def test_per_model_targets_and_budget_text_come_from_the_arguments():
    import argparse

    from benchmarks.studies import recovery_grid as grid

    targets = grid._model_targets("vgg19=3/5/8,resnet50=2/3")
    assert targets == {"vgg19": [3.0, 5.0, 8.0], "resnet50": [2.0, 3.0]}
    args = argparse.Namespace(macs=[2.0], model_macs=targets)
    assert grid.targets_for("vgg19", args) == [3.0, 5.0, 8.0] and grid.targets_for("vit_b16", args) == [2.0]
    with pytest.raises(argparse.ArgumentTypeError):
        grid._model_targets("vgg19=1/5")
    assert grid.train_recipe("vgg19", "chest_xray_224")["load_size"] == 64
    recorded = {"model": "vgg19", "epochs": 25, "lr": 1e-4, "patience": 5, "data": "breastmnist", "load_size": None}
    assert grid.train_command(recorded, "x") == "medprune train --model vgg19 --epochs 25 --lr 0.0001 --patience 5 " \
                                                "--data breastmnist"
    assert grid.train_command(None, "fallback") == "fallback"
    assert "load_size" not in grid.train_recipe("resnet50", "pneumoniamnist")
    text = rep._budget_text({"recover_epochs": 2, "recover_subset": {"*": 0}}, "vgg19")
    assert "2 distillation epoch" in text and "full train split" in text
    assert "600-image" in rep._budget_text({"recover_epochs": 1, "recover_subset": {"vgg19": 600}}, "vgg19")


def test_quant_table_says_which_runtime_could_not_take_a_model():
    from benchmarks.studies._recovery_quant import markdown

    col = {"latency_ms": {"median_ms": 2.0}, "speedup": {"vs_dense_ort_fp32": 3.0, "vs_dense_same_runtime": 2.5},
           "test": {"accuracy": 0.9, "accuracy_ci": [0.87, 0.92], "n": 624},
           "vs_dense_fp32": {"accuracy_drop_pts": 0.5, "accuracy_drop_ci_pts": [-1.0, 2.0],
                             "worst_sensitivity_drop_pts": 1.0, "worst_sensitivity_drop_ci_pts": [0.0, 3.0],
                             "worst_class": "normal"}}
    quant = {"dense": {"columns": {"ort_int8": col}},
             "chosen": {"columns": {"ort_int8": col, "ov_int8": {"error": "model: pooling kernel too large"}}},
             "chosen_model": {"criterion": "lrp", "target": 5.0}}
    text = "\n".join(markdown(quant))
    assert "dense (quantization only) | ort_int8 | 2.00 | 3.00 | 2.50 | 0.900 [0.870, 0.920] (624)" in text
    assert "pruned + KD (lrp, MACs ÷5) | ov_int8 | not measured: model: pooling kernel too large" in text
    assert markdown(None) == []


def test_retime_measures_again_from_the_recovered_checkpoint_and_keeps_the_first(monkeypatch, tmp_path):
    import argparse
    import types

    import torch

    import toolchain.budget as budget
    import toolchain.models as models
    from benchmarks.studies import recovery_grid as grid
    from toolchain import settings

    monkeypatch.setenv("MEDPRUNE_CACHE", str(tmp_path))
    key = "ab" * 16
    weights = settings.cache_dir() / "recovered" / key[:16] / "model.safetensors"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"stub")
    monkeypatch.setattr(models, "load_checkpoint", lambda path: (torch.nn.Identity(), {}))
    timed = {"dense": {"median_ms": 10.0}, "pruned": {"median_ms": 2.0}}
    monkeypatch.setattr(budget, "ort_latency_ms", lambda m, x, repeats, threads: timed)
    first = {"dense": {"median_ms": 30.0}, "pruned": {"median_ms": 20.0}}
    cell = {"recovery": {"key": key}, "latency_ms": first, "speedup_ort": 1.5}
    ctx = types.SimpleNamespace(model=torch.nn.Identity())
    args = argparse.Namespace(repeats=3, threads=1)
    assert grid.retime_cell(ctx, cell, torch.zeros(1, 1, 4, 4), args)
    assert cell["speedup_ort"] == pytest.approx(5.0) and cell["latency_ms"] == timed
    assert cell["latency_first"]["speedup"] == 1.5 and cell["latency_first"]["latency_ms"] == first
    assert "retimed" in cell and cell["load_avg_1min"] >= 0
    # a cell without a recovered checkpoint is left as it is
    bare = {"recovery": None, "latency_ms": first, "speedup_ort": 1.5}
    assert not grid.retime_cell(ctx, bare, torch.zeros(1, 1, 4, 4), args) and "retimed" not in bare


def test_report_end_to_end_on_a_fake_run_states_both_rules_and_the_operating_point():
    rng = np.random.default_rng(0)
    y = np.array([0] * 60 + [1] * 140)
    dense = np.clip(np.eye(2)[y] * 0.7 + rng.uniform(0, 0.3, (200, 2)), 0, None)
    dense /= dense.sum(1, keepdims=True)
    shifted = dense + np.array([-0.05, 0.05])  # same ranking, operating point moved toward class 1
    shifted /= shifted.sum(1, keepdims=True)
    cell = {"criterion": "lrp", "target_macs_div": 3.0, "ratio": 0.4, "macs": {"ratio": 3.0, "dense": 3, "pruned": 1},
            "params": {"dense": 3, "pruned": 1}, "speedup_ort": 2.5,
            "latency_ms": {"dense": {"median_ms": 2.5}, "pruned": {"median_ms": 1.0}},
            "probs": {"none/val": np.eye(2)[np.ones(200, int)], "none/test": np.eye(2)[np.ones(200, int)],
                      "kd/val": dense, "kd/test": shifted}}
    run = {"labels": {"val": y, "test": y}, "dense": {"val": dense, "test": dense}, "class_names": ["a", "b"],
           "cells": {"lrp/3": cell}, "model": "vgg19", "dataset": "tiny", "checkpoint": "x",
           "checkpoint_sha256": "0" * 64, "train_command": "t", "dataset_fingerprint": "f"}
    doc = rep.build([run], {"criteria": ["lrp"], "macs": [3.0], "threads": 1}, "cmd", "now")
    m = doc["models"]["tiny:vgg19"]
    h = m["headline"]
    assert h["speedup_lossless"]["criterion"] == "lrp"  # identical to dense on val: passes both rules
    assert h["speedup_lossless_point"]["macs_ratio"] == 3.0
    op = m["operating_point"]
    assert len(op) == 1 and op[0]["test"]["auc"] == pytest.approx(op[0]["test"]["auc_dense"])
    assert op[0]["test"]["mean_prob"][1] > op[0]["test"]["mean_prob_dense"][1]
    text = rep.markdown(doc)
    assert "Headline rule = deploy's" in text and "point rule" in text and "Ranking vs operating point" in text


def test_val_resolution_is_the_bound_of_one_lost_image():
    y = np.array([0] * 40 + [1] * 400)
    from benchmarks.studies._recovery_oppoint import val_resolution

    res = val_resolution(y, ["small", "large"])
    assert res["small"] > 2.0 > res["large"] > 0.0  # one of 40 is 2.5 pts; one of 400 is 0.25 pts


def test_recipe_lines_count_val_passes_per_recovery_state():
    rows = [_row("lrp", 3.0, 0.2, 0.5, 0.0, state="kd", bound=True), _row("lrp", 5.0, 0.2, 0.5, 0.0, state="kd",
                                                                          bound=False),
            _row("lrp", 3.0, 0.2, 0.5, 0.0, state="kda", bound=False)]
    text = " ".join(rep._recipe_lines(rows, "kd"))
    assert "KD (recipe): 1 / 2 of 2, ÷3.00 lrp" in text and "KD+align: 0 / 1 of 1, none" in text
    assert rep._recipe_lines(rows[:2], "kd") == []


def test_cached_only_skips_pairs_without_a_checkpoint_instead_of_training(monkeypatch, tmp_path):
    from benchmarks.studies import recovery_grid as grid

    called, built = [], {}
    monkeypatch.setattr(grid, "run_model", lambda m, d, args, log: called.append(f"{d}/{m}") or {})
    monkeypatch.setattr(rep, "build", lambda runs, args, cmd, started: built.update(args) or {"models": {}})
    monkeypatch.setattr(rep, "write", lambda doc, runs, out: None)
    grid.main(["--models", "vgg19,resnet50", "--data", "pneumoniamnist,breastmnist", "--cached-only",
               "--checkpoint", "breastmnist/vgg19=x.safetensors", "--checkpoint", "resnet50=y.safetensors",
               "--out", str(tmp_path)])
    assert called == ["pneumoniamnist/resnet50", "breastmnist/vgg19"]
    assert built["skipped_pairs"] == ["pneumoniamnist/vgg19", "breastmnist/resnet50"]


def test_targets_apply_only_where_the_issue_sets_them():
    rows = [_row("lrp", 3.0, 0.2, 0.5, 0.0)]
    sl = rep.headline(rows)["speedup_lossless"]
    assert rep._target_line("vgg19", rows, sl, dataset="chest_xray_224").startswith("Target (issue 15): "
                                                                                    "speedup_lossless >= 5x")
    assert rep._target_line("vgg19", rows, sl, dataset="breastmnist").startswith("No issue-15 target for vgg19")
    assert "No issue-15 target" in rep._target_line("vit_b16", rows, sl, dataset="chest_xray_224")
