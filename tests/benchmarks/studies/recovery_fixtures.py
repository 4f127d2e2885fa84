"""Hand-made recovery-study runs (one-hot predictions on 200 labelled images) for the report tests."""

from __future__ import annotations

import numpy as np

Y = np.array([0] * 40 + [1] * 160)


def pred(wrong: int) -> np.ndarray:
    """One-hot predictions with the first ``wrong`` class-1 images misclassified."""
    out = Y.copy()
    out[40:40 + wrong] = 0
    return np.eye(2)[out]


def fake_cell(crit: str, target: float, speedup: float, wrong: int) -> dict:
    p = pred(wrong)
    return {"criterion": crit, "target_macs_div": target, "ratio": 0.5, "speedup_ort": speedup,
            "macs": {"ratio": target, "dense": 10, "pruned": 10 / target}, "params": {"dense": 4, "pruned": 2},
            "latency_ms": {"dense": {"median_ms": speedup}, "pruned": {"median_ms": 1.0}},
            "probs": {"kd/val": p, "kd/test": p}}


def fake_run(cells: list[dict]) -> dict:
    return {"labels": {"val": Y, "test": Y}, "dense": {"val": pred(0), "test": pred(0)}, "class_names": ["a", "b"],
            "cells": {f"{c['criterion']}/{c['target_macs_div']:g}": c for c in cells}, "model": "vgg19",
            "dataset": "tiny", "checkpoint": "x", "checkpoint_sha256": "0" * 64, "train_command": "t",
            "dataset_fingerprint": "f"}
