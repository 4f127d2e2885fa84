"""Calibration benchmark: scores on known logits, findings from numbers, and one tiny run end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.studies import ece_study as cb  # noqa: E402
from tests.conftest import write_tiny_npz  # noqa: E402
from toolchain.errors import ConfigError  # noqa: E402


def test_scores_of_known_logits():
    z = np.array([[10.0, -10.0], [-10.0, 10.0], [10.0, -10.0], [-10.0, 10.0]])
    right = cb.scores_of(z, np.array([0, 1, 0, 1]))
    assert right["accuracy"] == 1.0 and right["ece"] == pytest.approx(0.0, abs=1e-6) and right["nll"] < 1e-6
    wrong = cb.scores_of(z, np.array([1, 0, 1, 0]))
    assert wrong["accuracy"] == 0.0 and wrong["ece"] == pytest.approx(1.0, abs=1e-6)
    assert wrong["brier"] == pytest.approx(2.0, abs=1e-6)


def test_findings_report_failures_too():
    def row(ratio, u, c):
        return {"ratio": ratio, "temperature": 1.5, "uncalibrated": {"ece": u, "nll": u}, "calibrated": {"ece": c, "nll": c}}

    report = {"runs": [{"model": "m", "dataset": "d", "rows": [row(0, 0.02, 0.01), row(0.5, 0.10, 0.03), row(0.7, 0.05, 0.06)]}]}
    lines = cb.findings(report)
    assert "2 of 2 pruned models" in lines[0]
    assert "lowered test ECE in 1 of 2" in lines[1]
    assert any(line.startswith("Not improved: d/m at 70%") for line in lines)


def test_tiny_run_end_to_end(tmp_path, monkeypatch):
    from toolchain.train import TrainConfig, train

    monkeypatch.setenv("MEDPRUNE_CACHE", str(tmp_path / "cache"))
    npz = write_tiny_npz(tmp_path / "tinymnist.npz", n=(32, 12, 12))
    weights = train(TrainConfig(model="resnet50", data=str(npz), img_size=16, epochs=1, batch_size=8, patience=0,
                                build_args={"layers": [1, 1, 1, 1], "channels": [8, 16, 16, 32], "stem_width": 8},
                                quiet=True, device="cpu", augment=False))
    out = tmp_path / "out"
    report = cb.main(["--pairs", "tiny:resnet50", "--checkpoint", f"tiny:resnet50={weights}", "--ratios", "0.5",
                      "--n-per-class", "2", "--criterion", "magnitude", "--out", str(out)])
    rows = report["runs"][0]["rows"]
    assert [r["ratio"] for r in rows] == [0.0, 0.5]
    for r in rows:
        assert r["temperature"] > 0
        assert r["calibrated"]["accuracy"] == r["uncalibrated"]["accuracy"]  # a temperature keeps predictions
    saved = json.loads((out / "ece_study.json").read_text())
    assert saved["runs"][0]["rows"][1]["ratio"] == 0.5 and (out / "ece_study.png").stat().st_size > 0
    assert "| tiny | resnet50 | 0.50 |" in (out / "ece_study.md").read_text()


def test_bad_arguments_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="ratios"):
        cb.main(["--ratios", "1.5", "--out", str(tmp_path)])
    with pytest.raises(ConfigError, match="no checkpoint"):
        cb.main(["--pairs", "nosuchdata:vgg19", "--out", str(tmp_path)])
