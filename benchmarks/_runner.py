"""Runtime backends, and the separate process that measures a model's peak RSS.

This module imports nothing heavy at import time: the RSS subprocess (``python -m benchmarks._runner``)
imports only numpy and the one runtime it measures, so its peak RSS is that runtime plus the model,
not the harness (torch, matplotlib, the dataset) that launched it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

# no pickle formats (.pt/.pth): loading one runs code hidden in it (toolchain.pickle_guard refuses them)
RUNTIME_BY_SUFFIX = {".onnx": "onnxruntime", ".xml": "openvino", ".safetensors": "torch"}
# the pip package that provides each runtime (named in "not installed" errors)
RUNTIME_PACKAGES = {
    "onnxruntime": "onnxruntime (CPU) or onnxruntime-gpu (CUDA)",
    "openvino": "openvino",
    "torch": "torch",
    "tensorrt": "tensorrt (on a Jetson it ships with JetPack)",
}
RUNTIME_MODULES = {"onnxruntime": "onnxruntime", "openvino": "openvino", "torch": "torch", "tensorrt": "tensorrt"}


class RuntimeMissing(ImportError):
    def __init__(self, runtime: str):
        super().__init__(f"runtime {runtime!r} is not installed: pip install {RUNTIME_PACKAGES.get(runtime, runtime)}")
        self.runtime = runtime


def detect_runtime(path: str | os.PathLike) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in RUNTIME_BY_SUFFIX:
        known = ", ".join(sorted(RUNTIME_BY_SUFFIX))
        raise ValueError(f"{path}: unknown model format {suffix or '(no suffix)'!r}; expected one of {known}")
    return RUNTIME_BY_SUFFIX[suffix]


def import_runtime(runtime: str):
    import importlib

    try:
        return importlib.import_module(RUNTIME_MODULES[runtime])
    except ImportError as exc:
        raise RuntimeMissing(runtime) from exc


def _static(dim) -> int | None:
    return dim if isinstance(dim, int) and dim > 0 else None


class Backend:
    """One loaded model: ``run(x)`` takes float32 NCHW and returns the first output as an ndarray."""

    runtime = ""
    input_name = "input"
    # (C, H, W) when the model states it, else None; batch_fixed is the model's static batch or None
    input_chw: tuple[int, int, int] | None = None
    batch_fixed: int | None = None
    settings: dict = {}

    def run(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def set_batch(self, batch: int) -> None:
        """Prepare for inputs of ``batch`` rows (OpenVINO recompiles for a static shape)."""

    def version(self) -> str:
        raise NotImplementedError


class OrtBackend(Backend):
    runtime = "onnxruntime"

    def __init__(self, path: Path, threads: int, precision: str = "fp32"):
        ort = import_runtime("onnxruntime")
        self._ort = ort
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # spinning worker threads burn the other helpers' cores between runs and inflate nothing we measure
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        shape = list(inp.shape)
        self.batch_fixed = _static(shape[0]) if shape else None
        if len(shape) == 4 and all(_static(d) for d in shape[1:]):
            self.input_chw = (shape[1], shape[2], shape[3])
        self.output_name = self.session.get_outputs()[0].name
        self.settings = {"intra_op_num_threads": threads, "inter_op_num_threads": 1,
                         "execution_mode": "sequential", "graph_optimization": "all",
                         "providers": self.session.get_providers(), "precision": precision}

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: x})[0]

    def version(self) -> str:
        return self._ort.__version__


class OvBackend(Backend):
    runtime = "openvino"

    def __init__(self, path: Path, threads: int, precision: str = "fp32"):
        ov = import_runtime("openvino")
        self._ov = ov
        self.core = ov.Core()
        self.model = self.core.read_model(str(path))
        inp = self.model.inputs[0]
        self.input_name = inp.get_any_name() if inp.get_names() else "input"
        ps = inp.get_partial_shape()
        dims = [d.get_length() if d.is_static else None for d in ps]
        self.batch_fixed = dims[0] if dims else None
        self._dynamic = ps.is_dynamic  # reshape() makes the model static, so remember this once
        if len(dims) == 4 and all(dims[1:]):
            self.input_chw = (dims[1], dims[2], dims[3])
        # this CPU may default to bf16 execution; the profile's precision decides instead
        hint = {"fp32": "f32", "fp16": "f16", "int8": "f32"}[precision]
        self.config = {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
                       "INFERENCE_PRECISION_HINT": hint}
        self.settings = {**self.config, "device": "CPU", "precision": precision}
        self.compiled = None
        self._batch = None

    def set_batch(self, batch: int) -> None:
        if self._batch == batch:
            return
        if self.input_chw is not None and self._dynamic:
            self.model.reshape({0: [batch, *self.input_chw]})
        self.compiled = self.core.compile_model(self.model, "CPU", self.config)
        self.request = self.compiled.create_infer_request()
        self._batch = batch

    def run(self, x: np.ndarray) -> np.ndarray:
        if self.compiled is None or (self.batch_fixed is None and x.shape[0] != self._batch):
            if self.input_chw is None:  # fully dynamic model: let OpenVINO handle shapes
                self.compiled = self.compiled or self.core.compile_model(self.model, "CPU", self.config)
                self.request = self.compiled.create_infer_request()
            else:
                self.set_batch(x.shape[0])
        self.request.infer({0: x}, share_inputs=True)
        return np.array(self.request.get_output_tensor(0).data, copy=True)

    def version(self) -> str:
        return self._ov.get_version()


class TorchBackend(Backend):
    runtime = "torch"

    def __init__(self, model_or_path, threads: int, precision: str = "fp32"):
        torch = import_runtime("torch")
        self._torch = torch
        self._prev_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
        self.meta: dict = {}
        if isinstance(model_or_path, (str, os.PathLike)):
            # a medprune checkpoint only (the harness hands its RSS subprocess one too): never a pickle
            from toolchain.models import load_checkpoint

            model, self.meta = load_checkpoint(Path(model_or_path))
        else:  # build_model's spec states the input size of an in-memory model
            model = model_or_path
            self.meta = dict(getattr(model, "medprune_spec", None) or {})
        self.model = model.eval()
        if self.meta.get("in_chans") and self.meta.get("img_size"):
            s = int(self.meta["img_size"])
            self.input_chw = (int(self.meta["in_chans"]), s, s)
        self.settings = {"num_threads": threads, "precision": precision, "grad": "inference_mode"}

    def run(self, x: np.ndarray) -> np.ndarray:
        with self._torch.inference_mode():
            out = self.model(self._torch.from_numpy(x))
        return out.numpy()

    def version(self) -> str:
        return self._torch.__version__


BACKENDS = {"onnxruntime": OrtBackend, "openvino": OvBackend, "torch": TorchBackend}


def open_backend(model, runtime: str, threads: int, precision: str = "fp32") -> Backend:
    if runtime not in BACKENDS:
        raise RuntimeMissing(runtime)
    return BACKENDS[runtime](model, threads, precision)


def _maxrss_mb() -> float:
    """This process's peak RSS. VmHWM is reset by exec; ru_maxrss is not (Linux carries the parent's
    high-water mark across fork+exec), so a subprocess of a big harness would report the harness."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    # ru_maxrss is KiB on Linux, bytes on macOS
    scale = 1.0 / 1024 if sys.platform != "darwin" else 1.0 / (1024 * 1024)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def measure_in_process(model: str, runtime: str, threads: int, shape: tuple[int, ...], runs: int,
                       precision: str = "fp32") -> dict:
    """Load + run ``model`` here and report this process's peak RSS (called in a fresh subprocess)."""
    import_runtime(runtime)
    import_rss = _maxrss_mb()
    t0 = time.perf_counter()
    backend = open_backend(model, runtime, threads, precision)
    load_s = time.perf_counter() - t0
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    backend.set_batch(shape[0])
    for _ in range(max(runs, 1)):
        backend.run(x)
    peak = _maxrss_mb()
    return {"peak_rss_mb": round(peak, 2), "import_rss_mb": round(import_rss, 2),
            "model_rss_mb": round(peak - import_rss, 2), "load_s": load_s, "runs": max(runs, 1),
            "batch": shape[0], "method": "VmHWM of a fresh subprocess (/proc/self/status; getrusage ru_maxrss where absent)"}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Load a model in this process and print its peak RSS as JSON.")
    p.add_argument("--model", required=True)
    p.add_argument("--runtime", required=True, choices=sorted(BACKENDS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--shape", required=True, help="input shape N,C,H,W")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--precision", default="fp32")
    a = p.parse_args(argv)
    shape = tuple(int(s) for s in a.shape.split(","))
    print(json.dumps(measure_in_process(a.model, a.runtime, a.threads, shape, a.runs, a.precision)))


if __name__ == "__main__":
    main()
