"""Metrics against hand-computed values; intervals against published and scipy binomial cases."""

from __future__ import annotations

import numpy as np
import pytest
from rich.console import Console
from rich.table import Table

from toolchain.intervals import clopper_pearson, percentile_interval, stratified_counts
from toolchain.metrics import (
    balanced_accuracy,
    bootstrap_interval,
    compute_metrics,
    expected_calibration_error,
    metric_function,
    metrics_table,
    metrics_to_markdown,
    paired_bootstrap_diff,
)

# 6 samples, binary; predictions: TN, FP, TP, TP, FN, TP
Y = np.array([0, 0, 1, 1, 1, 1])
P1 = np.array([0.1, 0.6, 0.9, 0.7, 0.4, 0.8])
PROBS = np.stack([1 - P1, P1], axis=1)


def test_binary_hand_computed():
    m = compute_metrics(Y, PROBS, ["normal", "pneumonia"])
    assert m["n"] == 6 and m["accuracy"] == pytest.approx(4 / 6)
    assert m["confusion_matrix"] == [[1, 1], [1, 3]]
    pc = m["per_class"]
    assert pc["pneumonia"]["sensitivity"] == pytest.approx(3 / 4)
    assert pc["pneumonia"]["specificity"] == pytest.approx(1 / 2)
    assert pc["normal"]["sensitivity"] == pytest.approx(1 / 2) and pc["normal"]["support"] == 2
    assert m["balanced_accuracy"] == pytest.approx((3 / 4 + 1 / 2) / 2)
    # positive scores 0.9 0.7 0.4 0.8 vs negatives 0.1 0.6: pairs won 4 + 3 = 7 of 8
    assert m["auc"] == pytest.approx(7 / 8)
    assert m["notes"] == []


def test_ece_hand_computed():
    # confidences 0.9 0.6 0.9 0.7 0.6 0.8; bins of width 1/15: {0.9, 0.9} both right, {0.6, 0.6} both
    # wrong (samples 1 and 4), {0.7} right, {0.8} right
    expected = (2 / 6) * abs(1 - 0.9) + (2 / 6) * abs(0 - 0.6) + (1 / 6) * abs(1 - 0.7) + (1 / 6) * abs(1 - 0.8)
    assert expected_calibration_error(Y, PROBS) == pytest.approx(expected)
    assert compute_metrics(Y, PROBS, ["a", "b"])["ece"] == pytest.approx(expected)


def test_auc_ties_count_half():
    m = compute_metrics([0, 1], [[0.5, 0.5], [0.5, 0.5]], ["a", "b"])
    assert m["auc"] == pytest.approx(0.5)


def test_multiclass_macro_auc_matches_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = np.arange(60) % 3
    p = rng.dirichlet([1, 1, 1], 60)
    p[np.arange(60), y] += 0.3
    p /= p.sum(1, keepdims=True)
    m = compute_metrics(y, p, ["a", "b", "c"])
    assert m["auc"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"))


def test_absent_class_gives_none_with_note():
    m = compute_metrics([1, 1, 1], [[0.2, 0.8], [0.6, 0.4], [0.1, 0.9]], ["normal", "pneumonia"])
    assert m["auc"] is None and m["per_class"]["normal"]["sensitivity"] is None
    assert m["per_class"]["normal"]["specificity"] == pytest.approx(2 / 3)
    assert m["balanced_accuracy"] == pytest.approx(2 / 3)
    assert any("normal is absent" in n for n in m["notes"]) and any("AUC undefined" in n for n in m["notes"])
    three = compute_metrics([0, 1, 0, 1], np.full((4, 3), 1 / 3), ["a", "b", "c"])
    assert three["auc"] == pytest.approx(0.5) and any("2 of 3 classes" in n for n in three["notes"])


def test_bad_shapes_raise():
    with pytest.raises(ValueError):
        compute_metrics([0, 1], [[1.0, 0.0]], ["a", "b"])


def test_table_and_markdown():
    dense = compute_metrics(Y, PROBS, ["normal", "pneumonia"])
    pruned = compute_metrics(Y, PROBS[:, ::-1], ["normal", "pneumonia"])
    table = metrics_table({"dense": dense, "pruned@0.3": pruned}, reference="dense")
    assert isinstance(table, Table) and [c.header for c in table.columns] == ["metric", "dense", "pruned@0.3"]
    console = Console(width=120, record=True)
    console.print(table)
    text = console.export_text()
    assert "sensitivity pneumonia" in text and "0.6667" in text and "(-0.3333)" in text
    assert "[0.223, 0.957]" in text and "n pneumonia" in text and "Clopper-Pearson" in text
    md = metrics_to_markdown({"dense": dense, "pruned@0.3": pruned})
    lines = md.strip().splitlines()
    assert lines[0] == "| metric | dense | pruned@0.3 |"
    # accuracy 4/6: exact interval [0.223, 0.957]; 2/6: [0.043, 0.777]
    assert "| accuracy | 0.6667 [0.223, 0.957] | 0.3333 [0.043, 0.777] |" in lines
    assert "| n | 6 | 6 |" in lines and "| n pneumonia | 4 | 4 |" in lines
    plain = metrics_to_markdown({"dense": compute_metrics(Y, PROBS, ["normal", "pneumonia"], intervals=False)})
    assert "| accuracy | 0.6667 |" in plain.splitlines() and "Clopper" not in plain


# Clopper-Pearson 95 % limits published by Newcombe (1998, Stat Med 17:857, Table I, method 5) and the
# closed forms at the edges: k = 0 -> hi = 1 - 0.025 ** (1/n); k = n -> lo = 0.025 ** (1/n).
NEWCOMBE = {(81, 263): (0.2527, 0.3676), (15, 148): (0.0578, 0.1617), (0, 20): (0.0, 0.1684), (1, 29): (0.0009, 0.1776)}


@pytest.mark.parametrize(("k", "n"), [(0, 10), (5, 10), (10, 10), (81, 263), (15, 148), (0, 20), (1, 29), (1, 1)])
def test_clopper_pearson_matches_scipy_exact(k, n):
    from scipy.stats import binomtest

    ref = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    lo, hi = clopper_pearson(k, n)
    assert lo == pytest.approx(ref.low, abs=1e-9) and hi == pytest.approx(ref.high, abs=1e-9)


def test_clopper_pearson_published_and_closed_form():
    for (k, n), (lo, hi) in NEWCOMBE.items():
        got = clopper_pearson(k, n)
        assert got[0] == pytest.approx(lo, abs=1e-4) and got[1] == pytest.approx(hi, abs=1e-4)
    assert clopper_pearson(0, 10) == (0.0, pytest.approx(1 - 0.025 ** 0.1))
    assert clopper_pearson(10, 10) == (pytest.approx(0.025 ** 0.1), 1.0)
    assert clopper_pearson(5, 10) == (pytest.approx(0.1871, abs=1e-4), pytest.approx(0.8129, abs=1e-4))
    assert clopper_pearson(5, 10, confidence=0.5)[1] < 0.8129  # narrower at lower confidence
    for bad in ((11, 10), (-1, 10), (0, 0), (1.5, 10)):
        with pytest.raises(ValueError):
            clopper_pearson(*bad)
    with pytest.raises(ValueError):
        clopper_pearson(1, 10, confidence=1.0)


def test_metrics_carry_intervals_and_class_n():
    m = compute_metrics(Y, PROBS, ["normal", "pneumonia"])
    assert m["accuracy_ci"] == pytest.approx(list(clopper_pearson(4, 6)))
    pneu = m["per_class"]["pneumonia"]
    assert pneu["support"] == 4 and pneu["n_negative"] == 2
    assert pneu["sensitivity_ci"] == pytest.approx(list(clopper_pearson(3, 4)))
    assert pneu["specificity_ci"] == pytest.approx(list(clopper_pearson(1, 2)))
    for key in ("balanced_accuracy", "auc"):
        lo, hi = m[f"{key}_ci"]
        assert 0.0 <= lo <= m[key] <= hi <= 1.0
    assert m["intervals"]["n_boot"] == 1000 and m == compute_metrics(Y, PROBS, ["normal", "pneumonia"])  # seeded
    absent = compute_metrics([1, 1, 1], [[0.2, 0.8], [0.6, 0.4], [0.1, 0.9]], ["normal", "pneumonia"])
    assert absent["per_class"]["normal"]["sensitivity_ci"] is None and absent["auc_ci"] is None


def test_stratified_resamples_keep_class_counts():
    y = np.array([0] * 7 + [1] * 3 + [2] * 5)
    chunks = list(stratified_counts(y, 20, seed=1, chunk=8))
    assert [c.shape for c in chunks] == [(8, 15), (8, 15), (4, 15)]
    counts = np.concatenate(chunks)
    for c in range(3):
        assert (counts[:, y == c].sum(axis=1) == (y == c).sum()).all()
    assert counts.std(axis=0).min() > 0  # images really are redrawn
    assert np.array_equal(counts, np.concatenate(list(stratified_counts(y, 20, seed=1, chunk=8))))
    assert percentile_interval(np.array([np.nan, np.nan])) is None


def test_bootstrap_interval_covers_a_known_accuracy():
    # 1000 images, 80 % right, balanced classes: the interval should be close to the exact one (+-0.025).
    rng = np.random.default_rng(0)
    y = np.arange(1000) % 2
    right = rng.permutation(1000) < 800
    pred = np.where(right, y, 1 - y)
    probs = np.eye(2)[pred]
    lo, hi = bootstrap_interval(y, probs, "accuracy", n_boot=500, seed=0)
    exact = clopper_pearson(800, 1000)
    assert lo == pytest.approx(exact[0], abs=0.01) and hi == pytest.approx(exact[1], abs=0.01)


def test_paired_bootstrap_diff():
    rng = np.random.default_rng(0)
    y = np.arange(400) % 2
    pa = np.eye(2)[np.where(rng.random(400) < 0.9, y, 1 - y)]
    # b is a with 40 of its correct answers flipped: a true accuracy drop of exactly 0.10
    correct = np.flatnonzero(pa.argmax(1) == y)
    pb = pa.copy()
    flip = rng.choice(correct, 40, replace=False)
    pb[flip] = pb[flip][:, ::-1]
    r = paired_bootstrap_diff(y, pa, pb, "accuracy", n_boot=500, seed=0)
    assert r["diff"] == pytest.approx(0.10) and r["ci"][0] < 0.10 < r["ci"][1] and r["ci"][0] > 0.05
    assert r["n"] == 400 and r["metric"] == "accuracy" and r["a"] - r["b"] == pytest.approx(r["diff"])
    # paired: much tighter than the two unpaired accuracy intervals combined
    assert r["ci"][1] - r["ci"][0] < 0.06
    assert paired_bootstrap_diff(y, pa, pb, "accuracy", n_boot=500, seed=0) == r
    same = paired_bootstrap_diff(y, pa, pa, "auc", n_boot=50)
    assert same["diff"] == 0.0 and same["ci"] == [0.0, 0.0]
    sens = paired_bootstrap_diff(y, pa, pb, "sensitivity:pneumonia", n_boot=200, class_names=["normal", "pneumonia"])
    assert sens["metric"] == "sensitivity:pneumonia" and sens["diff"] > 0
    assert paired_bootstrap_diff(y, pa, pb, "sensitivity:1", n_boot=200)["diff"] == sens["diff"]


def test_weighted_auc_matches_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    from toolchain.metrics import binary_auc

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 200)
    score = np.round(rng.random(200) + 0.3 * y, 1)  # many ties
    assert binary_auc(y == 1, score) == pytest.approx(roc_auc_score(y, score))
    assert binary_auc(np.ones(3, bool), np.arange(3)) is None


def test_metric_names_checked():
    assert metric_function("balanced_accuracy") is balanced_accuracy
    for bad in ("f1", "sensitivity:cat", "precision:0"):
        with pytest.raises(ValueError):
            metric_function(bad, ["normal", "pneumonia"])
    with pytest.raises(ValueError):
        paired_bootstrap_diff(Y, PROBS, PROBS[:3], "accuracy")


def test_hanley_mcneil_matches_simulated_auc_spread():
    """The formula is exact when scores are exponential: its SE must match the spread of simulated AUCs."""
    from toolchain.intervals import hanley_mcneil
    from toolchain.metrics import binary_auc

    rng = np.random.default_rng(0)
    n_pos, n_neg, rate = 40, 60, 3.0  # positives ~ Exp(1), negatives ~ Exp(rate): AUC = rate / (1 + rate)
    aucs = []
    for _ in range(1500):
        score = np.concatenate([rng.exponential(1.0, n_pos), rng.exponential(1.0 / rate, n_neg)])
        aucs.append(binary_auc(np.arange(100) < n_pos, score))
    lo, hi = hanley_mcneil(rate / (1 + rate), n_pos, n_neg)
    assert (hi - lo) / 2 / 1.959964 == pytest.approx(np.std(aucs), rel=0.08)
    assert hanley_mcneil(1.0, 5, 5) == (1.0, 1.0) and hanley_mcneil(0.5, 10, 10)[0] < 0.5
    with pytest.raises(ValueError):
        hanley_mcneil(1.2, 10, 10)
