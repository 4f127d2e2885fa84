"""split_shift: val vs test figures and their independent-bootstrap difference on hand-made predictions, the
findings read from them, the one-line errors of the study's options, and one report from a tiny checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.studies import split_shift as ss
from toolchain.intervals import clopper_pearson

NAMES = ["normal", "pneumonia"]


def _preds(y: np.ndarray, wrong: np.ndarray) -> np.ndarray:
    """One-hot probabilities that are right except where ``wrong``."""
    pred = np.where(wrong, 1 - y, y)
    return np.eye(2)[pred] * 0.8 + 0.1


def _split(n0: int, n1: int, miss0: int, miss1: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels (n0 normal, n1 pneumonia) and predictions missing the first ``miss0`` / ``miss1`` of each class."""
    y = np.r_[np.zeros(n0, int), np.ones(n1, int)]
    wrong = np.r_[np.arange(n0) < miss0, np.arange(n1) < miss1]
    return y, _preds(y, wrong)


def _row(result: dict, figure: str) -> dict:
    return next(r for r in result["rows"] if r["figure"] == figure)


def test_sensitivity_shift_values_intervals_and_n():
    yv, pv = _split(200, 400, miss0=4)  # normal sensitivity 0.98 on val
    yt, pt = _split(100, 150, miss0=30, miss1=3)  # 0.70 on test
    out = ss.split_shift(yv, pv, yt, pt, NAMES, n_boot=1000)
    row = _row(out, "sensitivity normal")
    assert row["val"]["value"] == pytest.approx(0.98) and row["test"]["value"] == pytest.approx(0.70)
    assert (row["val"]["n"], row["test"]["n"]) == (200, 100)
    assert row["val"]["ci"] == pytest.approx(list(clopper_pearson(196, 200)))  # the project's exact interval
    assert row["test"]["ci"] == pytest.approx(list(clopper_pearson(70, 100)))
    assert row["diff"]["value"] == pytest.approx(0.28)
    lo, hi = row["diff"]["ci"]
    assert 0 < lo < 0.28 < hi  # a real drop, and the interval brackets it
    # independent splits: the half-width follows the two binomial variances (normal approximation)
    half = 1.96 * np.sqrt(0.98 * 0.02 / 200 + 0.7 * 0.3 / 100)
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.2)
    acc = _row(out, "accuracy")
    assert acc["val"]["n"] == 600 and acc["test"]["n"] == 250
    assert acc["test"]["value"] == pytest.approx((250 - 33) / 250)


def test_no_shift_gives_an_interval_around_zero():
    y, p = _split(120, 240, miss0=12, miss1=24)
    out = ss.split_shift(y, p, y.copy(), p.copy(), NAMES, n_boot=1000)
    for row in out["rows"]:
        lo, hi = row["diff"]["ci"]
        assert row["diff"]["value"] == pytest.approx(0.0) and lo < 0 < hi, row


def test_predicted_mix_beside_the_true_mix():
    yv, pv = _split(100, 300, miss0=0)
    yt, pt = _split(100, 100, miss0=50)  # half the normal test images called pneumonia
    mix = {m["class"]: m for m in ss.split_shift(yv, pv, yt, pt, NAMES, n_boot=200)["mix"]}
    assert mix["normal"]["val"]["true"] == pytest.approx(0.25) and mix["normal"]["test"]["true"] == 0.5
    assert mix["normal"]["test"]["predicted"]["value"] == pytest.approx(0.25)
    assert mix["normal"]["test"]["predicted"]["ci"] == pytest.approx(list(clopper_pearson(50, 200)))
    assert mix["pneumonia"]["test"]["predicted"]["value"] == pytest.approx(0.75)


def test_bad_inputs():
    y, p = _split(10, 10, miss0=1)
    with pytest.raises(ValueError):
        ss.split_shift(y, p, y, p[:5], NAMES, n_boot=100)
    with pytest.raises(ValueError):
        ss.split_shift(y, p, y, p, ["only"], n_boot=100)
    with pytest.raises(ValueError):
        ss.split_shift(y, p, y, p, NAMES, n_boot=0)


def test_findings_follow_the_intervals():
    shifted = ss.split_shift(*_split(200, 400, miss0=4), *_split(100, 150, miss0=30), NAMES, n_boot=500)
    same = ss.split_shift(*_split(200, 400, miss0=20), *_split(200, 400, miss0=20), NAMES, n_boot=500)
    runs = [{"data": "a", "model": "m1", **shifted}, {"data": "b", "model": "m2", **same}]
    lines = ss.findings({"runs": runs})
    assert "lower on test beyond the interval" in lines[0] and "no drop beyond the interval" in lines[1]
    assert any(line.startswith("1 of 2 dense models") and "28 pts" in line for line in lines)


@pytest.mark.parametrize("argv,needle", [
    (["--checkpoint", "no-equals"], "data/model=PATH"),
    (["--checkpoint", "breastmnist/vgg19=x.safetensors"], "not one of the design's"),
    (["--n-boot", "10"], "--n-boot must be >= 100"),
])
def test_bad_options_are_one_line_errors(argv, needle, capsys):
    from toolchain.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["study", "split_shift", *argv])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and needle in err and "Traceback" not in err, err


def test_missing_design_checkpoint(tmp_path, monkeypatch, capsys):
    from toolchain.cli import main

    monkeypatch.setenv("MEDPRUNE_CACHE", str(tmp_path / "empty"))
    with pytest.raises(SystemExit) as exc:
        main(["study", "split_shift", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "not found" in err and not (tmp_path / "out").exists(), err


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_report_from_a_tiny_checkpoint(tmp_path):
    from benchmarks.studies._pairs import publish
    from tests.conftest import train_tiny_resnet

    weights, _ = train_tiny_resnet(tmp_path)
    run = ss.measure("tiny/test_resnet", str(weights), n_boot=200, seed=0)
    assert [r["val"]["n"] for r in run["rows"][:1]] == [16] and run["rows"][0]["test"]["n"] == 16
    report = {"command": "medprune study split_shift", "n_boot": 200, "seed": 0, "runs": [run]}
    publish(tmp_path / "out", "split_shift", report, ss.findings, ss.to_markdown, ss.plot)
    saved = json.loads((tmp_path / "out" / "split_shift.json").read_text())
    assert saved["runs"][0]["sha256"] == run["sha256"] and saved["findings"]
    assert "| sensitivity class_0 |" in (tmp_path / "out" / "split_shift.md").read_text()
    assert (tmp_path / "out" / "split_shift.png").stat().st_size > 1000
