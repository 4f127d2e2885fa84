"""Roofline: per-layer costs from ONNX and torch, positive predictions that scale with MACs, calibration."""

from __future__ import annotations

import pytest

from devices.profiles import load_profile
from devices.roofline import (
    LayerCost,
    calibrate,
    measure_peaks,
    onnx_layer_costs,
    predict_for_profile,
    predict_ms,
    torch_layer_costs,
    total_macs,
)
from tests.benchmarks.harness_fixtures import export_tiny, tiny_cnn
from toolchain.errors import ModelError


def test_onnx_and_torch_macs_agree(tmp_path):
    onnx_costs = onnx_layer_costs(export_tiny(tmp_path / "t.onnx"))
    torch_costs = torch_layer_costs(tiny_cnn(), (1, 1, 16, 16))
    # conv1 16*16*4*9 + conv2 8*8*8*4*9 + fc 8*2
    assert total_macs(onnx_costs) == total_macs(torch_costs) == 16 * 16 * 4 * 9 + 8 * 8 * 8 * 4 * 9 + 8 * 2
    assert all(c.bytes > 0 for c in onnx_costs)
    assert total_macs(onnx_layer_costs(tmp_path / "t.onnx", batch=4)) == 4 * total_macs(onnx_costs)


def test_vit_attention_counted(tmp_path):
    from tests.conftest import tiny_model

    vit = tiny_model("vit")
    costs = torch_layer_costs(vit, (1, 1, 16, 16))
    assert any(c.op == "Attention" and c.macs > 0 for c in costs)


def test_prediction_positive_and_scales_with_macs(tmp_path):
    small = onnx_layer_costs(export_tiny(tmp_path / "s.onnx", width=4, size=16))
    big = onnx_layer_costs(export_tiny(tmp_path / "b.onnx", width=16, size=32))
    assert total_macs(big) > 10 * total_macs(small)
    for target in ("jetson-orin-nano", "jetson-agx-orin", "x86-edge"):
        profile = load_profile(target)
        ps, pb = predict_for_profile(small, profile), predict_for_profile(big, profile)
        assert ps["label"] == pb["label"] == "predicted"
        assert 0 < ps["latency_ms"] < pb["latency_ms"]
    nano = predict_for_profile(big, load_profile("jetson-orin-nano"))["latency_ms"]
    agx = predict_for_profile(big, load_profile("jetson-agx-orin"))["latency_ms"]
    assert agx < nano  # more compute and bandwidth
    with pytest.raises(ModelError, match="calibrate"):
        predict_for_profile(small, load_profile("cpu"))  # cpu peaks are measured, not published


def test_compute_bound_time_is_flops_over_peak():
    costs = [LayerCost("gemm", "MatMul", macs=10**9, bytes=1000)]
    p = predict_ms(costs, peak_gflops=1000.0, bandwidth_gbs=100.0)
    assert p["latency_ms"] == pytest.approx(2.0) and p["compute_bound_layers"] == 1
    assert predict_ms(costs, 1000.0, 100.0, compute_eff=0.5)["latency_ms"] == pytest.approx(4.0)


def test_calibration_recovers_synthetic_factors():
    from devices.roofline import Peaks

    peaks = Peaks(gflops=100.0, gbps=10.0, threads=1, source="synthetic")
    samples = []
    for i, macs in enumerate([10**6, 10**7, 5 * 10**7, 10**8, 3 * 10**8]):
        costs = [LayerCost(f"l{j}", "Conv", macs // 4, macs // 50) for j in range(4)]
        truth = predict_ms(costs, 100.0, 10.0, compute_eff=0.5, memory_eff=2.0, overhead_us=20.0)["latency_ms"]
        samples.append((f"m{i}", costs, truth))
    cal = calibrate(samples, peaks)
    assert cal.mape < 1.0 and cal.loo_mape is not None and cal.loo_mape < 5.0
    assert cal.compute_eff == pytest.approx(0.5, rel=0.05)


def test_measure_peaks_positive():
    peaks = measure_peaks(1, sizes=(64,), reps=2, copy_mib=1)
    assert peaks.gflops > 0 and peaks.gbps > 0 and peaks.threads == 1
