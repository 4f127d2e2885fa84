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


def _synthetic(ce: float, me: float, overhead_us: float, n: int = 6) -> list:
    samples = []
    for i, macs in enumerate([10**6, 10**7, 5 * 10**7, 10**8, 3 * 10**8, 10**9][:n]):
        # two strongly compute-bound layers and two strongly memory-bound ones, so both efficiencies show
        costs = [LayerCost(f"c{j}", "Conv", macs // 4, macs // 400) for j in range(2)]
        costs += [LayerCost(f"m{j}", "Add", 0, macs // (5 + 20 * i + 10 * j)) for j in range(2)]  # mix varies
        truth = predict_ms(costs, 100.0, 10.0, compute_eff=ce, memory_eff=me, overhead_us=overhead_us)["latency_ms"]
        samples.append((f"m{i}", costs, truth))
    return samples


def test_calibration_recovers_synthetic_factors():
    from devices.roofline import Peaks

    cal = calibrate(_synthetic(0.5, 0.3, 20.0), Peaks(gflops=100.0, gbps=10.0, threads=1, source="synthetic"))
    assert cal.mape < 1.0 and cal.loo_mape is not None and cal.loo_mape < 5.0
    assert cal.compute_eff == pytest.approx(0.5, rel=0.05) and cal.memory_eff == pytest.approx(0.3, rel=0.05)


@pytest.mark.parametrize("ce, me", [(3.0, 0.5), (0.5, 40.0), (4.0, 50.0)])
def test_fitted_efficiencies_stay_physically_possible(ce, me):
    """Data faster than the peaks allow (the old fit answered memory efficiency 50) is fitted at the bound."""
    from devices.roofline import FIT_LOWER, FIT_UPPER, Peaks

    cal = calibrate(_synthetic(ce, me, 5.0), Peaks(gflops=100.0, gbps=10.0, threads=1, source="synthetic"))
    for value, lo, hi in zip((cal.compute_eff, cal.memory_eff, cal.overhead_us), FIT_LOWER, FIT_UPPER, strict=True):
        assert lo <= value <= hi
    assert 0 < cal.compute_eff <= 1 and 0 < cal.memory_eff <= 1
    assert cal.mape > 1.0  # it cannot reproduce an impossible machine, and says so


def _fit_for(target: str):
    from devices.roofline import fit_published

    profile = load_profile(target)
    samples = [(n, c, m, "fp16") for n, c, m in _synthetic(0.4, 0.6, 8.0)]
    return fit_published(profile, samples, ["https://example.org/a", "https://example.org/b"])


def test_published_fit_is_bounded_and_validated_leave_one_out():
    fit = _fit_for("jetson-orin-nano")
    assert 0 < fit.compute_eff <= 1 and 0 < fit.memory_eff <= 1 and fit.overhead_us >= 0
    assert fit.loo_mape is not None and fit.loo_band is not None and fit.loo_band[0] <= 1 <= fit.loo_band[1] + 1e-9
    assert all("loo_predicted_ms" in p for p in fit.points) and fit.n == len(fit.points)


def test_prediction_shows_its_own_device_class_error_not_the_cpu_fit():
    from devices.roofline import Calibration, Peaks

    costs = [LayerCost("c", "Conv", 10**8, 10**6)]
    cpu = Calibration(0.3, 0.9, 1.0, mape=66.0, loo_mape=85.0, peaks=Peaks(100.0, 10.0, 1, "cpu"))
    fit = _fit_for("jetson-orin-nano")
    p = predict_for_profile(costs, load_profile("jetson-orin-nano"), cpu, device_fit=fit)
    assert p["label"] == "predicted"
    assert p["error_pct"] == pytest.approx(fit.loo_mape * 100) and p["calibration_mape"] == p["error_pct"]
    assert "leave-one-out" in p["error_source"] and "published jetson-orin-nano" in p["error_source"]
    assert "https://example.org/a" in p["error_source"]
    assert p["range_ms"][0] <= p["latency_ms"] * fit.loo_band[1] and p["compute_eff"] == fit.compute_eff
    none = predict_for_profile(costs, load_profile("jetson-agx-orin"), cpu, device_fit=None)
    assert none["error_pct"] is None and none["error_source"].startswith("none")  # unknown, not the CPU's 85 %
    local = predict_for_profile(costs, load_profile("x86-edge"), cpu)
    assert local["error_pct"] == 85.0 and "this machine's CPU" in local["error_source"]


def test_measure_peaks_positive():
    peaks = measure_peaks(1, sizes=(64,), reps=2, copy_mib=1)
    assert peaks.gflops > 0 and peaks.gbps > 0 and peaks.threads == 1
