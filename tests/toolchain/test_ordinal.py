"""Graded labels: quadratic-weighted kappa and mean absolute grade error (toolchain.ordinal), checked against
hand-computed cases and sklearn's cohen_kappa_score(weights="quadratic") as an oracle when it is installed."""

from __future__ import annotations

import numpy as np
import pytest

from toolchain.errors import ConfigError
from toolchain.metrics import compute_metrics, metrics_to_markdown, paired_bootstrap_diff
from toolchain.ordinal import is_ordinal, mark_ordinal, ordinal_metrics


def _onehot(pred, k: int = 3) -> np.ndarray:
    return np.eye(k)[np.asarray(pred)]


@pytest.mark.parametrize(("y", "pred", "qwk", "mae"), [
    # O has one (2, 1) error: sum W*O = 1; rows [1,1,2], cols [1,2,1]: sum W*E = 20/4 = 5 -> 1 - 1/5
    ([0, 1, 2, 2], [0, 1, 2, 1], 0.8, 0.25),
    # errors of 1, 1 and 2 grades: sum W*O = 1+1+4 = 6; rows = cols = [2,2,2]: sum W*E = 4/6 * 12 = 8 -> 1 - 6/8
    ([0, 0, 1, 1, 2, 2], [0, 1, 1, 2, 2, 0], 0.25, 4 / 6),
    ([0, 1, 2, 1], [0, 1, 2, 1], 1.0, 0.0),  # perfect
    ([0, 2, 0, 2], [2, 0, 2, 0], -1.0, 2.0),  # every grade mirrored: worse than chance
])
def test_hand_computed(y, pred, qwk, mae):
    m = ordinal_metrics(np.array(y), _onehot(pred), intervals=False)
    assert m["qwk"] == pytest.approx(qwk) and m["grade_mae"] == pytest.approx(mae)


def test_agrees_with_sklearn_on_random_grades():
    sklearn = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for k in (3, 5):
        for _ in range(20):
            y = rng.integers(0, k, 60)
            pred = np.where(rng.random(60) < 0.6, y, rng.integers(0, k, 60))
            want = sklearn.cohen_kappa_score(y, pred, weights="quadratic", labels=list(range(k)))
            got = ordinal_metrics(y, _onehot(pred, k), intervals=False)
            assert got["qwk"] == pytest.approx(want, abs=1e-12)
            assert got["grade_mae"] == pytest.approx(np.abs(y - pred).mean())


def test_undefined_when_everything_is_one_grade():
    m = ordinal_metrics(np.array([1, 1, 1]), _onehot([1, 1, 1]))
    assert m["qwk"] is None and m["qwk_ci"] is None and m["grade_mae"] == 0.0


def test_intervals_bracket_the_value_and_are_seeded():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 200)
    probs = _onehot(np.clip(y + rng.integers(-1, 2, 200), 0, 3), 4)
    a, b = ordinal_metrics(y, probs, n_boot=300, seed=3), ordinal_metrics(y, probs, n_boot=300, seed=3)
    assert a == b
    for name in ("qwk", "grade_mae"):
        lo, hi = a[f"{name}_ci"]
        assert lo < a[name] < hi
    assert ordinal_metrics(y, probs, n_boot=300, seed=4)["qwk_ci"] != a["qwk_ci"]


def test_compute_metrics_table_and_paired_drop():
    y = np.array([0, 0, 1, 1, 2, 2, 3, 3] * 5)
    good, worse = _onehot(y, 4), _onehot(np.clip(y + np.tile([0, 0, 0, 1, 0, 0, 0, -2], 5), 0, 3), 4)
    names = ["g0", "g1", "g2", "g3"]
    plain = compute_metrics(y, good, names, n_boot=100)
    graded = compute_metrics(y, worse, names, n_boot=100, ordinal=True)
    assert "qwk" not in plain and graded["qwk"] < 1.0 and len(graded["qwk_ci"]) == 2
    assert "qwk" in graded["intervals"]["bootstrap"]
    table = metrics_to_markdown({"dense": compute_metrics(y, good, names, n_boot=100, ordinal=True), "pruned": graded},
                                reference="dense")
    assert "| QWK |" in table and "| grade MAE |" in table and "QWK, grade MAE: stratified bootstrap" in table
    assert "| QWK |" not in metrics_to_markdown({"dense": plain})
    drop = paired_bootstrap_diff(y, good, worse, "qwk", n_boot=200)
    assert drop["diff"] == pytest.approx(1.0 - graded["qwk"]) and drop["ci"][0] <= drop["diff"] <= drop["ci"][1]


def test_input_checks_and_dataset_marking():
    with pytest.raises(ValueError, match="grades must be"):
        ordinal_metrics(np.array([0, 3]), _onehot([0, 1]))
    with pytest.raises(ValueError, match="N >= 1"):
        ordinal_metrics(np.array([], dtype=int), np.zeros((0, 3)))

    class Ds:
        name, class_names, params = "tiny", ["a", "b"], {}

    ds = Ds()
    with pytest.raises(ConfigError, match="at least 3 graded classes"):
        mark_ordinal(ds, True)
    ds.class_names = ["0", "1", "2"]
    mark_ordinal(ds, False)
    assert not is_ordinal(ds)
    mark_ordinal(ds, True)
    assert is_ordinal(ds)


def test_qwk_drop_rule_is_one_function_for_prune_and_deploy():
    from toolchain.ordinal import qwk_drop_passes, qwk_point_check

    assert qwk_drop_passes(None, 0.0)  # QWK undefined on the split (a single grade): no condition
    assert qwk_drop_passes(2.0, 2.0) and qwk_drop_passes(-5.0, 0.0)
    assert not qwk_drop_passes(2.01, 2.0)
    # prune's point check reads its verdict from the same rule
    assert qwk_point_check({"qwk": 0.80}, {"qwk": 0.78}, 2.0)["qwk_passes"]
    assert not qwk_point_check({"qwk": 0.80}, {"qwk": 0.77}, 2.0)["qwk_passes"]
