"""Recovery report: the headline reads the recipe's recovery state whatever states the cells hold; the dense
checkpoint's training command states its build arguments."""

from __future__ import annotations

import numpy as np

from benchmarks.studies import _recovery_report as rep


def _cell(crit: str, macs: float, probs: dict) -> dict:
    return {"criterion": crit, "target_macs_div": macs, "ratio": 0.5, "macs": {"ratio": macs, "dense": 2, "pruned": 1},
            "params": {"dense": 2, "pruned": 1}, "speedup_ort": macs,
            "latency_ms": {"dense": {"median_ms": 2.0}, "pruned": {"median_ms": 1.0}}, "probs": probs}


def test_summarise_run_chooses_among_the_recipes_state_not_the_last_state_present():
    y = np.array([0] * 50 + [1] * 50)
    dense, wrong = np.eye(2)[y], np.eye(2)[1 - y]
    # lrp ÷3: identical to dense after KD, ruined after alignment; taylor ÷2: the reverse; unrecovered: ruined
    lrp = _cell("lrp", 3.0, {"none/val": wrong, "none/test": wrong, "kd/val": dense, "kd/test": dense,
                             "kda/val": wrong, "kda/test": wrong})
    taylor = _cell("taylor", 2.0, {"none/val": wrong, "none/test": wrong, "kd/val": wrong, "kd/test": wrong,
                                   "kda/val": dense, "kda/test": dense})
    run = {"labels": {"val": y, "test": y}, "dense": {"val": dense, "test": dense}, "class_names": ["a", "b"],
           "cells": {"lrp/3": lrp, "taylor/2": taylor}}
    kd = rep.summarise_run(run, "kd")["headline"]
    assert kd["state"] == "kd" and kd["speedup_lossless"]["criterion"] == "lrp"
    kda = rep.summarise_run(run, "kda")["headline"]
    assert kda["state"] == "kda" and kda["speedup_lossless"]["criterion"] == "taylor"


def test_train_command_states_the_checkpoints_build_args():
    from benchmarks.studies import recovery_grid as grid

    recorded = {"model": "vit_b16", "epochs": 3, "lr": 1e-4, "patience": 5, "data": "pneumoniamnist",
                "build_args": {"patch_size": 16}}
    assert grid.train_command(recorded, "x") == ("medprune train --model vit_b16 --epochs 3 --lr 0.0001 --patience 5 "
                                                 "--data pneumoniamnist --build-arg patch_size=16")
