"""TensorRT engine runner of a medprune Jetson package (shipped only in Jetson packages, checksummed in
manifest.json like every file; predict.py and run_trt.py load it by path).

``select(manifest, root)`` is what predict.py calls for a ``tensorrt`` package: it uses the engine that
``build_engine.sh`` wrote beside the package (``<package>.trt/``, or ``$MEDPRUNE_ENGINE_DIR``) only when
the engine's record (``engine.json``) names the sha256 of the package's ONNX file, the engine file
still has the sha256 recorded when it was built, and TensorRT loads it on this device. Otherwise it
says why on stderr and falls back to ONNX Runtime on the shipped ONNX file. Needs ``tensorrt``
(JetPack ships it), numpy, and ``cuda-python`` (``pip install cuda-python``) or PyTorch for device buffers.
"""

import hashlib
import json
import os
import sys
import time
from pathlib import Path

ENGINE_RECORD = "engine.json"


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def engine_dir(root):
    """Where build_engine.sh writes: ``$MEDPRUNE_ENGINE_DIR`` or the package folder's sibling ``<name>.trt``."""
    return Path(os.environ.get("MEDPRUNE_ENGINE_DIR") or (str(Path(root).resolve()) + ".trt"))


def check_engine(manifest, root):
    """(engine path, record) when the recorded engine matches the package's ONNX file, else (None, reason)."""
    where = engine_dir(root)
    record_path = where / ENGINE_RECORD
    if not record_path.is_file():
        return None, f"no TensorRT engine record at {record_path} (run ./build_engine.sh on this device)"
    try:
        record = json.loads(record_path.read_text())
        onnx_rel = manifest["model"]["files"]["onnx"]
        engine = where / Path(record["engine"]).name
        if record["onnx_sha256"] != manifest["files"][onnx_rel]:
            return None, f"{record_path} was built from another ONNX file than this package's {onnx_rel}"
        if not engine.is_file() or sha256_file(engine) != record["engine_sha256"]:
            return None, f"{engine} is missing or changed since build_engine.sh recorded it"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return None, f"unreadable engine record {record_path}: {exc}"
    return engine, record


def record_engine(onnx, engine, precision, where="."):
    """Write ``engine.json`` (build_engine.sh calls this after trtexec): the checksums select() checks."""
    rec = {"engine": Path(engine).name, "engine_sha256": sha256_file(engine), "onnx": Path(onnx).name,
           "onnx_sha256": sha256_file(onnx), "precision": precision, "built_with": "trtexec"}
    tmp = Path(where) / (ENGINE_RECORD + ".tmp")
    tmp.write_text(json.dumps(rec, indent=2))
    os.replace(tmp, Path(where) / ENGINE_RECORD)
    return rec


def select(manifest, root):
    """("tensorrt", run) with the verified engine, else ("onnxruntime", None) after saying why."""
    engine, record = check_engine(manifest, root)
    if engine is not None:
        try:
            run = Engine(engine).run
        except Exception as exc:  # no tensorrt/cuda here, or an engine from another TensorRT version
            record = f"cannot load {engine} here ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        else:
            print(f"predict: TensorRT engine {engine} ({record.get('precision', '?')}, built from this package's "
                  "ONNX file)", file=sys.stderr)
            return "tensorrt", run
    print(f"predict: FALLBACK to ONNX Runtime on the shipped ONNX file: {record}", file=sys.stderr)
    return "onnxruntime", None


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
            self.stream = torch.cuda.current_stream().cuda_stream
        self._keep = {}

    def _check(self, ret):
        err, *rest = ret if isinstance(ret, tuple) else (ret,)
        if int(err) != 0:
            raise RuntimeError(f"CUDA error {err}")
        return rest[0] if rest else None

    def alloc(self, nbytes):
        if self.torch is not None:
            t = self.torch.empty(nbytes, dtype=self.torch.uint8, device="cuda")
            self._keep[t.data_ptr()] = t
            return t.data_ptr()
        return int(self._check(self.cudart.cudaMalloc(nbytes)))

    def h2d(self, dst, src):
        import numpy as np

        src = np.ascontiguousarray(src)
        if self.torch is not None:
            self._keep[dst][:src.nbytes].copy_(self.torch.from_numpy(src.view(np.uint8).reshape(-1)))
            return
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self.cudart.cudaMemcpyAsync(dst, src.ctypes.data, src.nbytes, kind, self.stream))

    def d2h(self, dst, src):
        if self.torch is not None:
            dst.view("uint8").reshape(-1)[:] = self._keep[src][:dst.nbytes].cpu().numpy()
            return
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self.cudart.cudaMemcpyAsync(dst.ctypes.data, src, dst.nbytes, kind, self.stream))

    def sync(self):
        if self.torch is not None:
            self.torch.cuda.synchronize()
        else:
            self._check(self.cudart.cudaStreamSynchronize(self.stream))


class Engine:
    """A deserialised engine with one input and one output; ``run(x)`` returns the output for batch ``x``."""

    def __init__(self, path):
        import tensorrt as trt

        self.trt, self.version = trt, trt.__version__
        t0 = time.perf_counter()
        self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            raise RuntimeError(f"{path}: not a TensorRT engine for this TensorRT version/device")
        self.context = self.engine.create_execution_context()
        self.load_s = time.perf_counter() - t0
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.buffers = Buffers()
        self._shape = None

    def _prepare(self, shape):
        import numpy as np

        trt, name, out = self.trt, self.inputs[0], self.outputs[0]
        self.context.set_input_shape(name, shape)
        self.in_dtype = trt.nptype(self.engine.get_tensor_dtype(name))
        self.d_in = self.buffers.alloc(int(np.prod(shape)) * np.dtype(self.in_dtype).itemsize)
        self.context.set_tensor_address(name, self.d_in)
        self.host_out = np.empty(tuple(self.context.get_tensor_shape(out)),
                                 dtype=trt.nptype(self.engine.get_tensor_dtype(out)))
        self.d_out = self.buffers.alloc(self.host_out.nbytes)
        self.context.set_tensor_address(out, self.d_out)
        self._shape = shape

    def run(self, x):
        if self._shape != tuple(x.shape):
            self._prepare(tuple(x.shape))
        self.buffers.h2d(self.d_in, x.astype(self.in_dtype, copy=False))
        if not self.context.execute_async_v3(self.buffers.stream):
            raise RuntimeError("TensorRT execution failed")
        self.buffers.d2h(self.host_out, self.d_out)
        self.buffers.sync()
        return self.host_out.copy()


if __name__ == "__main__":  # python3 -I trt_runner.py --record ONNX ENGINE PRECISION (from build_engine.sh)
    if len(sys.argv) != 5 or sys.argv[1] != "--record":
        sys.exit("usage: trt_runner.py --record ONNX ENGINE PRECISION")
    print(json.dumps(record_engine(*sys.argv[2:5])))
