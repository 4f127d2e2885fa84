"""`medprune evaluate` and `medprune prune` report every accuracy-like figure with its 95 % interval and n."""

from __future__ import annotations

import json

import pytest

from tests.conftest import train_tiny_resnet
from toolchain.cli import main
from toolchain.intervals import clopper_pearson

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return train_tiny_resnet(tmp_path_factory.mktemp("cli_intervals"), epochs=1, lr=None, threads="1")


def _run(argv, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out = capsys.readouterr()
    assert exc.value.code == 0, out.err
    return out.out


def _assert_intervals(m: dict) -> None:
    n = m["n"]
    assert m["accuracy_ci"] == pytest.approx(list(clopper_pearson(round(m["accuracy"] * n), n)))
    lo, hi = m["balanced_accuracy_ci"]
    assert lo <= m["balanced_accuracy"] <= hi
    for row in m["per_class"].values():
        assert row["support"] + row["n_negative"] == n
        assert row["sensitivity_ci"][0] <= row["sensitivity"] <= row["sensitivity_ci"][1]
        assert row["specificity_ci"][0] <= row["specificity"] <= row["specificity_ci"][1]


def test_evaluate_prints_and_writes_intervals(ckpt, tmp_path, capsys, monkeypatch):
    weights, npz = ckpt
    js = tmp_path / "eval.json"
    out = _run(["evaluate", "-c", str(weights), "--data", str(npz), "--device", "cpu", "--json", str(js)],
               capsys, monkeypatch)
    m = json.loads(js.read_text())["metrics"]
    _assert_intervals(m)
    lo, hi = m["accuracy_ci"]
    assert f"[{lo:.3f}, {hi:.3f}]" in out
    assert "[lo, hi]: 95% interval" in out and "Clopper-Pearson" in out and "n class_0" in out


def test_prune_reports_intervals_per_ratio(ckpt, tmp_path, capsys, monkeypatch):
    weights, npz = ckpt
    js = tmp_path / "prune.json"
    out = _run(["prune", "-c", str(weights), "--data", str(npz), "--criterion", "magnitude", "--ratios", "0.3",
                "--device", "cpu", "--json", str(js), "-q"], capsys, monkeypatch)
    doc = json.loads(js.read_text())
    for column in ("dense", "0.30"):
        _assert_intervals(doc["ratios"][column]["metrics"])
    m = doc["ratios"]["0.30"]["metrics"]
    assert f"[{m['accuracy_ci'][0]:.3f}, {m['accuracy_ci'][1]:.3f}]" in out and "[lo, hi]" in out
