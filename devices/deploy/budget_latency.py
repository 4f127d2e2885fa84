"""What stands for batch-1 latency when deploy searches a ``--speedup`` / ``--latency-ms`` budget.

* **measured** (``cpu``, ``x86-edge``: runtimes that run on this machine): ``toolchain.budget``'s ONNX Runtime
  timing here, dense and pruned interleaved.
* **predicted (roofline, <profile>)** (a target that is not attached: TensorRT on a Jetson): ``devices.roofline``
  predicts each model's latency on the target from its ONNX graph, the same export and per-layer costs the
  bench stage predicts the package's latency from, with the profile's published peaks and the fit of that
  device class to published TensorRT latencies (``devices/profiles/published/roofline_fit.json``). The label
  carries the fit's leave-one-out error; per-layer overhead makes the predicted speedup lag the MACs ratio
  on small models, as it does on the device.
* **predicted: MACs ratio (fallback)**: only when the roofline cannot predict (no published peak for the
  precision, a graph whose costs cannot be counted); the label says why.

:func:`latency_source` is the part of the budget stages' cache keys that decides these numbers (a refit or
another precision is another key); :func:`latency_for` turns it into ``(latency_fn, label, quantity)`` for
``toolchain.budget.search_budget`` / ``measure``.
"""

from __future__ import annotations

import tempfile
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

MEASURED_RUNTIMES = ("onnxruntime", "openvino")  # runtimes whose CPU latency ORT on this machine stands for
MEASURED_LABEL = "measured: onnxruntime CPU batch 1, this machine"
TIMED_KINDS = ("speedup", "latency_ms")


def latency_source(budget: dict, profile, precision: str) -> dict:
    """How the budget's quantity is obtained on ``profile`` at ``precision`` (JSON; a budget stage key field)."""
    from devices.roofline import load_device_fit

    if budget["kind"] not in TIMED_KINDS:
        return {"kind": "counted"}
    if profile.runtime in MEASURED_RUNTIMES:
        return {"kind": "measured", "runtime": "onnxruntime"}
    fit = load_device_fit(profile.name)
    return {"kind": "roofline", "target": profile.name, "runtime": profile.runtime, "precision": precision,
            "peak_gflops": profile.peak_gflops(precision), "bandwidth_gbs": profile.memory_bandwidth.value,
            "fit": None if fit is None else {k: getattr(fit, k) for k in ("compute_eff", "memory_eff", "overhead_us",
                                                                         "loo_mape", "n")}}


def latency_for(source: dict, dense: nn.Module, example) -> tuple[Callable | None, str, str]:
    """``(latency_fn, label, quantity)`` for ``source`` (:func:`latency_source`); ``latency_fn`` None means
    toolchain.budget's own ORT timing. A roofline source predicts ``dense`` first: if that fails, the MACs
    ratio stands in for every model and the label says it is a fallback and why."""
    from devices.profiles import load_profile
    from toolchain.errors import MedpruneError  # ExportError and ModelError among them

    if source["kind"] == "counted":
        return None, "counted", "counted"
    if source["kind"] == "measured":
        return None, MEASURED_LABEL, "batch-1 latency, median ms"
    profile, precision = load_profile(source["target"]), source["precision"]
    predictor = RooflineLatency(profile, precision)
    if profile.peak_gflops(precision) is None or profile.memory_bandwidth.value is None:
        return _fallback(source, f"the profile publishes no {precision} peak compute or memory bandwidth")
    try:
        predictor.predict(dense, example)
    except MedpruneError as exc:  # the export or the layer costs failed
        return _fallback(source, str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__)
    return predictor, predictor.label(), "batch-1 latency, predicted ms"


def _fallback(source: dict, reason: str) -> tuple[Callable, str, str]:
    return (macs_as_latency, f"predicted: MACs ratio (fallback: no roofline prediction for {source['target']}: "
            f"{reason})", "MACs (millions), standing in for latency")


def macs_as_latency(models: dict, x, repeats: int = 0) -> dict:
    """The MACs of each model (millions) in place of a latency: the fallback's stand-in."""
    from toolchain.models import count_macs

    return {k: {"median_ms": count_macs(m, x) / 1e6} for k, m in models.items()}


class RooflineLatency:
    """``latency_fn`` of ``toolchain.budget``: each model's roofline-predicted batch-1 latency on ``profile``.

    A model is exported to ONNX as the package is (``export.onnx.export_onnx``) and costed per layer
    (``benchmarks.costs.onnx_layer_costs``); a prediction is kept per model object (the dense model is
    predicted once per search)."""

    def __init__(self, profile, precision: str):
        self.profile, self.precision = profile, precision
        self._seen: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.last: dict[str, Any] | None = None

    def __call__(self, models: dict[str, nn.Module], x, repeats: int = 0) -> dict[str, dict[str, float]]:
        return {k: {"median_ms": self.predict(m, x)["latency_ms"]} for k, m in models.items()}

    def predict(self, model: nn.Module, x) -> dict[str, Any]:
        """``devices.roofline.predict_for_profile``'s record for ``model`` at batch 1 (ModelError/ExportError)."""
        from benchmarks.costs import onnx_layer_costs
        from devices.roofline import predict_for_profile
        from export.onnx import export_onnx

        size = sum(p.numel() for p in model.parameters())
        hit = self._seen.get(model)
        if hit is not None and hit[0] == size:
            return hit[1]
        with tempfile.TemporaryDirectory(prefix="medprune-roofline-") as tmp:
            path = Path(tmp) / "model.onnx"
            export_onnx(model, path, tuple(int(d) for d in x.shape[1:]))
            costs = onnx_layer_costs(path, 1)
        self.last = predict_for_profile(costs, self.profile, precision=self.precision)
        self._seen[model] = (size, self.last)
        return self.last

    def label(self) -> str:
        """``predicted (roofline, <profile>)`` with the runtime, precision and the error of the fit used."""
        p = self.last or {}
        error = (f"leave-one-out error {p['error_pct']:.0f} % on published {self.profile.runtime} latencies"
                 if p.get("error_pct") is not None else "error unknown: no published-latency fit for this device")
        return f"predicted (roofline, {self.profile.name}): {self.profile.runtime} {self.precision} batch 1, {error}"
