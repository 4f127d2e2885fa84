#!/usr/bin/env python3
"""Run a TensorRT engine on a Jetson and report what medprune's harness reports on the host.

Standalone on purpose (no medprune install on the device; Python 3.8+ as on JetPack 5): needs ``tensorrt``
(JetPack ships it), numpy, and ``cuda-python`` (``pip install cuda-python``) or PyTorch for device
buffers. The engine code is ``trt_runner.py``, shipped beside this script.

In a Jetson package, after ``./build_engine.sh``, with no arguments it finds everything itself:

    python3 run_trt.py            # engine from <package>.trt/engine.json, data from testset.npz

or, in a ``medprune bench`` device folder:

    python3 run_trt.py --engine model_fp16.plan --shape 1x1x64x64 --batch 8 --runs 200 \
        [--data testset.npz] --out result_jetson.json

Latency is end to end from the host (copy in, execute, copy out, synchronise) at batch 1; throughput at
``--batch``; peak RSS is this process's VmHWM (on Jetson's unified memory, device buffers allocated by
CUDA are not all counted in RSS: also read ``tegrastats`` while it runs). With data (an npz of ``x``
float32 NCHW already preprocessed, ``y`` int labels, ``class_names`` and, in packages, ``probabilities``
computed by ONNX Runtime FP32 on the build machine; loaded without pickle) it reports accuracy,
per-class sensitivity/specificity, macro one-vs-rest AUC and the agreement with those probabilities.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RUNNER_PATHS = (HERE / "trt_runner.py", HERE.parents[1] / "export" / "templates" / "trt_runner.py")


def trt_runner():
    """trt_runner.py beside this script (package, bench folder), else the toolchain's template (a checkout)."""
    for path in RUNNER_PATHS:
        if path.is_file():
            spec = importlib.util.spec_from_file_location("trt_runner", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
    raise SystemExit(f"run_trt: error: trt_runner.py not found beside {Path(__file__).name}")


def _vmhwm_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


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


def load_testset(path: Path) -> dict:
    """x (N,C,H,W) float32, y (N,) int, class names and the expected probabilities when present (no pickle)."""
    try:
        d = np.load(path, allow_pickle=False)
        x, y = d["x"].astype(np.float32), d["y"].astype(np.int64)
        names = [str(n) for n in d["class_names"]] if "class_names" in d else None
        expected = d["probabilities"].astype(np.float64) if "probabilities" in d else None
    except (OSError, ValueError, KeyError) as exc:
        raise SystemExit(f"run_trt: error: cannot read test set {path}: {exc}") from None
    if x.ndim != 4 or len(x) != len(y) or (expected is not None and expected.shape[0] != len(x)):
        raise SystemExit(f"run_trt: error: {path}: x must be (N,C,H,W) with one label (and probability row) each")
    names = names or [str(i) for i in range(int(y.max()) + 1)]
    return {"x": x, "y": y, "class_names": names, "expected": expected}


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


def evaluate(run, data: dict) -> dict:
    """Accuracy metrics of the engine on the test set, one image at a time, and agreement with expected."""
    probs = softmax(np.concatenate([run(data["x"][i:i + 1]) for i in range(len(data["x"]))]).astype(np.float64))
    out = metrics(data["y"], probs, data["class_names"])
    if data["expected"] is not None:
        exp = data["expected"]
        out["vs_expected"] = {"reference": "probabilities in the test set (ONNX Runtime FP32 on the build machine)",
                              "top1_agreement": float((probs.argmax(1) == exp.argmax(1)).mean()),
                              "max_abs_prob_diff": float(np.abs(probs - exp).max()), "n": int(len(exp))}
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--package", type=Path, default=HERE, help="Jetson package folder (default: this script's)")
    p.add_argument("--engine", type=Path, help="engine file (default: the one in <package>.trt/engine.json)")
    p.add_argument("--shape", help="batch-1 input shape, e.g. 1x1x64x64 (default: from the test set)")
    p.add_argument("--batch", type=int, default=8, help="batch for the throughput run")
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--data", type=Path, help="npz test set (default: <package>/testset.npz when present)")
    p.add_argument("--out", type=Path, help="result JSON (default: result_<engine>.json beside the engine)")
    a = p.parse_args(argv)
    if a.runs < 1 or a.warmup < 0 or a.batch < 1:
        p.error("--runs and --batch must be >= 1, --warmup >= 0")
    if a.engine is None:
        record = trt_runner().engine_dir(a.package) / "engine.json"
        try:
            a.engine = record.parent / Path(json.loads(record.read_text())["engine"]).name
        except (OSError, ValueError, KeyError) as exc:
            p.error(f"no --engine and no readable {record} ({exc}); run ./build_engine.sh first")
    if a.data is None and (a.package / "testset.npz").is_file():
        a.data = a.package / "testset.npz"
    a.out = a.out or a.engine.with_name(f"result_{a.engine.stem}.json")
    return a


def input_shape(a, data: dict | None) -> tuple[int, ...]:
    if a.shape:
        try:
            shape = tuple(int(s) for s in a.shape.lower().split("x"))
        except ValueError:
            raise SystemExit(f"run_trt: error: --shape {a.shape!r} is not like 1x3x224x224") from None
        if len(shape) != 4 or min(shape) < 1:
            raise SystemExit(f"run_trt: error: --shape {a.shape!r} is not like 1x3x224x224")
        return shape
    if data is None:
        raise SystemExit("run_trt: error: give --shape or a test set (--data)")
    return (1, *data["x"].shape[1:])


def time_engine(eng, shape, a) -> tuple[list[float], dict]:
    rng = np.random.default_rng(0)
    x1 = rng.standard_normal(shape).astype(np.float32)
    for _ in range(a.warmup):
        eng.run(x1)
    samples = []
    for _ in range(a.runs):
        t = time.perf_counter()
        eng.run(x1)
        samples.append((time.perf_counter() - t) * 1e3)
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
    return samples, throughput


def main(argv=None) -> int:
    a = parse_args(argv)
    data = load_testset(a.data) if a.data else None
    shape = input_shape(a, data)
    if not a.engine.is_file():
        raise SystemExit(f"run_trt: error: engine not found: {a.engine}")
    eng = trt_runner().Engine(a.engine)
    samples, throughput = time_engine(eng, shape, a)
    result = {"name": a.engine.stem, "model_path": str(a.engine), "runtime": "tensorrt",
              "runtime_version": eng.version, "threads": 1, "input_shape": list(shape[1:]),
              "size_mb": a.engine.stat().st_size / 2**20, "load_s": eng.load_s, "warmup": a.warmup,
              "latency_ms": stats(samples), "throughput": throughput,
              "memory": {"peak_rss_mb": _vmhwm_mb(), "method": "VmHWM of this process (unified memory: see tegrastats)"},
              "accuracy": evaluate(eng.run, data) if data else None,
              "machine": {"platform": platform.platform(), "machine": platform.machine()},
              "label": "measured-on-device"}
    a.out.write_text(json.dumps(result, indent=2))
    summary = {k: result[k] for k in ("name", "runtime_version", "load_s")}
    summary.update(p50_ms=result["latency_ms"]["p50"], p99_ms=result["latency_ms"]["p99"], out=str(a.out))
    if data and data["expected"] is not None:
        summary.update(result["accuracy"]["vs_expected"])
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
