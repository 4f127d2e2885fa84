"""res224 study: parts rerun over a previous result keep the others; the report renders every part."""

from __future__ import annotations

import json

import pytest

from benchmarks.studies._res224_report import write_report
from benchmarks.studies.res224 import merge
from toolchain.errors import ConfigError


def _row(model: str, ratio: float = 1.5, parity: float = 2e-5) -> dict:
    lat = {"dense": {"median_ms": 30.0}, "pruned": {"median_ms": 20.0}, "speedup": 1.5, "runtime_version": "x"}
    exp = {w: {rt: {"max_abs_logit": parity, "top1_agreement": 1.0} for rt in ("onnxruntime", "openvino")}
           for w in ("dense", "pruned")}
    return {"model": model,
            "cost": {"params": 2e7, "unit_layers": 53, "units": 1, "frozen_fwd_bwd_s": [1.0, 1.2],
                     "lrp_s": [ratio, 1.2 * ratio], "ratio_per_pair": [ratio, ratio], "ratio_median": ratio},
            "removal": {"ratio": 0.5, "units_total": 10, "units_masked": 5, "units_removed": 4, "params_dense": 2e7,
                        "params_pruned": 1e7, "parity_max_abs": 1e-6, "remove_s": 1.0, "dense_max_abs_logit": 3.0,
                        "pruned_max_abs_logit": 2.0},
            "export": exp, "export_parity_max_abs": parity,
            "latency": {"onnxruntime": lat, "openvino": lat}}


def test_merge_keeps_the_parts_not_rerun():
    previous = {"models": [_row("resnet50", ratio=1.5, parity=3e-5)]}
    fresh = {"model": "resnet50", "cost": _row("resnet50", ratio=1.8)["cost"]}
    merged = merge(previous, fresh, {"cost"})
    assert merged["cost"]["ratio_median"] == 1.8  # the rerun part is new ...
    assert merged["export_parity_max_abs"] == 3e-5 and merged["latency"] == previous["models"][0]["latency"]
    assert merge(None, fresh, {"cost"}) == fresh  # ... and nothing is invented without a previous result
    # a rerun of export replaces the parity too
    again = merge(previous, {"model": "resnet50", "export": {}, "export_parity_max_abs": 1e-6}, {"export"})
    assert again["export_parity_max_abs"] == 1e-6 and again["cost"] == previous["models"][0]["cost"]


def test_report_renders_every_part(tmp_path):
    doc = {"img_size": 224, "torch": "t", "cpu": "x86_64", "load_average": [1, 1, 1], "load_average_end": [1, 1, 1],
           "models": [_row("vgg19", 1.7), _row("vit_b16", 2.4, 4e-5)]}
    doc["models"][1]["cost"].update(command="medprune study res224 --parts cost", n_images=2, repeats=2)
    doc["models"][1]["latency"].update(command="medprune study res224 --parts latency", runs=20, threads=2)
    write_report(doc, tmp_path)
    md = (tmp_path / "res224.md").read_text()
    assert "| vgg19 | 20.0M | 53 | 1.10 | 1.87 | 1.700 | yes |" in md  # medians of the pairs, ratio, target
    assert "| vit_b16 | 20.0M | 53 | 1.10 | 2.64 | 2.400 | NO |" in md
    assert "| vit_b16 | ONNX Runtime x | 30.0 | 20.0 | 1.50 |" in md and "4.0e-05" in md
    assert "`medprune study res224 --parts cost`; `medprune study res224 --parts latency`" in md  # both recorded
    assert "Median of 20 batch-1 runs" in md
    assert "## Not measured\n\n- resnet50: cost, removal, export, latency\n" in md  # a partial result says so
    assert json.loads((tmp_path / "res224.json").read_text())["models"][1]["export_parity_max_abs"] == 4e-5
    assert (tmp_path / "res224.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("argv", [["--ratio", "1.5"], ["--models", "alexnet"], ["--parts", "speed"]])
def test_bad_options_are_config_errors(argv):
    from benchmarks.studies.res224 import main

    with pytest.raises(ConfigError):
        main(argv)
