"""The benchmark harness on tiny models: ORT, OpenVINO and torch return every field (no timing asserts)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.harness import (
    BenchConfig,
    benchmark,
    cross_check_benchmark_app,
    latency_stats,
    machine_info,
    measure_rss,
    parse_benchmark_app,
)
from tests.benchmarks.harness_fixtures import export_tiny, tiny_cnn, to_openvino
from toolchain.errors import ConfigError, ModelError

FAST = dict(runs=5, warmup=1, threads=1, throughput_batch=2, throughput_runs=2)


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    return export_tiny(tmp_path_factory.mktemp("harness") / "tiny.onnx")


def _check_fields(r: dict, runtime: str) -> None:
    assert r["runtime"] == runtime and r["label"] == "measured"
    assert r["threads"] == 1 and r["input_shape"] == [1, 16, 16]
    lat = r["latency_ms"]
    for k in ("mean", "std", "min", "p50", "p90", "p99", "max"):
        assert lat[k] >= 0
    assert lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert len(lat["samples"]) == lat["n"] == 5
    assert r["throughput"]["batch"] == 2 and r["throughput"]["images_per_s"] > 0
    assert r["load_s"] > 0 and r["runtime_version"]


def test_onnxruntime_all_fields(tiny_onnx):
    r = benchmark(tiny_onnx, None, BenchConfig(**FAST))
    _check_fields(r, "onnxruntime")
    assert r["size_mb"] > 0
    assert r["runtime_settings"]["intra_op_num_threads"] == 1
    mem = r["memory"]
    assert mem["peak_rss_mb"] > 0 and mem["peak_rss_mb"] >= mem["import_rss_mb"]


def test_openvino_ir_and_onnx(tiny_onnx):
    xml = to_openvino(tiny_onnx)
    r = benchmark(xml, None, BenchConfig(**FAST, rss=False))
    _check_fields(r, "openvino")
    assert r["runtime_settings"]["INFERENCE_NUM_THREADS"] == 1
    assert r["runtime_settings"]["INFERENCE_PRECISION_HINT"] == "f32"
    # an ONNX file runs on OpenVINO when asked (the x86-edge profile does this)
    assert benchmark(tiny_onnx, "openvino", BenchConfig(**FAST, rss=False))["runtime"] == "openvino"


def test_torch_module_with_rss_subprocess():
    from toolchain.models import build_model

    torch.manual_seed(0)
    model = build_model("vgg19", 2, in_chans=1, img_size=16, cfg=[4, "M", 8, "M"], mlp_ratio=0.01).eval()
    r = benchmark(model, None, BenchConfig(**FAST))
    _check_fields(r, "torch")
    assert r["params"] == sum(p.numel() for p in model.parameters())
    assert r["memory"]["peak_rss_mb"] > 0  # handed over as safetensors + sidecar, not pickled


def test_plain_module_gets_no_pickled_rss_handover():
    model = tiny_cnn()
    r = benchmark(model, None, BenchConfig(**FAST, input_shape=(1, 16, 16)))
    _check_fields(r, "torch")
    assert r["memory"] is None and "without pickling" in r["memory_skipped"]


def test_rss_subprocess_positive(tiny_onnx):
    mem = measure_rss(tiny_onnx, "onnxruntime", 1, (1, 1, 16, 16), runs=1)
    assert mem["peak_rss_mb"] > 0 and mem["model_rss_mb"] >= 0


def test_accuracy_through_runtime(tiny_onnx, tiny_npz):
    r = benchmark(tiny_onnx, None, BenchConfig(**FAST, rss=False, data=str(tiny_npz)))
    acc = r["accuracy"]
    assert acc["n"] == 8 and 0 <= acc["accuracy"] <= 1
    assert set(acc["per_class"]) and all("sensitivity" in v and "specificity" in v for v in acc["per_class"].values())
    assert "auc" in acc


def test_missing_and_bad_files(tmp_path, tiny_onnx):
    with pytest.raises(ModelError, match="not found"):
        benchmark(tmp_path / "nope.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="cannot load"):
        benchmark(bad, None, BenchConfig(**FAST))
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(ModelError, match="unknown model format"):
        benchmark(tmp_path / "x.txt")
    with pytest.raises(ConfigError, match="onnxruntime runs .onnx"):
        benchmark(to_openvino(tiny_onnx), "onnxruntime")


def test_runtime_not_installed_names_pip_package(tiny_onnx, monkeypatch):
    import benchmarks._runner as runner

    monkeypatch.setitem(runner.RUNTIME_MODULES, "onnxruntime", "onnxruntime_definitely_missing")
    with pytest.raises(ConfigError, match="pip install onnxruntime"):
        benchmark(tiny_onnx, None, BenchConfig(**FAST))


def test_machine_info_and_stats():
    info = machine_info()
    assert info["logical_cores"] >= 1 and "versions" in info and isinstance(info["isa"], list)
    s = latency_stats([1.0, 2.0, 3.0, 4.0])
    assert s["p50"] == 2.5 and s["max"] == 4.0 and s["n"] == 4


def test_parse_benchmark_app_units():
    text = "[ INFO ] Count: 10 iterations\n[ INFO ]    Median:        34.22 us\n[ INFO ]    Average:  1.5 ms\n" \
           "[ INFO ] Throughput:   6816.79 FPS"
    got = parse_benchmark_app(text)
    assert np.isclose(got["median_ms"], 0.03422) and got["average_ms"] == 1.5 and got["throughput_fps"] > 6000


def test_benchmark_app_cross_check(tiny_onnx):
    xml = to_openvino(tiny_onnx)
    cc = cross_check_benchmark_app(xml, threads=1, seconds=1, harness_p50_ms=0.5)
    assert cc["returncode"] == 0, cc.get("error")
    assert "-nthreads 1" in cc["command"] and "-nstreams 1" in cc["command"]
    assert cc["median_ms"] > 0 and cc["ratio_harness_over_benchmark_app"] > 0
