"""toolchain.lossless.worst_sensitivity_drop: the worst class's drop with a paired bootstrap interval."""

from __future__ import annotations

import numpy as np
import pytest

from toolchain.lossless import drops, worst_sensitivity_drop


def _onehot(pred, k=2):
    return np.eye(k)[np.asarray(pred)]


def test_worst_class_drop_point_value_class_and_interval():
    y = np.array([0] * 10 + [1] * 10)
    dense = _onehot(y)
    pruned = _onehot(np.r_[[1, 1], y[2:]])  # two class-0 errors: class-0 sensitivity -20 pts, class 1 unchanged
    w = worst_sensitivity_drop(y, dense, pruned, n_boot=300)
    assert w["value"] == pytest.approx(20.0) and w["class"] == 0 and w["n"] == 20
    lo, hi = w["ci"]
    assert 0.0 <= lo <= 20.0 <= hi <= 50.0
    # the worst of the classes is at least each class's own drop, replicate by replicate
    per = drops(y, dense, pruned, ["a", "b"], n_boot=300)
    assert w["value"] == pytest.approx(max(per["sensitivity_drop_pts"].values()))


def test_worst_class_drop_is_zero_for_identical_models_and_negative_when_all_improve():
    y = np.array([0, 0, 1, 1, 2, 2])
    p = _onehot([0, 1, 1, 1, 2, 0], 3)
    same = worst_sensitivity_drop(y, p, p, n_boot=100)
    assert same["value"] == 0.0 and same["ci"] == [0.0, 0.0]
    better = worst_sensitivity_drop(y, p, _onehot(y, 3), n_boot=100)
    assert better["value"] == pytest.approx(0.0)  # class 1 unchanged, classes 0 and 2 gain 50 pts
    assert better["ci"][1] <= 0.0


def test_worst_class_drop_rejects_mismatched_inputs():
    with pytest.raises(ValueError):
        worst_sensitivity_drop([0, 1], _onehot([0, 1]), _onehot([0, 1, 1]))
    with pytest.raises(ValueError):
        worst_sensitivity_drop([], np.zeros((0, 2)), np.zeros((0, 2)))
