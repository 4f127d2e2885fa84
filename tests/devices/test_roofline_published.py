"""The published-latency validation set, the committed Jetson fits and the prediction report: every figure
has a source, the fits stay physically possible, and each prediction names its own validation error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devices.roofline import FIT_LOWER, FIT_UPPER, FITS_PATH, load_device_fit
from devices.roofline_fit import STANDARD_MODELS, load_published

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "roofline.json"
JETSONS = ("jetson-orin-nano", "jetson-agx-orin")


def test_every_published_figure_names_its_source_and_setting():
    data = load_published()
    for key, src in data["sources"].items():
        assert src["url"].startswith("https://") and src["setting"] and src["not_stated"], key
    devices = {m["device"] for m in data["measurements"]}
    assert devices == set(JETSONS)
    for m in data["measurements"]:
        assert m["model"] in STANDARD_MODELS and m["latency_ms"] > 0 and m["precision"] in ("fp16", "int8")
    for target in JETSONS:  # enough models per class for a leave-one-out error
        assert sum(m["device"] == target for m in data["measurements"]) >= 4


def test_published_data_refuses_an_unsourced_figure(tmp_path):
    data = load_published()
    data["measurements"].append({**data["measurements"][0], "source": "my memory"})
    (tmp_path / "p.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="unknown source"):
        load_published(tmp_path / "p.json")


@pytest.mark.parametrize("target", JETSONS)
def test_committed_fits_are_bounded_and_validated(target):
    fit = load_device_fit(target)
    assert fit is not None, f"{FITS_PATH} lacks {target}: run medprune study jetson_prediction"
    for value, lo, hi in zip((fit.compute_eff, fit.memory_eff, fit.overhead_us), FIT_LOWER, FIT_UPPER, strict=True):
        assert lo <= value <= hi
    assert fit.loo_mape is not None and fit.n == len(fit.points) >= 4
    assert all(url.startswith("https://") for url in fit.sources)


def test_report_predictions_carry_their_device_class_error_and_source():
    report = json.loads(RESULTS.read_text())
    fits = report["fits"]
    assert report["summary"]["jetson_published_mape"] == max(f["loo_mape"] for f in fits.values())
    for target, f in fits.items():  # the committed fit file is what the report was made with
        assert load_device_fit(target).loo_mape == pytest.approx(f["loo_mape"])
    assert report["predictions"]
    for p in report["predictions"]:
        assert p["label"] == "predicted"
        assert p["error_pct"] == pytest.approx(fits[p["target"]]["loo_mape"] * 100)
        assert f"published {p['target']} latencies" in p["error_source"] and "leave-one-out" in p["error_source"]
        assert p["range_ms"][0] <= p["latency_ms"] <= p["range_ms"][1] or fits[p["target"]]["loo_band"][0] > 1
    md = RESULTS.with_suffix(".md").read_text()
    assert "LOO MAPE" in md and all(src["url"] in md for src in report["sources"].values())
