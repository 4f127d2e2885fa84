"""Metrics against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
from rich.console import Console
from rich.table import Table

from toolchain.metrics import compute_metrics, expected_calibration_error, metrics_table, metrics_to_markdown

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
    md = metrics_to_markdown({"dense": dense, "pruned@0.3": pruned})
    lines = md.strip().splitlines()
    assert lines[0] == "| metric | dense | pruned@0.3 |" and "| accuracy | 0.6667 | 0.3333 |" in lines
    assert "| n | 6 | 6 |" in lines and "| AUC | 0.8750 | 0.1250 |" in lines
