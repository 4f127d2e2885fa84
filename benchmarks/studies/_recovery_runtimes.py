"""Runtime columns for the recovery study: ONNX Runtime and OpenVINO, FP32 and INT8, beside the dense model.

    cols = runtime_columns(dense, pruned, (1, 1, 32, 32), calib, test_x, test_y, threads=1, repeats=100)
    cols["columns"]["ov_int8"]["speedup"]["vs_dense_ort_fp32"]

    with DenseReference(dense, (1, 32, 32), calib, test_x, test_y) as ref:  # dense exported once
        rows = [ref.columns(m, repeats=100) for m in (dense, pruned, recovered)]

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
drop, given with that class's interval. For a model other than the dense one the same drops are also given
against the dense model *in the same runtime and precision* (``vs_dense_same_runtime``: e.g. pruned INT8 vs
dense INT8, what pruning costs on top of that quantization). Agreement with the same model in PyTorch:
``export.verify.compare`` (max |Δprob|, max |Δlogit|, top-1 agreement).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from toolchain.errors import ConfigError, DataError
from toolchain.temperature import softmax

from ._recovery_report import accuracy_summary

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
    Measuring several models against one dense model: :class:`DenseReference` exports the dense one once.
    """
    _check_model(model, repeats)  # before the dense model's minutes of exporting
    with DenseReference(dense, example_shape, calib, test_x, test_y, threads=threads, class_names=class_names,
                        log=log) as reference:
        return reference.columns(model, repeats=repeats)


class DenseReference:
    """The dense model exported, opened and scored once; :meth:`columns` measures a model against it.

        with DenseReference(dense, example.shape, calib, test_x, test_y) as ref:
            rows = [ref.columns(pruned, repeats=100) for pruned in models]

    Holds a temporary folder and open sessions until :meth:`close` (or the ``with`` block) ends.
    """

    def __init__(self, dense: nn.Module, example_shape: tuple, calib: np.ndarray, test_x: np.ndarray,
                 test_y: np.ndarray, *, threads: int = 1, class_names: Sequence[str] | None = None,
                 log: Callable[[str], None] | None = None):
        from export.verify import logits_of, torch_runner

        self.chw = _check_shape(example_shape)
        if not isinstance(dense, nn.Module):
            raise ConfigError("DenseReference needs the dense torch module")
        if int(threads) < 1:
            raise ConfigError(f"threads must be >= 1, got {threads}")
        self.calib = _check_images(calib, self.chw, "calib")
        self.test_x = _check_images(test_x, self.chw, "test_x")
        y = np.asarray(test_y).reshape(-1)
        if len(y) != len(self.test_x):
            raise DataError(f"test_x has {len(self.test_x)} images but test_y {len(y)} labels")
        if not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"test_y must hold integer class labels, got {y.dtype}")
        self.dense, self.threads, self.say = dense, int(threads), log or (lambda _msg: None)
        self.torch_logits = logits_of(torch_runner(dense), self.test_x)
        k = self.torch_logits.shape[1]
        if y.min() < 0 or y.max() >= k:
            raise DataError(f"test_y labels must be in 0..{k - 1}, got {y.min()}..{y.max()}")
        self.test_y = y.astype(np.int64)
        self.names = [str(n) for n in class_names] if class_names is not None else [str(c) for c in range(k)]
        if len(self.names) != k:
            raise ConfigError(f"{len(self.names)} class names for a model with {k} outputs")
        self._tmp = tempfile.TemporaryDirectory(prefix="medprune-runtimes-")
        t0 = time.perf_counter()
        try:
            self.opened = _open_all(dense, "dense", self)
        except BaseException:
            self._tmp.cleanup()
            raise
        self.setup_s = round(time.perf_counter() - t0, 1)  # dense export, quantization and scoring

    def __enter__(self) -> DenseReference:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.opened = None  # sessions hold the files open (OpenVINO maps its .bin) until the folder goes
        self._tmp.cleanup()

    def columns(self, model: nn.Module, *, repeats: int = 100) -> dict[str, Any]:
        """The columns of ``model`` (``model is`` the dense model: the quantization-only row)."""
        _check_model(model, repeats)
        if self.opened is None:
            raise ConfigError("this DenseReference is closed")
        return _columns(self, model, int(repeats))


def _check_model(model, repeats) -> None:
    if not isinstance(model, nn.Module):
        raise ConfigError(f"expected a torch module to measure, got {type(model).__name__}")
    if int(repeats) < 2:
        raise ConfigError(f"repeats must be >= 2, got {repeats}")


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
def _export_all(model: nn.Module, chw, calib: np.ndarray, folder: Path, name: str) -> dict[str, Path | str]:
    """One file per column through export.exporter (the FP32 ONNX is traced once and reused).

    A column the runtime cannot take (e.g. OpenVINO refusing a pooling kernel larger than a tiny
    feature map) holds the one-line ExportError instead of a path; the reference column must export.
    """
    from export.errors import ExportError
    from export.exporter import export_model

    meta = {"arch": (getattr(model, "medprune_spec", None) or {}).get("arch", type(model).__name__),
            "in_chans": chw[0], "img_size": chw[1]}
    paths: dict[str, Path | str] = {}
    for col, (fmt, precision, _) in COLUMNS.items():
        try:
            paths[col] = export_model(model, meta, folder, fmt, precision, name=name, base_onnx=paths.get(REFERENCE),
                                      calib_x=calib if precision == "int8" else None).path
        except ExportError as exc:
            if col == REFERENCE:
                raise
            paths[col] = str(exc)
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


def _accuracy(y, logits, dense_logits, names, dense_same=None) -> dict[str, Any]:
    """Test accuracy of ``logits``; drops vs the dense PyTorch FP32 logits and, given ``dense_same`` (the dense
    model's logits in this column's runtime and precision), vs those."""
    probs = softmax(np.asarray(logits, np.float64))
    out = {"test": accuracy_summary(y, probs, names), "vs_dense_fp32": _drops(y, dense_logits, probs, names)}
    if dense_same is not None:
        out["vs_dense_same_runtime"] = _drops(y, dense_same, probs, names)
    return out


def _drops(y, base_logits, probs, names) -> dict[str, Any]:
    from toolchain.lossless import drops

    d = drops(y, softmax(np.asarray(base_logits, np.float64)), probs, names)
    sens = d["sensitivity_drop_pts"]
    worst = max(sens, key=sens.get)
    return {"accuracy_drop_pts": d["accuracy_drop_pts"], "accuracy_drop_ci_pts": d["accuracy_drop_ci_pts"],
            "worst_sensitivity_drop_pts": sens[worst], "worst_sensitivity_drop_ci_pts": d["sensitivity_drop_ci_pts"][worst],
            "worst_class": worst, "sensitivity_drop_pts": sens, "sensitivity_drop_ci_pts": d["sensitivity_drop_ci_pts"],
            "n": d["n"], "n_boot": d["n_boot"], "confidence": d["confidence"]}


def _open_all(model: nn.Module, name: str, ref: DenseReference) -> dict[str, Any]:
    """Export ``model`` (into its own folder under the reference's), open every file, score the test images."""
    from benchmarks._runner import open_backend
    from benchmarks.harness import file_size_mb
    from export.verify import logits_of

    folder = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=ref._tmp.name))
    ref.say(f"{name}: exporting ONNX/OpenVINO FP32 and INT8 (calibration on {len(ref.calib)} images)")
    paths = _export_all(model, ref.chw, ref.calib, folder, name)
    out: dict[str, Any] = {"folder": folder, "paths": paths, "backends": {}, "logits": {}, "sizes": {}}
    for col, (_, precision, runtime) in COLUMNS.items():
        if isinstance(paths[col], str):
            ref.say(f"{name}: {col} not exported: {paths[col]}")
            continue
        out["backends"][col] = open_backend(paths[col], runtime, ref.threads, precision)
        out["logits"][col] = logits_of(_scorer(out["backends"][col]), ref.test_x)
        out["sizes"][col] = file_size_mb(paths[col])
    return out


def _columns(ref: DenseReference, model: nn.Module, repeats: int) -> dict[str, Any]:
    from benchmarks.harness import machine_info
    from export.verify import compare, logits_of, torch_runner

    t_start = time.perf_counter()
    dense = ref.opened
    quant_only = model is ref.dense
    torch_logits = ref.torch_logits if quant_only else logits_of(torch_runner(model), ref.test_x)
    if torch_logits.shape != ref.torch_logits.shape:
        raise ConfigError(f"model gives {torch_logits.shape[1]} outputs, the dense model {ref.torch_logits.shape[1]}")
    mine = dense if quant_only else _open_all(model, "model", ref)
    sessions = {f"dense/{c}": b for c, b in dense["backends"].items()}
    if not quant_only:
        sessions.update({f"model/{c}": b for c, b in mine["backends"].items()})
    try:
        ref.say(f"timing {len(sessions)} sessions at batch 1, {repeats} interleaved rounds, {ref.threads} thread(s)")
        lat = _interleaved_ms(sessions, ref.test_x[:1], repeats)
    finally:
        if not quant_only:  # the dense sessions stay open for the next model
            mine["backends"].clear()
            shutil.rmtree(mine["folder"], ignore_errors=True)
    who = "dense" if quant_only else "model"
    ref_ms = lat[f"dense/{REFERENCE}"]["median_ms"]
    columns = {}
    for col, (fmt, precision, runtime) in COLUMNS.items():
        failed = [f"{w}: {opened['paths'][col]}" for w, opened in (("dense", dense), ("model", mine))
                  if isinstance(opened["paths"][col], str)]
        if failed:
            columns[col] = {"runtime": runtime, "format": fmt, "precision": precision,
                            "error": "; ".join(dict.fromkeys(failed))}
            continue
        mine_ms, same = lat[f"{who}/{col}"], lat[f"dense/{col}"]
        agree = compare(torch_logits, mine["logits"][col], ref.test_y)
        columns[col] = {
            "runtime": runtime, "format": fmt, "precision": precision, "size_mb": mine["sizes"][col],
            "dense_size_mb": dense["sizes"][col], "latency_ms": mine_ms, "dense_latency_ms": same,
            "speedup": {"vs_dense_ort_fp32": ref_ms / mine_ms["median_ms"],
                        "vs_dense_same_runtime": same["median_ms"] / mine_ms["median_ms"]},
            **_accuracy(ref.test_y, mine["logits"][col], ref.torch_logits, ref.names,
                        None if quant_only else dense["logits"][col]),
            "vs_torch": {key: agree[key] for key in ("max_abs_prob", "max_abs_logit", "top1_agreement", "finite")},
        }
        ref.say(f"{col}: {mine_ms['median_ms']:.2f} ms (x{columns[col]['speedup']['vs_dense_ort_fp32']:.2f} vs dense "
                f"ORT FP32), acc {columns[col]['test']['accuracy']:.4f}, max|dprob| {agree['max_abs_prob']:.1e}")
    machine = machine_info()
    return {
        "columns": columns, "reference": f"dense/{REFERENCE}", "quantization_only": quant_only,
        "dense_torch_fp32": accuracy_summary(ref.test_y, softmax(np.asarray(ref.torch_logits, np.float64)), ref.names),
        "threads": ref.threads, "repeats": repeats, "warmup": WARMUP, "batch": 1, "input_shape": list(ref.chw),
        "n_test": int(len(ref.test_y)), "n_calib": int(len(ref.calib)), "class_names": ref.names,
        "load_average": machine.get("load_average"), "versions": machine.get("versions"),
        "seconds": round(time.perf_counter() - t_start, 1), "dense_setup_s": ref.setup_s,
    }
