"""The one-shot TensorRT check (benchmarks/studies/tensorrt_check.py): without a GPU it refuses in one line
and writes nothing; with a GPU and tensorrt it builds FP16/INT8 engines of a tiny model and runs
run_trt.py as shipped (skipped here, with the reason, when this machine has neither)."""

from __future__ import annotations

import json

import pytest

from benchmarks.studies import tensorrt_check


def test_without_a_gpu_it_refuses_and_writes_nothing(tmp_path, monkeypatch):
    from toolchain.errors import ConfigError

    monkeypatch.setattr(tensorrt_check, "gpu_unavailable", lambda: "no CUDA GPU visible to PyTorch")
    with pytest.raises(ConfigError, match="needs an NVIDIA GPU with TensorRT: no CUDA GPU"):
        tensorrt_check.main(["--out", str(tmp_path)])
    assert not any(tmp_path.iterdir())


def test_report_table_names_failures_and_figures():
    report = {"title": "t", "command": "c", "created": "now", "device": {"gpu": "x"}, "notes": ["n"],
              "models": [{"model": "m", "test_n": 10, "ort_fp32_accuracy": 0.9, "ort_fp32_accuracy_ci95": [0.55, 0.99],
                          "engines": {"fp16": {"build": {"ok": True}, "top1_agreement": 1.0, "max_abs_prob_diff": 1e-3,
                                               "accuracy": 0.9, "acc_drop_pts": 0.0, "latency_b1_p50_ms": 0.5,
                                               "batch8": {"batch_latency_ms": 1.5}},
                                      "int8": {"build": {"ok": False, "error": "parse failed"}}}}]}
    md = tensorrt_check._markdown(report)
    assert "failed: parse failed" in md and "| m | fp16 | yes | 1.0000 |" in md and "n=10" in md


GPU_REASON = tensorrt_check.gpu_unavailable()


@pytest.mark.skipif(GPU_REASON is not None, reason=f"TensorRT check needs a GPU: {GPU_REASON}")
def test_engines_build_and_agree_on_a_gpu(tmp_path):
    from tests.export import _pkg

    _, files = _pkg.checkpoint_and_exports(tmp_path)
    row = tensorrt_check.check_model(files["onnx"], ["fp16"], "pneumoniamnist", 32, 20, tmp_path)
    fp16 = row["engines"]["fp16"]
    assert fp16["build"]["ok"], fp16["build"]["error"]
    assert fp16["top1_agreement"] >= 0.9 and fp16["max_abs_prob_diff"] < 0.05
    assert json.dumps(row)  # serialisable as the report is
