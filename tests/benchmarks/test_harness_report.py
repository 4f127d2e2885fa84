"""Reports: JSON (schema), Markdown, HTML and PNG plots from a small synthetic report."""

from __future__ import annotations

import json

from benchmarks.report import SCHEMA, compare, pareto_front, write_report


def _model(name, p50, acc, macs, variant, size=1.0, rss=100.0):
    samples = [p50 * f for f in (0.9, 1.0, 1.0, 1.1, 1.3)]
    return {"name": name, "runtime": "onnxruntime", "threads": 1, "input_shape": [1, 16, 16], "size_mb": size,
            "params": int(macs / 10), "macs": macs, "variant": variant, "group": "tiny",
            "latency_ms": {"mean": p50, "std": 0.1, "min": min(samples), "p50": p50, "p90": p50 * 1.1,
                           "p99": p50 * 1.3, "max": max(samples), "n": 5, "samples": samples},
            "throughput": {"batch": 8, "runs": 3, "images_per_s": 1000 / p50, "batch_latency_ms": 8 * p50},
            "memory": {"peak_rss_mb": rss}, "label": "measured",
            "accuracy": {"accuracy": acc, "auc": acc, "per_class": {"a": {"sensitivity": acc, "specificity": acc}}}}


def test_write_report_all_formats(tmp_path):
    dense = _model("dense", 2.0, 0.90, 4_000_000, "dense", size=2.0, rss=120)
    pruned = _model("pruned", 1.0, 0.88, 2_000_000, "pruned-50%", size=1.0, rss=100)
    cmp = compare(dense, pruned)
    assert cmp["mac_ratio"] == 2.0 and cmp["speedup_p50"] == 2.0 and cmp["size_ratio"] == 2.0
    report = {"title": "t", "command": "medprune bench --model x", "machine": {"cpu_model": "cpu", "versions": {}},
              "models": [dense, pruned], "comparisons": [cmp],
              "predictions": [{"model": "dense", "target": "jetson-orin-nano", "precision": "fp16", "batch": 1,
                               "latency_ms": 0.5, "macs": 4_000_000, "compute_bound_layers": 1,
                               "memory_bound_layers": 2, "calibration_mape": 20.0, "label": "predicted"}],
              "calibration": {"compute_eff": 1.0, "memory_eff": 1.0, "overhead_us": 1.0, "mape": 10.0,
                              "loo_mape": 15.0, "peaks": {"gflops": 100.0, "gbps": 10.0},
                              "points": [{"name": "a", "macs": 1e6, "measured_ms": 1.0, "predicted_ms": 1.1},
                                         {"name": "b", "macs": 1e7, "measured_ms": 5.0, "predicted_ms": 4.5}]},
              "device_commands": {"jetson-orin-nano": ["trtexec --onnx=m.onnx --fp16"]}, "notes": ["n"]}
    paths = write_report(report, tmp_path, stem="r")
    for key in ("json", "md", "html", "latency", "pareto", "speedup", "calibration"):
        assert paths[key].exists() and paths[key].stat().st_size > 0, key
    assert paths["latency"].read_bytes()[:4] == b"\x89PNG"
    data = json.loads(paths["json"].read_text())
    assert data["schema"] == SCHEMA and data["created"] and data["command"].startswith("medprune bench")
    md = paths["md"].read_text()
    assert "PREDICTED ms" in md and "r_pareto.png" in md and "trtexec --onnx=m.onnx" in md
    assert "<table>" in paths["html"].read_text()
    assert not list(tmp_path.glob(".*tmp"))  # nothing half-written left behind


def test_report_without_optional_parts(tmp_path):
    paths = write_report({"models": [_model("m", 1.0, 0.5, 10, "dense")], "machine": {}}, tmp_path)
    assert {"json", "md", "html", "latency", "pareto"} <= set(paths)
    assert "speedup" not in paths and "calibration" not in paths


def test_pareto_front():
    pts = [(1.0, 0.8), (2.0, 0.9), (1.5, 0.7), (3.0, 0.85)]
    assert pareto_front(pts) == [0, 1]
