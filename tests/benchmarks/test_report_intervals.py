"""The benchmark report (a package's reports/, `medprune bench`) shows accuracy, AUC and per-class
sensitivity/specificity with their 95 % intervals and the n behind each (#14), in Markdown and HTML."""

from __future__ import annotations

import numpy as np

from benchmarks.report import write_report
from tests.benchmarks.test_harness_report import _model
from toolchain.intervals import clopper_pearson
from toolchain.metrics import compute_metrics


def test_model_table_carries_intervals_and_n(tmp_path):
    y = np.array([0] * 30 + [1] * 20)
    pred = y.copy()
    pred[:3] = 1  # 3 normal images wrong: accuracy 47/50, normal sensitivity 27/30
    probs = np.eye(2)[pred] * 0.8 + 0.1
    metrics = compute_metrics(y, probs, ["normal", "pneumonia"])
    model = {**_model("dense", 2.0, 0.9, 4_000_000, "dense"), "accuracy": metrics}
    paths = write_report({"models": [model], "machine": {}}, tmp_path, stem="r")
    md = paths["md"].read_text()
    acc_lo, acc_hi = clopper_pearson(47, 50)
    sens_lo, sens_hi = clopper_pearson(27, 30)
    row = next(line for line in md.splitlines() if line.startswith("| dense |"))
    assert "| n | acc [95% CI] | AUC [95% CI] |" in md
    assert f"| 50 | 0.94 [{acc_lo:.3f}, {acc_hi:.3f}] |" in row
    lo, hi = metrics["auc_ci"]
    assert f"[{lo:.3f}, {hi:.3f}]" in row
    assert f"normal: 0.9 [{sens_lo:.3f}, {sens_hi:.3f}] (n=30) / " in row and "(n=20)" in row
    assert f"0.94 [{acc_lo:.3f}, {acc_hi:.3f}]" in paths["html"].read_text()


def test_model_table_without_intervals_shows_the_bare_figures(tmp_path):
    """Reports of older runs (no ``*_ci`` stored) still render: the value alone, no empty brackets."""
    paths = write_report({"models": [_model("m", 1.0, 0.5, 10, "dense")], "machine": {}}, tmp_path)
    row = next(line for line in paths["md"].read_text().splitlines() if line.startswith("| m |"))
    assert "| 0.5 | 0.5 |" in row and "[" not in row
