"""Runtime columns for the recovery study: ONNX Runtime and OpenVINO, FP32 and INT8, beside the dense model.

    cols = runtime_columns(dense, pruned, (1, 1, 32, 32), calib, test_x, test_y, threads=1, repeats=100)
    cols["columns"]["ov_int8"]["speedup"]["vs_dense_ort_fp32"]

Both models go through the project's own export path (``export.exporter.export_model``: ONNX via the
dynamo exporter, onnxslim, checker; INT8 by ``export.quantize``: ORT static QDQ, and NNCF on the
OpenVINO IR, with ViT settings when the model has ``blocks``), calibrated on ``calib``: preprocessed
train-split images, by convention those at ``export.quantize.calibration_indices(n_train, size, seed)``
as ``export.exporter.load_images`` picks them. Files live in a temporary folder removed on return.
Nothing is gated: an INT8 column that loses accuracy is a result, not an error.

Every file is opened with the benchmark harness's backends (``benchmarks._runner.open_backend``: ORT
with spinning threads off, OpenVINO with an f32 precision hint so INT8 is not mixed with bf16 on CPUs
that offer it), and the same backend both scores the test images and is timed: what is timed is what
is scored.

Latency: batch 1, the model's and the dense model's sessions (eight, four when ``model is dense``) run
one call each in turn, ``repeats`` rounds after a warm-up, in this process, so machine-load drift hits
all alike (as ``toolchain.budget.ort_latency_ms`` does for the study's ORT speedup). Speedups are ratios
of medians: against the dense ORT FP32 session, the one reference every row shares, and against the
dense model in the same runtime and precision (what pruning adds on top of that quantization). Called
with ``model=dense`` the columns are the "quantization only" row.

Accuracy: test accuracy with its exact 95 % interval and n (``toolchain.metrics.compute_metrics``); the
drops against the dense *PyTorch FP32* model on the same images (accuracy, and each class's sensitivity)
with paired class-stratified bootstrap intervals (``toolchain.lossless.drops``, which is
``paired_bootstrap_diff``); the worst per-class sensitivity drop is the class with the largest point
drop, given with that class's interval. Agreement with the same model in PyTorch:
``export.verify.compare`` (max |Δprob|, max |Δlogit|, top-1 agreement).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from toolchain.errors import ConfigError, DataError

# column: (export format, precision, harness runtime). One entry per runtime x precision.
COLUMNS: dict[str, tuple[str, str, str]] = {
    "ort_fp32": ("onnx", "fp32", "onnxruntime"),
    "ort_int8": ("onnx", "int8", "onnxruntime"),
    "ov_fp32": ("openvino", "fp32", "openvino"),
    "ov_int8": ("openvino", "int8", "openvino"),
}
REFERENCE = "ort_fp32"  # the dense session every speedup is also quoted against
WARMUP = 5


def runtime_columns(dense: nn.Module, model: nn.Module, example_shape: tuple, calib: np.ndarray,
                    test_x: np.ndarray, test_y: np.ndarray, *, threads: int = 1, repeats: int = 100,
                    class_names: Sequence[str] | None = None, log: Callable[[str], None] | None = None
                    ) -> dict[str, Any]:
    """Latency, speedups, test accuracy and drops of ``model`` in every runtime x precision of COLUMNS.

    ``example_shape``: (C, H, W) or (1, C, H, W), square. ``calib``: preprocessed calibration images
    (N, C, H, W); ``test_x``/``test_y``: preprocessed test images and integer labels. ``class_names``
    default to "0".."K-1". Bad input raises ``DataError``/``ConfigError`` (one line through the CLI).
    See the module docstring for what is measured and the returned structure in notes/runtimes_ready.md.
    """
    chw = _check_shape(example_shape)
    if not isinstance(dense, nn.Module) or not isinstance(model, nn.Module):
        raise ConfigError("runtime_columns needs torch modules for dense and model")
    if int(threads) < 1 or int(repeats) < 2:
        raise ConfigError(f"threads must be >= 1 and repeats >= 2, got {threads} and {repeats}")
    calib = _check_images(calib, chw, "calib")
    test_x = _check_images(test_x, chw, "test_x")
    test_y = np.asarray(test_y).reshape(-1)
    if len(test_y) != len(test_x):
        raise DataError(f"test_x has {len(test_x)} images but test_y {len(test_y)} labels")
    if not np.issubdtype(test_y.dtype, np.integer):
        raise DataError(f"test_y must hold integer class labels, got {test_y.dtype}")
    say = log or (lambda _msg: None)
    return _measure(dense, model, chw, calib, test_x, test_y.astype(np.int64), int(threads), int(repeats),
                    class_names, say)


def _check_shape(example_shape) -> tuple[int, int, int]:
    shape = tuple(int(d) for d in example_shape)
    if len(shape) == 4 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) != 3 or min(shape) < 1 or shape[1] != shape[2]:
        raise ConfigError(f"example_shape must be (C, H, W) or (1, C, H, W) with H == W, got {tuple(example_shape)}")
    return shape  # type: ignore[return-value]


def _check_images(x, chw: tuple[int, int, int], name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 4 or tuple(x.shape[1:]) != chw:
        raise DataError(f"{name} must be (N, {', '.join(map(str, chw))}) preprocessed images, got {x.shape}")
    if len(x) == 0:
        raise DataError(f"{name} is empty: at least one image is needed")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise DataError(f"{name} holds non-finite values")
    return x


# ---- computing -----------------------------------------------------------------------------------
def _export_all(model: nn.Module, chw, calib: np.ndarray, folder: Path, name: str) -> dict[str, Path]:
    """One file per column through export.exporter (the FP32 ONNX is traced once and reused)."""
    from export.exporter import export_model

    meta = {"arch": (getattr(model, "medprune_spec", None) or {}).get("arch", type(model).__name__),
            "in_chans": chw[0], "img_size": chw[1]}
    paths: dict[str, Path] = {}
    for col, (fmt, precision, _) in COLUMNS.items():
        res = export_model(model, meta, folder, fmt, precision, name=name, base_onnx=paths.get(REFERENCE),
                           calib_x=calib if precision == "int8" else None)
        paths[col] = res.path
    return paths


def _scorer(backend) -> Callable[[np.ndarray], np.ndarray]:
    def run(x: np.ndarray) -> np.ndarray:
        backend.set_batch(len(x))  # OpenVINO recompiles for a static batch; ORT ignores it
        return np.asarray(backend.run(np.ascontiguousarray(x)), dtype=np.float32)

    return run


def _interleaved_ms(backends: dict[str, Any], x1: np.ndarray, repeats: int) -> dict[str, dict[str, float]]:
    """Batch-1 milliseconds of every backend, one call each in turn per round."""
    from benchmarks.harness import latency_stats

    for backend in backends.values():
        backend.set_batch(1)
    samples: dict[str, list[float]] = {k: [] for k in backends}
    for round_ in range(WARMUP + repeats):
        for key, backend in backends.items():
            t0 = time.perf_counter()
            backend.run(x1)
            if round_ >= WARMUP:
                samples[key].append((time.perf_counter() - t0) * 1e3)
    stats = {k: latency_stats(v) for k, v in samples.items()}
    return {k: {"median_ms": s["p50"], "p90_ms": s["p90"], "min_ms": s["min"], "runs": s["n"]}
            for k, s in stats.items()}


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _test_metrics(y, probs, names) -> dict[str, Any]:
    """Accuracy and balanced accuracy with their 95 % intervals, and n."""
    from toolchain.metrics import compute_metrics

    m = compute_metrics(y, probs, names)
    return {k: m[k] for k in ("accuracy", "accuracy_ci", "balanced_accuracy", "balanced_accuracy_ci", "n")}


def _accuracy(y, logits, dense_logits, names) -> dict[str, Any]:
    from toolchain.lossless import drops

    probs = _softmax(np.asarray(logits, np.float64))
    d = drops(y, _softmax(np.asarray(dense_logits, np.float64)), probs, names)
    sens = d["sensitivity_drop_pts"]
    worst = max(sens, key=sens.get)
    return {
        "test": _test_metrics(y, probs, names),
        "vs_dense_fp32": {"accuracy_drop_pts": d["accuracy_drop_pts"], "accuracy_drop_ci_pts": d["accuracy_drop_ci_pts"],
                          "worst_sensitivity_drop_pts": sens[worst],
                          "worst_sensitivity_drop_ci_pts": d["sensitivity_drop_ci_pts"][worst], "worst_class": worst,
                          "sensitivity_drop_pts": sens, "sensitivity_drop_ci_pts": d["sensitivity_drop_ci_pts"],
                          "n": d["n"], "n_boot": d["n_boot"], "confidence": d["confidence"]},
    }


def _measure(dense, model, chw, calib, test_x, test_y, threads, repeats, class_names, say) -> dict[str, Any]:
    from benchmarks._runner import open_backend
    from benchmarks.harness import file_size_mb, machine_info
    from export.verify import compare, logits_of, torch_runner

    t_start = time.perf_counter()
    torch_logits = {"dense": logits_of(torch_runner(dense), test_x)}
    torch_logits["model"] = torch_logits["dense"] if model is dense else logits_of(torch_runner(model), test_x)
    k = torch_logits["dense"].shape[1]
    if test_y.min() < 0 or test_y.max() >= k:
        raise DataError(f"test_y labels must be in 0..{k - 1}, got {test_y.min()}..{test_y.max()}")
    names = [str(n) for n in class_names] if class_names is not None else [str(c) for c in range(k)]
    if len(names) != k:
        raise ConfigError(f"{len(names)} class names for a model with {k} outputs")
    who = ("dense",) if model is dense else ("dense", "model")
    with tempfile.TemporaryDirectory(prefix="medprune-runtimes-") as tmp:
        paths, backends, logits = {}, {}, {}
        for w in who:
            say(f"{w}: exporting ONNX/OpenVINO FP32 and INT8 (calibration on {len(calib)} images)")
            paths[w] = _export_all(dense if w == "dense" else model, chw, calib, Path(tmp), w)
            for col, (_, precision, runtime) in COLUMNS.items():
                backends[(w, col)] = open_backend(paths[w][col], runtime, threads, precision)
                logits[(w, col)] = logits_of(_scorer(backends[(w, col)]), test_x)
        sizes = {key: file_size_mb(paths[key[0]][key[1]]) for key in backends}
        say(f"timing {len(backends)} sessions at batch 1, {repeats} interleaved rounds, {threads} thread(s)")
        lat = _interleaved_ms({f"{w}/{c}": b for (w, c), b in backends.items()}, test_x[:1], repeats)
        del backends  # sessions hold the files open (OpenVINO maps its .bin) until the folder goes
    model_key = who[-1]
    ref_ms = lat[f"dense/{REFERENCE}"]["median_ms"]
    columns = {}
    for col, (fmt, precision, runtime) in COLUMNS.items():
        mine, same = lat[f"{model_key}/{col}"], lat[f"dense/{col}"]
        agree = compare(torch_logits["model"], logits[(model_key, col)], test_y)
        columns[col] = {
            "runtime": runtime, "format": fmt, "precision": precision, "size_mb": sizes[(model_key, col)],
            "dense_size_mb": sizes[("dense", col)],
            "latency_ms": mine, "dense_latency_ms": same,
            "speedup": {"vs_dense_ort_fp32": ref_ms / mine["median_ms"],
                        "vs_dense_same_runtime": same["median_ms"] / mine["median_ms"]},
            **_accuracy(test_y, logits[(model_key, col)], torch_logits["dense"], names),
            "vs_torch": {key: agree[key] for key in ("max_abs_prob", "max_abs_logit", "top1_agreement", "finite")},
        }
        say(f"{col}: {mine['median_ms']:.2f} ms (x{columns[col]['speedup']['vs_dense_ort_fp32']:.2f} vs dense ORT "
            f"FP32), acc {columns[col]['test']['accuracy']:.4f}, max|dprob| {agree['max_abs_prob']:.1e}")
    dense_torch = _test_metrics(test_y, _softmax(np.asarray(torch_logits["dense"], np.float64)), names)
    machine = machine_info()
    return {
        "columns": columns, "reference": f"dense/{REFERENCE}", "quantization_only": model is dense,
        "dense_torch_fp32": dense_torch, "threads": threads, "repeats": repeats, "warmup": WARMUP,
        "batch": 1, "input_shape": list(chw), "n_test": int(len(test_y)), "n_calib": int(len(calib)),
        "class_names": names, "load_average": machine.get("load_average"), "versions": machine.get("versions"),
        "seconds": round(time.perf_counter() - t_start, 1),
    }

