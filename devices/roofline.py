"""Roofline latency prediction for targets that are not attached to this machine.

Each layer costs ``max(flops / (peak_compute * compute_eff), bytes / (bandwidth * memory_eff))`` plus a
fixed per-layer overhead (kernel launch / dispatch); a model's predicted latency is the sum. Per-layer
MACs and bytes moved come from the ONNX graph (shape inference at a concrete batch) or from a torch
model (forward hooks). The efficiency factors and the overhead are CALIBRATED on models measured (min of N runs) on this
machine with ONNX Runtime, against this machine's own peaks (``measure_peaks``: an ORT GEMM's GFLOP/s and
a memcpy's GB/s); ``Calibration.mape`` is the fit error on those measurements and ``loo_mape`` the
leave-one-out error. Every number from here is a prediction and is labelled ``"predicted"``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.costs import LayerCost, layer_costs, onnx_layer_costs, torch_layer_costs, total_macs
from toolchain.errors import ModelError

__all__ = ["Calibration", "LayerCost", "Peaks", "calibrate", "layer_costs", "measure_peaks", "onnx_layer_costs",
           "predict_for_profile", "predict_ms", "torch_layer_costs", "total_macs"]

PRECISION_BYTES = {"fp32": 4, "fp16": 2, "int8": 1}


@dataclass
class Peaks:
    gflops: float
    gbps: float
    threads: int
    source: str


@dataclass
class Calibration:
    compute_eff: float
    memory_eff: float
    overhead_us: float
    mape: float  # in-sample mean absolute percentage error, %
    loo_mape: float | None  # leave-one-out, % (None with fewer than 4 models)
    peaks: Peaks
    points: list[dict] = field(default_factory=list)  # name, measured_ms, predicted_ms, macs

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Calibration:
        return cls(**{**d, "peaks": Peaks(**d["peaks"])})


# ---------------------------------------------------------------- the model

def predict_ms(costs: list[LayerCost], peak_gflops: float, bandwidth_gbs: float, compute_eff: float = 1.0,
               memory_eff: float = 1.0, overhead_us: float = 0.0, precision: str = "fp32") -> dict:
    """Predicted latency (ms) and how many layers are compute- vs memory-bound."""
    scale = PRECISION_BYTES[precision] / 4
    flops = np.array([c.flops for c in costs], dtype=np.float64)
    moved = np.array([c.bytes for c in costs], dtype=np.float64) * scale
    t_compute = flops / (peak_gflops * 1e9 * compute_eff)
    t_memory = moved / (bandwidth_gbs * 1e9 * memory_eff)
    per_layer = np.maximum(t_compute, t_memory) + overhead_us * 1e-6
    return {"latency_ms": float(per_layer.sum() * 1e3), "layers": len(costs),
            "compute_bound_layers": int((t_compute >= t_memory).sum()),
            "memory_bound_layers": int((t_compute < t_memory).sum()),
            "overhead_ms": float(len(costs) * overhead_us * 1e-3), "macs": total_macs(costs),
            "bytes": int(moved.sum())}


def _fit(samples: list[tuple[list[LayerCost], float]], peaks: Peaks) -> tuple[float, float, float]:
    """Least squares in log space over (compute_eff, memory_eff, overhead_us)."""
    from scipy.optimize import least_squares

    measured = np.array([m for _, m in samples])

    def residuals(theta):
        ce, me, ov = np.exp(theta)
        pred = [predict_ms(c, peaks.gflops, peaks.gbps, ce, me, ov)["latency_ms"] for c, _ in samples]
        return np.log(np.asarray(pred) / measured)

    # efficiencies above 1 are allowed: small layers run from cache, faster than the DRAM roofline
    lo, hi = np.log([1e-3, 1e-2, 1e-2]), np.log([2.0, 50.0, 1e4])
    best = None
    for start in ([0.5, 1.0, 10.0], [0.2, 5.0, 50.0], [0.8, 0.5, 2.0]):
        res = least_squares(residuals, np.log(start), bounds=(lo, hi))
        if best is None or res.cost < best.cost:
            best = res
    ce, me, ov = np.exp(best.x)
    return float(ce), float(me), float(ov)


def calibrate(samples: list[tuple[str, list[LayerCost], float]], peaks: Peaks) -> Calibration:
    """Fit efficiency factors and overhead to ``(name, costs, measured_ms)`` measured on this machine."""
    if len(samples) < 2:
        raise ModelError("calibration needs at least 2 measured models")
    pairs = [(c, m) for _, c, m in samples]
    ce, me, ov = _fit(pairs, peaks)
    points, errors = [], []
    for name, costs, measured in samples:
        pred = predict_ms(costs, peaks.gflops, peaks.gbps, ce, me, ov)["latency_ms"]
        errors.append(abs(pred - measured) / measured)
        points.append({"name": name, "measured_ms": measured, "predicted_ms": pred, "macs": total_macs(costs)})
    loo = None
    if len(samples) >= 4:
        loo_err = []
        for i in range(len(pairs)):
            rest = pairs[:i] + pairs[i + 1:]
            lce, lme, lov = _fit(rest, peaks)
            pred = predict_ms(pairs[i][0], peaks.gflops, peaks.gbps, lce, lme, lov)["latency_ms"]
            loo_err.append(abs(pred - pairs[i][1]) / pairs[i][1])
            points[i]["loo_predicted_ms"] = pred
        loo = float(np.mean(loo_err) * 100)
    return Calibration(ce, me, ov, float(np.mean(errors) * 100), loo, peaks, points)


def predict_for_profile(costs: list[LayerCost], profile, calibration: Calibration | None = None,
                        precision: str | None = None) -> dict:
    """Predicted latency on ``profile`` with its published peaks, labelled ``predicted``.

    The efficiency factors come from ``calibration`` (this machine); for a remote target the memory
    efficiency is capped at 1 (its caches are not this machine's) and the per-layer overhead is the
    profile's launch overhead. Local profiles whose peaks are measured use the calibration's peaks.
    """
    precision = precision or profile.precision
    peak = profile.peak_gflops(precision)
    bw = profile.memory_bandwidth.value
    assumptions = []
    if peak is None or bw is None:
        if calibration is None:
            raise ModelError(f"target {profile.name!r} has measured peaks: calibrate on this machine first")
        peak, bw = calibration.peaks.gflops, calibration.peaks.gbps
        assumptions.append("peaks measured on this machine")
    ce = calibration.compute_eff if calibration else 1.0
    me = calibration.memory_eff if calibration else 1.0
    overhead = calibration.overhead_us if calibration else 0.0
    if not profile.is_local:
        me = min(me, 1.0)
        overhead = profile.launch_overhead_us.value or 0.0
        assumptions.append(f"efficiency factors calibrated on this machine's CPU with ONNX Runtime, transferred "
                           f"to {profile.runtime}; launch overhead {overhead} us/layer ({profile.launch_overhead_us.source})")
    elif profile.launch_overhead_us.value is not None:
        overhead = profile.launch_overhead_us.value
    result = predict_ms(costs, peak, bw, ce, me, overhead, precision)
    result.update({"label": "predicted", "target": profile.name, "precision": precision, "peak_gflops": peak,
                   "bandwidth_gbs": bw, "compute_eff": ce, "memory_eff": me, "overhead_us": overhead,
                   "calibration_mape": calibration.mape if calibration else None,
                   "calibration_loo_mape": calibration.loo_mape if calibration else None,
                   "assumptions": assumptions})
    return result


# ---------------------------------------------------------------- this machine's peaks

def _matmul_onnx(n: int) -> bytes:
    from onnx import TensorProto, helper

    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [n, n])
    c = helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm", [a, b], [c])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def measure_peaks(threads: int, sizes: tuple[int, ...] = (384, 512), reps: int = 10, copy_mib: int = 128) -> Peaks:
    """This machine's achievable peaks: ORT MatMul GFLOP/s at ``threads``, numpy copy GB/s (best of reps).

    The GEMM sizes are cache-resident on purpose: conv layers of the models run here are tiled into
    blocks of that size, while a 1024+ GEMM on a small-cache VM measures DRAM traffic, not compute.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    rng = np.random.default_rng(0)
    gflops = 0.0
    for n in sizes:
        sess = ort.InferenceSession(_matmul_onnx(n), sess_options=opts, providers=["CPUExecutionProvider"])
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        sess.run(None, {"a": a, "b": b})
        best = float("inf")
        for _ in range(reps):
            t = time.perf_counter()
            sess.run(None, {"a": a, "b": b})
            best = min(best, time.perf_counter() - t)
        gflops = max(gflops, 2 * n**3 / best / 1e9)
    src = np.ones(copy_mib * 2**20 // 4, dtype=np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    gbps = 2 * src.nbytes / best / 1e9  # read + write
    return Peaks(gflops, gbps, threads, f"ORT MatMul fp32 {'/'.join(map(str, sizes))} square at {threads} threads "
                                        f"(best of {reps}); numpy copy of {copy_mib} MiB, read+write bytes (best of {reps})")


def save_calibration(cal: Calibration, path: Path) -> None:
    from toolchain.atomic import atomic_file

    with atomic_file(path, "w") as fh:
        json.dump(cal.to_dict(), fh, indent=2)


def load_calibration(path: Path) -> Calibration | None:
    try:
        return Calibration.from_dict(json.loads(Path(path).read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None
