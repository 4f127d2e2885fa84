#!/usr/bin/env python3
"""Run a TensorRT engine on a Jetson and report what medprune's harness reports on the host.

Standalone on purpose (no medprune install on the device; Python 3.8+ as on JetPack 5): needs ``tensorrt``
(JetPack ships it),
numpy, and ``cuda-python`` (``pip install cuda-python``) or PyTorch for device buffers.

    python3 run_trt.py --engine model_fp16.plan --shape 1x1x64x64 --batch 8 --runs 200 \
        [--data testset.npz] --out result_jetson.json

Latency is end to end from the host (copy in, execute, copy out, synchronise) at batch 1; throughput at
``--batch``; peak RSS is this process's VmHWM (on Jetson's unified memory, device buffers allocated by
CUDA are not all counted in RSS: also read ``tegrastats`` while it runs). With ``--data`` (an npz with
``x`` float32 NCHW already preprocessed and ``y`` int labels, written by ``medprune bench``) it reports
accuracy, per-class sensitivity/specificity and macro one-vs-rest AUC.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np


def _vmhwm_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class Buffers:
    """Device memory through cuda-python, or PyTorch when that is what the device has."""

    def __init__(self):
        try:
            try:
                from cuda.bindings import runtime as cudart
            except ImportError:
                from cuda import cudart
            self.cudart, self.torch = cudart, None
            self.stream = self._check(cudart.cudaStreamCreate())
        except ImportError:
            import torch

            self.cudart, self.torch = None, torch
            self.stream_obj = torch.cuda.Stream()
            self.stream = self.stream_obj.cuda_stream
        self._keep = []

    def _check(self, ret):
        err, *rest = ret if isinstance(ret, tuple) else (ret,)
        if int(err) != 0:
            raise RuntimeError(f"CUDA error {err}")
        return rest[0] if rest else None

    def alloc(self, nbytes: int) -> int:
        if self.torch is not None:
            t = self.torch.empty(nbytes, dtype=self.torch.uint8, device="cuda")
            self._keep.append(t)
            return t.data_ptr()
        return int(self._check(self.cudart.cudaMalloc(nbytes)))

    def h2d(self, dst: int, src: np.ndarray) -> None:
        if self.torch is not None:
            view = self.torch.from_numpy(np.ascontiguousarray(src).view(np.uint8).reshape(-1))
            self._tensor_at(dst, view.numel()).copy_(view, non_blocking=False)
            return
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self.cudart.cudaMemcpyAsync(dst, src.ctypes.data, src.nbytes, kind, self.stream))

    def d2h(self, dst: np.ndarray, src: int) -> None:
        if self.torch is not None:
            dst.view(np.uint8).reshape(-1)[:] = self._tensor_at(src, dst.nbytes).cpu().numpy()
            return
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self.cudart.cudaMemcpyAsync(dst.ctypes.data, src, dst.nbytes, kind, self.stream))

    def _tensor_at(self, ptr: int, nbytes: int):
        for t in self._keep:
            if t.data_ptr() == ptr:
                return t[:nbytes]
        raise KeyError(ptr)

    def sync(self) -> None:
        if self.torch is not None:
            self.torch.cuda.synchronize()
        else:
            self._check(self.cudart.cudaStreamSynchronize(self.stream))


class Engine:
    def __init__(self, path: Path):
        import tensorrt as trt

        self.trt = trt
        logger = trt.Logger(trt.Logger.WARNING)
        t0 = time.perf_counter()
        self.engine = trt.Runtime(logger).deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise SystemExit(f"{path}: not a TensorRT engine for this TensorRT version/device")
        self.context = self.engine.create_execution_context()
        self.load_s = time.perf_counter() - t0
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.buffers = Buffers()
        self._batch = None

    def prepare(self, shape: tuple[int, ...]) -> None:
        if self._batch == shape:
            return
        trt = self.trt
        name = self.inputs[0]
        self.context.set_input_shape(name, shape)
        self.in_dtype = trt.nptype(self.engine.get_tensor_dtype(name))
        self.d_in = self.buffers.alloc(int(np.prod(shape)) * np.dtype(self.in_dtype).itemsize)
        self.context.set_tensor_address(name, self.d_in)
        out = self.outputs[0]
        out_shape = tuple(self.context.get_tensor_shape(out))
        self.host_out = np.empty(out_shape, dtype=trt.nptype(self.engine.get_tensor_dtype(out)))
        self.d_out = self.buffers.alloc(self.host_out.nbytes)
        self.context.set_tensor_address(out, self.d_out)
        self._batch = shape

    def run(self, x: np.ndarray) -> np.ndarray:
        self.prepare(x.shape)
        self.buffers.h2d(self.d_in, x.astype(self.in_dtype, copy=False))
        self.context.execute_async_v3(self.buffers.stream)
        self.buffers.d2h(self.host_out, self.d_out)
        self.buffers.sync()
        return self.host_out.copy()


def stats(samples: list[float]) -> dict:
    a = np.asarray(samples)
    return {"mean": float(a.mean()), "std": float(a.std()), "min": float(a.min()),
            "p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "max": float(a.max()), "n": int(a.size),
            "samples": [round(float(s), 4) for s in a]}


def _auc(pos: np.ndarray, score: np.ndarray) -> float | None:
    n1, n0 = int(pos.sum()), int((~pos).sum())
    if n1 == 0 or n0 == 0:
        return None
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score))
    ranks[order] = np.arange(1, len(score) + 1)
    for v in np.unique(score):  # average ranks of ties
        tie = score == v
        ranks[tie] = ranks[tie].mean()
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def metrics(y: np.ndarray, probs: np.ndarray, class_names: list[str]) -> dict:
    pred = probs.argmax(1)
    per_class, aucs = {}, []
    for k, name in enumerate(class_names):
        pos = y == k
        tp, fn = int(((pred == k) & pos).sum()), int(((pred != k) & pos).sum())
        tn, fp = int(((pred != k) & ~pos).sum()), int(((pred == k) & ~pos).sum())
        per_class[name] = {"sensitivity": tp / (tp + fn) if tp + fn else None,
                           "specificity": tn / (tn + fp) if tn + fp else None, "support": int(pos.sum())}
        a = _auc(pos, probs[:, k])
        if a is not None:
            aucs.append(a)
    return {"n": int(len(y)), "accuracy": float((pred == y).mean()), "auc": float(np.mean(aucs)) if aucs else None,
            "per_class": per_class}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engine", required=True, type=Path)
    p.add_argument("--shape", required=True, help="batch-1 input shape, e.g. 1x1x64x64")
    p.add_argument("--batch", type=int, default=8, help="batch for the throughput run")
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--data", type=Path, help="npz with preprocessed x (N,C,H,W) and y for accuracy")
    p.add_argument("--out", type=Path, default=Path("result.json"))
    a = p.parse_args()
    shape = tuple(int(s) for s in a.shape.lower().split("x"))
    eng = Engine(a.engine)
    rng = np.random.default_rng(0)
    x1 = rng.standard_normal(shape).astype(np.float32)
    for _ in range(a.warmup):
        eng.run(x1)
    samples = []
    for _ in range(a.runs):
        t = time.perf_counter()
        eng.run(x1)
        samples.append((time.perf_counter() - t) * 1e3)
    throughput = None
    try:
        xb = rng.standard_normal((a.batch, *shape[1:])).astype(np.float32)
        eng.run(xb)
        truns = max(3, a.runs // 4)
        t = time.perf_counter()
        for _ in range(truns):
            eng.run(xb)
        el = time.perf_counter() - t
        throughput = {"batch": a.batch, "runs": truns, "images_per_s": a.batch * truns / el,
                      "batch_latency_ms": el / truns * 1e3}
    except Exception as exc:  # a static-batch engine cannot take another batch
        throughput = {"batch": a.batch, "error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__}
    accuracy = None
    if a.data:
        d = np.load(a.data, allow_pickle=False)
        x, y = d["x"].astype(np.float32), d["y"].astype(np.int64)
        names = [str(n) for n in d["class_names"]] if "class_names" in d else [str(i) for i in range(int(y.max()) + 1)]
        logits = np.concatenate([eng.run(x[i:i + 1]) for i in range(len(x))]).astype(np.float64)
        z = np.exp(logits - logits.max(1, keepdims=True))
        accuracy = metrics(y, z / z.sum(1, keepdims=True), names)
    import tensorrt as trt

    result = {"name": a.engine.stem, "model_path": str(a.engine), "runtime": "tensorrt",
              "runtime_version": trt.__version__, "threads": 1, "input_shape": list(shape[1:]),
              "size_mb": a.engine.stat().st_size / 2**20, "load_s": eng.load_s, "warmup": a.warmup,
              "latency_ms": stats(samples), "throughput": throughput,
              "memory": {"peak_rss_mb": _vmhwm_mb(), "method": "VmHWM of this process (unified memory: see tegrastats)"},
              "accuracy": accuracy, "machine": {"platform": platform.platform(), "machine": platform.machine()},
              "label": "measured-on-device"}
    a.out.write_text(json.dumps(result, indent=2))
    summary = {k: result[k] for k in ("name", "runtime_version", "load_s")}
    summary.update(p50_ms=result["latency_ms"]["p50"], p99_ms=result["latency_ms"]["p99"])
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
