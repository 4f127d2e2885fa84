"""Parity of exported models with the PyTorch model they came from.

Every backend runs the same preprocessed images; the PyTorch FP32 logits are the reference.

``TOLERANCES`` (also in README "Export tolerances") is the gate, per exported precision:

* ``fp32``: the largest |Δlogit| over all images and classes ≤ ``max_abs_logit`` + ``rtol_logit`` ×
  max|PyTorch logit| (1e-4 + 1e-5 × the logit scale of the verification images). An FP32 export computes
  the same function, but in another summation order: each float32 rounding is relative (2^-24 ≈ 6e-8 of
  the running sum), so the noise grows with the magnitude of the values summed. Measured: torchvision
  resnet18 at 224 px, |logit| ≈ 125 → 1.07e-4 (8.6e-7 of the scale); VGG19 at 224 px, |logit| 8 →
  5.6e-5 (7e-6 of the scale, res224.md). 1e-5 of the scale (~170 float32 roundings of the largest logit)
  covers that with little room; a conversion bug (a dropped BatchNorm eps, a transposed weight, a
  wrong layout) moves logits by 1e-3 of the scale or more, so it still fails. The absolute 1e-4 keeps
  small-logit models (|logit| ≲ 10) as strict as before. ``allowed_max_abs_logit`` and ``logit_scale``
  are reported with every verification (verify.json, the package manifest).
* ``fp16``: ``min_top1_agreement`` ≥ 0.995: share of images whose arg-max class equals PyTorch's.
  FP16 rounding moves logits by ~1e-3 relative, so exact parity is not expected; the largest
  |Δprob| (softmax) is reported alongside.
* ``int8``: ``max_accuracy_drop`` ≤ 0.01: accuracy of the export minus PyTorch's on the same images,
  i.e. at most 1 percentage point lost; top-1 agreement is reported.

A failed gate raises ``GateError`` (exit code 3) and export.exporter leaves no file behind.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from toolchain.errors import GateError
from toolchain.temperature import softmax

from .metadata import INPUT_NAME

TOLERANCES: dict[str, dict[str, float]] = {
    "fp32": {"max_abs_logit": 1e-4, "rtol_logit": 1e-5},  # allowed: atol + rtol x max|torch logit|
    "fp16": {"min_top1_agreement": 0.995},
    "int8": {"max_accuracy_drop": 0.01},
}

Runner = Callable[[np.ndarray], np.ndarray]


def torch_runner(model: nn.Module) -> Runner:
    model = model.eval()

    @torch.no_grad()
    def run(x: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(np.ascontiguousarray(x))).float().numpy()

    return run


def onnx_runner(path: str | os.PathLike, threads: int | None = None) -> Runner:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(x: np.ndarray) -> np.ndarray:
        return session.run(None, {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)})[0].astype(np.float32)

    return run


def openvino_runner(path: str | os.PathLike, config: dict[str, str] | None = None,
                    threads: int | None = None) -> Runner:
    """Compiled on CPU with ``config`` (e.g. export.openvino.RUNTIME_CONFIG[precision])."""
    import openvino as ov

    cfg = dict(config or {})
    if threads:
        cfg["INFERENCE_NUM_THREADS"] = str(threads)
    compiled = ov.Core().compile_model(str(path), "CPU", cfg)
    request = compiled.create_infer_request()

    def run(x: np.ndarray) -> np.ndarray:
        request.infer({0: np.ascontiguousarray(x, dtype=np.float32)})
        return np.array(request.get_output_tensor(0).data, dtype=np.float32)

    run.precision_hint = str(compiled.get_property("INFERENCE_PRECISION_HINT"))  # type: ignore[attr-defined]
    return run


def runner_for(path: str | os.PathLike, precision: str = "fp32", threads: int | None = None) -> Runner:
    """The runtime that executes an exported file: ONNX Runtime for .onnx, OpenVINO for .xml."""
    from .openvino import RUNTIME_CONFIG

    p = Path(path)
    if p.suffix == ".onnx":
        return onnx_runner(p, threads)
    if p.suffix == ".xml":
        return openvino_runner(p, RUNTIME_CONFIG.get(precision), threads)
    raise ValueError(f"no runtime for {p.name}: expected .onnx or .xml")


def logits_of(run: Runner, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    return np.concatenate([run(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def compare(ref: np.ndarray, out: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Agreement statistics of ``out`` logits against reference logits ``ref`` on ``labels``."""
    ref, out = np.asarray(ref, np.float64), np.asarray(out, np.float64)
    if ref.shape != out.shape:
        return {"n": int(len(labels)), "error": f"output shape {out.shape} differs from {ref.shape}"}
    finite = bool(np.isfinite(out).all())
    ref_pred, pred = ref.argmax(1), out.argmax(1)
    ref_acc, acc = float((ref_pred == labels).mean()), float((pred == labels).mean())
    return {
        "n": int(len(labels)),
        "finite": finite,
        "max_abs_logit": float(np.abs(out - ref).max()) if finite else float("inf"),
        "logit_scale": float(np.abs(ref).max()),  # max|reference logit|: what float32 noise grows with
        "max_abs_prob": float(np.abs(softmax(out) - softmax(ref)).max()) if finite else float("inf"),
        "top1_agreement": float((pred == ref_pred).mean()),
        "reference_accuracy": ref_acc,
        "accuracy": acc,
        "accuracy_drop": ref_acc - acc,
    }


def allowed_abs_logit(tol: dict[str, float], logit_scale: float) -> float | None:
    """The largest |Δlogit| ``tol`` allows at ``logit_scale`` (max|reference logit|): atol + rtol × scale;
    None when ``tol`` has no logit bound (fp16, int8)."""
    if "max_abs_logit" not in tol:
        return None
    return float(tol["max_abs_logit"]) + float(tol.get("rtol_logit", 0.0)) * float(logit_scale)


def gate(precision: str, stats: dict[str, Any], tolerances: dict[str, dict[str, float]] | None = None) -> list[str]:
    """Human-readable failures of ``stats`` against the tolerance of ``precision`` (empty = pass)."""
    tol = (tolerances or TOLERANCES)[precision]
    if "error" in stats:
        return [stats["error"]]
    if not stats.get("finite", True):
        return ["non-finite outputs"]
    failures = []
    allowed = allowed_abs_logit(tol, stats.get("logit_scale", 0.0))
    if allowed is not None and stats["max_abs_logit"] > allowed:
        failures.append(f"max|Δlogit| {stats['max_abs_logit']:.2e} > {allowed:.2e} (= {tol['max_abs_logit']:.0e} + "
                        f"{tol.get('rtol_logit', 0.0):.0e} x max|logit| {stats.get('logit_scale', 0.0):.3g})")
    if "min_top1_agreement" in tol and stats["top1_agreement"] < tol["min_top1_agreement"]:
        failures.append(f"top-1 agreement {stats['top1_agreement']:.2%} < {tol['min_top1_agreement']:.1%}")
    if "max_accuracy_drop" in tol and stats["accuracy_drop"] > tol["max_accuracy_drop"] + 1e-12:
        failures.append(f"accuracy drop {100 * stats['accuracy_drop']:.2f} pt > {100 * tol['max_accuracy_drop']:.0f} pt")
    return failures


def verify(run: Runner, reference: np.ndarray, x: np.ndarray, labels: np.ndarray, precision: str, *,
           backend: str, tolerances: dict[str, dict[str, float]] | None = None,
           batch_size: int = 64) -> dict[str, Any]:
    """Run ``x`` through ``run``, compare with ``reference`` logits and apply the precision's gate."""
    stats = compare(reference, logits_of(run, x, batch_size), labels)
    failures = gate(precision, stats, tolerances)
    hint = getattr(run, "precision_hint", None)
    tol = (tolerances or TOLERANCES)[precision]
    allowed = allowed_abs_logit(tol, stats.get("logit_scale", 0.0)) if "error" not in stats else None
    return {"backend": backend, "precision": precision, **stats,
            **({"precision_hint": hint} if hint else {}),
            **({"allowed_max_abs_logit": allowed} if allowed is not None else {}),
            "tolerance": tol, "passed": not failures, "failures": failures}


def raise_if_failed(result: dict[str, Any], what: str) -> None:
    if not result["passed"]:
        err = GateError(f"export parity failed for {what}: {'; '.join(result['failures'])}; nothing was written")
        err.result = result  # type: ignore[attr-defined]
        raise err


def verify_table(results: list[dict[str, Any]], title: str = "Export verification"):
    """A rich table of :func:`verify` results (compact enough for an 80-column terminal)."""
    from rich.table import Table

    table = Table(title=title, collapse_padding=True)
    for col in ("backend", "prec", "n", "max|Δlogit|", "allowed", "max|Δprob|", "agree", "acc torch→export", "gate"):
        table.add_column(col, justify="left" if col in ("backend", "prec", "gate") else "right")
    for r in results:
        gate_cell = "[green]PASS[/green]" if r["passed"] else "[red]FAIL[/red]"
        if "error" in r:
            table.add_row(r["backend"], r["precision"], str(r["n"]), "-", "-", "-", "-", "-", gate_cell)
            continue
        allowed = r.get("allowed_max_abs_logit")
        table.add_row(
            r["backend"], r["precision"], str(r["n"]), f"{r['max_abs_logit']:.1e}",
            "-" if allowed is None else f"{allowed:.1e}", f"{r['max_abs_prob']:.1e}",
            f"{r['top1_agreement']:.1%}", f"{r['reference_accuracy']:.3f}→{r['accuracy']:.3f}", gate_cell,
        )
    return table
