"""Roofline latency prediction for targets that are not attached to this machine.

Each layer costs ``max(flops / (peak_compute * compute_eff), bytes / (bandwidth * memory_eff))`` plus a
fixed per-layer overhead (kernel launch / dispatch); a model's predicted latency is the sum. Per-layer
MACs and bytes moved come from the ONNX graph (shape inference at a concrete batch) or from a torch
model (forward hooks). Both efficiencies are fractions of a peak, bounded to (0, 1] in every fit: a
fit may not buy accuracy with a machine faster than its data sheet.

Two fits, one per device class, each with its own validation error:

* a local CPU (``calibrate``): models measured here (min of N runs) with ONNX Runtime against this
  machine's measured peaks (``measure_peaks``); ``Calibration.loo_mape`` is its leave-one-out error;
* a Jetson (``fit_published``): PUBLISHED measured TensorRT latencies of standard models on that device
  (``devices/profiles/published/jetson_latency.json``, each with its source) against the profile's
  published peaks; ``DeviceFit.loo_mape`` is its leave-one-out error and ``loo_band`` the range of
  measured / predicted it left out.

A prediction carries the error of the fit it used (``error_pct`` and ``error_source``), never another
device class's. Every number from here is a prediction and is labelled ``"predicted"``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.costs import LayerCost, layer_costs, onnx_layer_costs, torch_layer_costs, total_macs
from toolchain.errors import ModelError

__all__ = ["Calibration", "DeviceFit", "LayerCost", "Peaks", "calibrate", "fit_published", "layer_costs",
           "load_device_fit", "measure_peaks", "onnx_layer_costs", "predict_for_profile", "predict_ms",
           "torch_layer_costs", "total_macs"]

PRECISION_BYTES = {"fp32": 4, "fp16": 2, "int8": 1}
# (compute_eff, memory_eff, overhead_us): efficiencies are fractions of a peak, so at most 1
FIT_LOWER, FIT_UPPER = (1e-3, 1e-3, 0.0), (1.0, 1.0, 1000.0)
FITS_PATH = Path(__file__).parent / "profiles" / "published" / "roofline_fit.json"


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


# one measured latency: (layer costs, measured ms, peak GFLOP/s, bandwidth GB/s, precision)
_Sample = tuple[list[LayerCost], float, float, float, str]


def _predict(sample: _Sample, theta) -> float:
    costs, _, peak, bw, precision = sample
    return predict_ms(costs, peak, bw, *theta, precision=precision)["latency_ms"]


def _fit(samples: list[_Sample]) -> tuple[float, float, float]:
    """Least squares on log(predicted / measured) over (compute_eff, memory_eff, overhead_us), bounded."""
    from scipy.optimize import least_squares

    measured = np.array([s[1] for s in samples])
    # the same arithmetic as predict_ms, on arrays built once (a fit evaluates every sample hundreds of times)
    arrays = [(np.array([c.flops for c in costs], dtype=np.float64) / (peak * 1e9),
               np.array([c.bytes for c in costs], dtype=np.float64) * PRECISION_BYTES[precision] / 4 / (bw * 1e9))
              for costs, _, peak, bw, precision in samples]

    def residuals(theta):
        ce, me, ov = theta
        pred = [(np.maximum(f / ce, b / me).sum() + len(f) * ov * 1e-6) * 1e3 for f, b in arrays]
        return np.log(np.array(pred) / measured)

    best = None
    for start in ([0.5, 0.5, 5.0], [0.1, 0.9, 20.0], [0.9, 0.1, 1.0], [0.3, 0.3, 100.0]):
        res = least_squares(residuals, start, bounds=(FIT_LOWER, FIT_UPPER), x_scale=[0.1, 0.1, 10.0])
        if best is None or res.cost < best.cost:
            best = res
    ce, me, ov = (float(v) for v in np.clip(best.x, FIT_LOWER, FIT_UPPER))
    return ce, me, ov


def _validate(names: list[str], samples: list[_Sample]) -> tuple[tuple[float, float, float], list[dict], float,
                                                                   float | None, list[float] | None]:
    """Fit on all samples, then leave each out in turn: (params, points, in-sample MAPE, LOO MAPE, LOO band)."""
    theta = _fit(samples)
    points, errors = [], []
    for name, s in zip(names, samples, strict=True):
        pred = _predict(s, theta)
        errors.append(abs(pred - s[1]) / s[1])
        points.append({"name": name, "measured_ms": s[1], "predicted_ms": pred, "macs": total_macs(s[0]),
                       "precision": s[4]})
    if len(samples) < 4:
        return theta, points, float(np.mean(errors)), None, None
    loo_err, ratios = [], []
    for i, s in enumerate(samples):
        pred = _predict(s, _fit(samples[:i] + samples[i + 1:]))
        loo_err.append(abs(pred - s[1]) / s[1])
        ratios.append(s[1] / pred)
        points[i]["loo_predicted_ms"] = pred
    return theta, points, float(np.mean(errors)), float(np.mean(loo_err)), [float(min(ratios)), float(max(ratios))]


def calibrate(samples: list[tuple[str, list[LayerCost], float]], peaks: Peaks) -> Calibration:
    """Fit efficiency factors and overhead to ``(name, costs, measured_ms)`` measured on this machine."""
    if len(samples) < 2:
        raise ModelError("calibration needs at least 2 measured models")
    rows = [(c, m, peaks.gflops, peaks.gbps, "fp32") for _, c, m in samples]
    (ce, me, ov), points, mape, loo, _ = _validate([n for n, _, _ in samples], rows)
    return Calibration(ce, me, ov, mape * 100, None if loo is None else loo * 100, peaks, points)


@dataclass
class DeviceFit:
    """The roofline fitted to published measured latencies of one device class (errors are fractions)."""

    target: str
    compute_eff: float
    memory_eff: float
    overhead_us: float
    mape: float  # in-sample mean absolute percentage error, fraction
    loo_mape: float | None  # leave-one-out, fraction
    loo_band: list[float] | None  # [min, max] of measured / leave-one-out predicted
    n: int
    method: str
    sources: list[str]
    points: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def error_source(self) -> str:
        band = (f"; measured/predicted ranged {self.loo_band[0]:.2f}x-{self.loo_band[1]:.2f}x"
                if self.loo_band else "")
        return (f"leave-one-out MAPE of the roofline fitted to {self.n} published {self.target} latencies "
                f"({self.method}{band}); sources: {', '.join(self.sources)}")


def fit_published(profile, samples: list[tuple[str, list[LayerCost], float, str]], sources: list[str]) -> DeviceFit:
    """Fit ``profile``'s roofline to published ``(name, costs, measured_ms, precision)`` of that device."""
    if len(samples) < 2:
        raise ModelError(f"{profile.name}: a fit needs at least 2 published latencies")
    rows = []
    for name, costs, measured, precision in samples:
        peak, bw = profile.peak_gflops(precision), profile.memory_bandwidth.value
        if peak is None or bw is None or measured <= 0:
            raise ModelError(f"{profile.name}: {name} at {precision} has no published peak or a non-positive latency")
        rows.append((costs, float(measured), float(peak), float(bw), precision))
    (ce, me, ov), points, mape, loo, band = _validate([s[0] for s in samples], rows)
    method = ("bounded least squares on log(predicted/measured), compute and memory efficiency in (0, 1] of the "
              "profile's published peaks, per-layer overhead in [0, 1000] us; leave-one-out over the published models")
    return DeviceFit(profile.name, ce, me, ov, mape, loo, band, len(samples), method, sorted(set(sources)), points)


def save_device_fits(fits: list[DeviceFit], path: Path = FITS_PATH) -> None:
    from toolchain.atomic import atomic_file

    with atomic_file(path, "w") as fh:
        json.dump({f.target: f.to_dict() for f in fits}, fh, indent=2)
        fh.write("\n")


def load_device_fit(target: str, path: Path = FITS_PATH) -> DeviceFit | None:
    """The committed fit for ``target`` (written by ``medprune study jetson_prediction``), or None."""
    try:
        d = json.loads(Path(path).read_text())[target]
        return DeviceFit(**d)
    except (OSError, ValueError, KeyError, TypeError):
        return None


_NO_FIT = object()


def predict_for_profile(costs: list[LayerCost], profile, calibration: Calibration | None = None,
                        precision: str | None = None, device_fit=_NO_FIT) -> dict:
    """Predicted latency on ``profile`` with its published peaks, labelled ``predicted``, with the error of the
    fit it used: for a remote (Jetson) profile the committed published-latency fit of that device
    (``device_fit`` overrides it; ``None`` means none), for a local one ``calibration`` (this machine's CPU).
    """
    precision = precision or profile.precision
    if precision not in PRECISION_BYTES:
        raise ModelError(f"unknown precision {precision!r}: one of {', '.join(PRECISION_BYTES)}")
    peak = profile.peak_gflops(precision)
    bw = profile.memory_bandwidth.value
    assumptions: list[str] = []
    if peak is None or bw is None:
        if calibration is None:
            raise ModelError(f"target {profile.name!r} has measured peaks: calibrate on this machine first")
        peak, bw = calibration.peaks.gflops, calibration.peaks.gbps
        assumptions.append("peaks measured on this machine")
    if not profile.is_local:
        fit = load_device_fit(profile.name) if device_fit is _NO_FIT else device_fit
        params, error, source, band = _remote_params(profile, fit, assumptions)
    else:
        params, error, source, band = _local_params(profile, calibration, assumptions)
    result = predict_ms(costs, peak, bw, *params, precision=precision)
    ce, me, overhead = params
    result.update({"label": "predicted", "target": profile.name, "precision": precision, "peak_gflops": peak,
                   "bandwidth_gbs": bw, "compute_eff": ce, "memory_eff": me, "overhead_us": overhead,
                   "error_pct": error, "error_source": source,
                   "range_ms": [result["latency_ms"] * band[0], result["latency_ms"] * band[1]] if band else None,
                   # the column the bench reports show next to a prediction: the same validation error
                   "calibration_mape": error, "calibration_loo_mape": error, "assumptions": assumptions})
    return result


def _remote_params(profile, fit: DeviceFit | None, assumptions: list[str]):
    if fit is None:
        overhead = profile.launch_overhead_us.value or 0.0
        assumptions.append(f"no published-latency fit for {profile.name}: efficiencies 1.0 and launch overhead "
                           f"{overhead} us/layer ({profile.launch_overhead_us.source}); error unknown")
        return (1.0, 1.0, overhead), None, "none: no validation data for this device class", None
    assumptions.append(f"efficiencies and per-layer overhead fitted to published {profile.runtime} latencies of "
                       f"standard models on {profile.name} (devices/profiles/published/jetson_latency.json)")
    error = None if fit.loo_mape is None else fit.loo_mape * 100
    return (fit.compute_eff, fit.memory_eff, fit.overhead_us), error, fit.error_source(), fit.loo_band


def _local_params(profile, calibration: Calibration | None, assumptions: list[str]):
    if calibration is None:
        return (1.0, 1.0, 0.0), None, "none: uncalibrated (efficiencies 1.0, no per-layer overhead)", None
    overhead = calibration.overhead_us
    if profile.launch_overhead_us.value is not None:
        overhead = profile.launch_overhead_us.value
    error = calibration.loo_mape if calibration.loo_mape is not None else calibration.mape
    kind = "leave-one-out" if calibration.loo_mape is not None else "in-sample"
    source = (f"{kind} MAPE of the roofline calibrated on {len(calibration.points)} models measured on this "
              f"machine's CPU with ONNX Runtime ({calibration.peaks.source})")
    return (calibration.compute_eff, calibration.memory_eff, overhead), error, source, None


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
