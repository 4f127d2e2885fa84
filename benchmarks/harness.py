"""Benchmark one model on this machine: load time, latency, throughput, peak RSS, size, accuracy.

``benchmark(model, runtime=None, config=BenchConfig())`` accepts a medprune checkpoint
(``X.safetensors`` + ``X.json``, run with PyTorch), an ONNX file (ONNX Runtime), an OpenVINO IR
(``.xml``) or an ``nn.Module`` object; pickles (``.pt``/``.pth``) are refused, never loaded. The
runtime follows the file type; an ``.onnx`` file can also be given ``runtime="openvino"``. Threads are
pinned (intra-op threads for ORT/OV/torch) and reported. Peak RSS is measured in a separate process
(``benchmarks._runner``) that imports only the runtime, so the harness's own memory does not pollute
it; an in-memory module reaches it as a safetensors checkpoint. Accuracy is measured on the test split
through the same runtime (``toolchain.data`` + ``toolchain.metrics``).

The result is a plain dict (one ``models[]`` entry of the report schema in ``benchmarks.report``).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from toolchain.errors import ConfigError, DataError, ModelError
from toolchain.pickle_guard import refuse_pickle

from ._runner import RUNTIME_PACKAGES, Backend, RuntimeMissing, detect_runtime, open_backend

ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
             "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16", "asimd", "asimddp", "sve", "i8mm")
VERSIONED = ("numpy", "torch", "onnxruntime", "openvino", "onnx", "timm", "tensorrt")


@dataclass
class BenchConfig:
    runs: int = 50  # timed batch-1 runs
    warmup: int = 5
    threads: int | None = None  # None: all logical cores
    throughput_batch: int = 8
    throughput_runs: int | None = None  # default: max(3, runs // 4)
    precision: str = "fp32"
    input_shape: tuple[int, int, int] | None = None  # (C, H, W) when the model file does not state it
    data: str | None = None  # dataset spec for accuracy (e.g. "pneumoniamnist"); None: skip accuracy
    data_dir: str | None = None
    split: str = "test"
    eval_limit: int | None = None  # first N images of the split (None: all)
    eval_batch: int = 32
    rss: bool = True
    rss_runs: int = 3

    def resolved_threads(self) -> int:
        return self.threads if self.threads and self.threads > 0 else (os.cpu_count() or 1)


def machine_info() -> dict:
    """CPU model, cores, ISA flags from /proc/cpuinfo, memory, OS and library versions."""
    info: dict = {"platform": platform.platform(), "machine": platform.machine(), "python": platform.python_version(),
                  "logical_cores": os.cpu_count()}
    cpu_model, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "Model", "Hardware") and cpu_model in ("unknown", "", platform.machine()):
                cpu_model = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    info["cpu_model"] = cpu_model
    if hasattr(os, "getloadavg"):  # other processes on the cores inflate every latency measured
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    info["isa"] = [f for f in ISA_FLAGS if f in flags]
    try:
        import psutil

        info["physical_cores"] = psutil.cpu_count(logical=False)
        info["memory_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    versions = {}
    for pkg in VERSIONED:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    info["versions"] = versions
    return info


def latency_stats(samples_ms: list[float]) -> dict:
    a = np.asarray(samples_ms, dtype=np.float64)
    return {"mean": float(a.mean()), "std": float(a.std()), "min": float(a.min()),
            "p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "max": float(a.max()), "n": int(a.size),
            "samples": [round(float(s), 4) for s in a]}


def file_size_mb(path: Path) -> float:
    """Size of the model on disk, counting companion files (IR .bin, ONNX external data, checkpoint .json)."""
    files = {path}
    if path.suffix == ".xml":
        files.add(path.with_suffix(".bin"))
    if path.suffix == ".onnx":
        files.update(p for p in path.parent.glob(f"{path.name}.data"))
        files.update(p for p in path.parent.glob(f"{path.stem}.onnx_data"))
    return sum(p.stat().st_size for p in files if p.exists()) / 2**20


def model_meta(path: Path) -> dict:
    """What a model file says about itself: the metadata medprune's exporter embeds in ``.onnx``/``.xml``
    (``export.metadata``), else a sidecar ``X.json`` beside ``X.onnx``/``X.xml``/``X.safetensors``."""
    if path.suffix in (".onnx", ".xml"):
        try:
            from export.metadata import read_metadata

            meta = read_metadata(path)
            if meta:
                return meta
        except Exception:  # a foreign file without medprune metadata is still benchmarkable
            pass
    side = path.with_suffix(".json")
    if side.exists() and side != path:
        try:
            return json.loads(side.read_text())
        except json.JSONDecodeError:
            return {}
    return {}


def meta_chw(meta: dict) -> tuple[int, int, int] | None:
    if isinstance(meta.get("input_size"), (list, tuple)) and len(meta["input_size"]) == 3:
        return tuple(int(d) for d in meta["input_size"])
    pre = meta.get("preprocess") or {}
    size = meta.get("img_size") or pre.get("img_size")
    chans = meta.get("in_chans") or pre.get("in_chans")
    return (int(chans), int(size), int(size)) if size and chans else None


def _as_probs(out: np.ndarray) -> np.ndarray:
    out = np.asarray(out, dtype=np.float64).reshape(out.shape[0], -1)
    if (out >= 0).all() and np.allclose(out.sum(axis=1), 1.0, atol=1e-3):
        return out  # the graph already ends in softmax
    z = out - out.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _run_rows(backend: Backend, x: np.ndarray) -> np.ndarray:
    """Run ``x`` through ``backend``, row by row when the model's batch is fixed."""
    if backend.batch_fixed is not None and backend.batch_fixed != x.shape[0]:
        if backend.batch_fixed != 1:
            raise ModelError(f"model has a fixed batch of {backend.batch_fixed}; cannot run {x.shape[0]} images")
        backend.set_batch(1)
        return np.concatenate([backend.run(x[i:i + 1]) for i in range(x.shape[0])])
    backend.set_batch(x.shape[0])
    return backend.run(x)


def measure_accuracy(backend: Backend, chw: tuple[int, int, int], meta: dict, config: BenchConfig) -> dict:
    """Accuracy, per-class sensitivity/specificity and AUC on ``config.split`` through ``backend``."""
    from toolchain.data import Preprocess, load_dataset, make_loader
    from toolchain.data.splits import split_kwargs
    from toolchain.metrics import compute_metrics

    # the splits the model was trained with (its val may hold train images it was trained without)
    ds = load_dataset(config.data, config.data_dir, **split_kwargs(meta.get("train_config") or {}))
    if meta.get("preprocess"):
        pre = Preprocess.from_dict(meta["preprocess"])
    else:
        pre = Preprocess.for_dataset(ds, img_size=chw[1], in_chans=chw[0])
    n = len(ds.split(config.split).labels)
    indices = np.arange(min(n, config.eval_limit)) if config.eval_limit else None
    probs, labels = [], []
    for x, y in make_loader(ds, config.split, pre, batch_size=config.eval_batch, indices=indices):
        probs.append(_as_probs(_run_rows(backend, x.numpy().astype(np.float32, copy=False))))
        labels.append(y.numpy())
    y_true = np.concatenate(labels)
    p = np.concatenate(probs)
    if p.shape[1] != len(ds.class_names):
        raise ModelError(f"model outputs {p.shape[1]} classes but {ds.name} has {len(ds.class_names)}")
    metrics = compute_metrics(y_true, p, ds.class_names)
    metrics.update({"dataset": ds.name, "split": config.split, "fingerprint": ds.fingerprint})
    return metrics


def measure_rss(model_path: Path, runtime: str, threads: int, shape: tuple[int, ...], runs: int,
                precision: str = "fp32", timeout: float = 600) -> dict:
    """Peak RSS of a fresh process that imports the runtime, loads ``model_path`` and runs it."""
    cmd = [sys.executable, "-m", "benchmarks._runner", "--model", str(model_path), "--runtime", runtime,
           "--threads", str(threads), "--shape", ",".join(map(str, shape)), "--runs", str(runs),
           "--precision", precision]
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=root)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ModelError(f"RSS subprocess failed for {model_path.name}: {tail[0]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _handover_checkpoint(model, meta: dict, folder: Path) -> Path | None:
    """The in-memory ``model`` as a medprune checkpoint (safetensors + sidecar) for the RSS subprocess,
    or None when it lacks ``medprune_spec`` (then nothing but a pickle could carry it, and none is made)."""
    if not getattr(model, "medprune_spec", None):
        return None
    from toolchain.models import save_checkpoint

    keep = {k: v for k, v in meta.items() if k in ("class_names", "preprocess", "pruning")}
    # a pruned module's shapes differ from its dense architecture; the pruning entry lets the loader resize
    keep.setdefault("pruning", {"module_attrs": {}})
    return save_checkpoint(folder / "model.safetensors", model, keep)


def _resolve_model(model, runtime: str | None) -> tuple[object, Path | None, str]:
    """(what the backend opens, file on disk or None, runtime)."""
    try:
        import torch

        if isinstance(model, torch.nn.Module):
            return model, None, "torch"
    except ImportError:
        pass
    path = Path(model)
    if not path.exists():
        raise ModelError(f"model file not found: {path}")
    refuse_pickle(path, ModelError)
    try:
        detected = detect_runtime(path)
    except ValueError as exc:
        raise ModelError(str(exc)) from exc
    runtime = runtime or detected
    if runtime == "openvino" and path.suffix not in (".xml", ".onnx"):
        raise ConfigError(f"openvino runs .xml or .onnx files, not {path.suffix}")
    if runtime == "onnxruntime" and path.suffix != ".onnx":
        raise ConfigError(f"onnxruntime runs .onnx files, not {path.suffix}")
    return path, path, runtime


def benchmark(model, runtime: str | None = None, config: BenchConfig | None = None, *, meta: dict | None = None,
              name: str | None = None, progress=None) -> dict:
    """Measure one model; see the module docstring. ``progress(str)`` is called between phases."""
    config = config or BenchConfig()
    say = progress or (lambda _msg: None)
    target, path, runtime = _resolve_model(model, runtime)
    meta = dict(meta or (model_meta(path) if path else {}))
    threads = config.resolved_threads()

    say(f"loading with {runtime} ({threads} threads)")
    t0 = time.perf_counter()
    try:
        backend = open_backend(target, runtime, threads, config.precision)
    except RuntimeMissing as exc:
        raise ConfigError(str(exc)) from exc
    except (ModelError, ConfigError, DataError):
        raise
    except Exception as exc:  # a corrupt/unsupported file is the user's to fix
        raise ModelError(f"cannot load {path or type(target).__name__} with {runtime}: "
                         f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") from exc
    load_s = time.perf_counter() - t0
    meta = {**getattr(backend, "meta", {}), **meta}
    chw = backend.input_chw or config.input_shape or meta_chw(meta)
    if chw is None:
        raise ModelError("input shape unknown: the model has dynamic spatial dims and no metadata; pass input_shape")
    chw = tuple(int(d) for d in chw)

    rng = np.random.default_rng(0)
    x1 = rng.standard_normal((1, *chw)).astype(np.float32)
    backend.set_batch(1)
    say(f"warm-up {config.warmup} + {config.runs} timed runs at batch 1")
    for _ in range(config.warmup):
        backend.run(x1)
    samples = []
    for _ in range(config.runs):
        t = time.perf_counter()
        backend.run(x1)
        samples.append((time.perf_counter() - t) * 1e3)

    tb = config.throughput_batch if backend.batch_fixed in (None, config.throughput_batch) else backend.batch_fixed
    truns = config.throughput_runs or max(3, config.runs // 4)
    xb = rng.standard_normal((tb, *chw)).astype(np.float32)
    backend.set_batch(tb)
    say(f"throughput at batch {tb} ({truns} runs)")
    backend.run(xb)
    t = time.perf_counter()
    for _ in range(truns):
        backend.run(xb)
    elapsed = time.perf_counter() - t
    throughput = {"batch": tb, "runs": truns, "images_per_s": tb * truns / elapsed,
                  "batch_latency_ms": elapsed / truns * 1e3}

    memory, memory_skipped = None, None
    if config.rss:
        say("peak RSS in a separate process")
        with tempfile.TemporaryDirectory(prefix="medprune-rss-") as tmp:
            rss_path = path or _handover_checkpoint(target, meta, Path(tmp))
            if rss_path is None:
                memory_skipped = ("an in-memory module without build_model's spec cannot reach a subprocess "
                                  "without pickling; save it with save_checkpoint and benchmark the file")
            else:
                memory = measure_rss(rss_path, runtime, threads, (1, *chw), config.rss_runs, config.precision)

    accuracy = None
    if config.data:
        say(f"accuracy on {config.data}:{config.split} through {runtime}")
        accuracy = measure_accuracy(backend, chw, meta, config)

    if runtime == "torch":
        backend._torch.set_num_threads(backend._prev_threads)
    return {
        "name": name or (path.stem if path else type(target).__name__),
        "model_path": str(path) if path else None,
        "runtime": runtime,
        "runtime_version": backend.version(),
        "runtime_settings": backend.settings,
        "precision": config.precision,
        "threads": threads,
        "input_shape": list(chw),
        "size_mb": file_size_mb(path) if path else None,
        "params": _param_count(backend.model) if runtime == "torch" else None,
        "load_s": load_s,
        "warmup": config.warmup,
        "latency_ms": latency_stats(samples),
        "throughput": throughput,
        "memory": memory,
        **({"memory_skipped": memory_skipped} if memory_skipped else {}),
        "accuracy": accuracy,
        "config": {k: v for k, v in asdict(config).items() if k not in ("data_dir",)},
        "label": "measured",
    }


def _param_count(model) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def cross_check_benchmark_app(xml_path: str | os.PathLike, threads: int, seconds: float = 5.0,
                              batch: int = 1, precision: str = "fp32", harness_p50_ms: float | None = None) -> dict:
    """Run OpenVINO's own ``benchmark_app`` on the same IR and settings; parse its median latency."""
    xml_path = Path(xml_path)
    try:
        import openvino as ov
    except ImportError as exc:
        raise ConfigError(f"runtime 'openvino' is not installed: pip install {RUNTIME_PACKAGES['openvino']}") from exc
    exe = Path(sys.executable).with_name("benchmark_app")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "openvino.tools.benchmark.main"]
    hint = {"fp32": "f32", "fp16": "f16", "int8": "f32"}[precision]
    cmd += ["-m", str(xml_path), "-d", "CPU", "-hint", "none", "-nstreams", "1", "-nthreads", str(threads),
            "-t", str(max(1, round(seconds))), "-api", "sync", "-infer_precision", hint]
    ps = ov.Core().read_model(str(xml_path)).inputs[0].get_partial_shape()
    if ps.is_dynamic:  # -b needs a static batch axis; give the whole shape instead
        dims = [d.get_length() if d.is_static else batch for d in ps]
        cmd += ["-shape", "[" + ",".join(map(str, dims)) + "]"]
    else:
        cmd += ["-b", str(batch)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds * 10 + 120)
    out = proc.stdout + proc.stderr
    parsed = parse_benchmark_app(out)
    result = {"command": " ".join(cmd), "returncode": proc.returncode, **parsed}
    if harness_p50_ms and parsed.get("median_ms"):
        result["harness_p50_ms"] = harness_p50_ms
        result["ratio_harness_over_benchmark_app"] = harness_p50_ms / parsed["median_ms"]
    if proc.returncode != 0:
        result["error"] = out.strip().splitlines()[-1] if out.strip() else "no output"
    return result


def parse_benchmark_app(text: str) -> dict:
    """Latency (ms) and throughput (FPS) lines of benchmark_app's summary."""
    import re

    found: dict = {}
    scale = {"ms": 1.0, "us": 1e-3, "s": 1e3}
    for key in ("median", "average", "min", "max"):
        m = re.search(rf"{key.capitalize()}:\s+([\d.]+)\s*(ms|us|s)\b", text)
        if m:
            found[f"{key}_ms"] = float(m.group(1)) * scale[m.group(2)]
    for key, pattern in (("throughput_fps", r"Throughput:\s+([\d.]+)\s*FPS"), ("count", r"Count:\s+(\d+)\s*iterations")):
        m = re.search(pattern, text)
        if m:
            found[key] = float(m.group(1))
    return found
