"""OpenVINO IR (``.xml`` + ``.bin``) from the verified ONNX graph.

Converting from the ONNX file rather than re-tracing the torch model means both runtimes execute
the same graph, so a parity problem points at a runtime, not at two different traces.
FP16 IR = FP16 weights (``compress_to_fp16``); the CPU plugin still computes in its inference
precision. Note that on CPUs with bf16 support (AVX512-BF16/AMX) OpenVINO's *default* inference
precision is bf16, which alone moves logits by ~1e-3: FP32 IR must run with
``INFERENCE_PRECISION_HINT=f32`` to be FP32 (``RUNTIME_CONFIG``; also stored in the IR's rt_info).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import ExportError
from .metadata import RT_INFO_ROOT, encode

# Settings a deployment should pass to compile_model for the exported precision.
RUNTIME_CONFIG: dict[str, dict[str, str]] = {
    "fp32": {"INFERENCE_PRECISION_HINT": "f32"},
    "fp16": {},  # the device's native choice (f16 on GPU/ARM, bf16 or f32 on x86 CPU)
    "int8": {},
}


def convert(onnx_path: str | os.PathLike):
    """An in-memory ``ov.Model`` of an ONNX file; ExportError when OpenVINO cannot read it."""
    import openvino as ov

    try:
        return ov.convert_model(str(onnx_path))
    except Exception as exc:  # OpenVINO raises its own RuntimeError/OpConversionFailure types
        raise ExportError(f"OpenVINO cannot convert {Path(onnx_path).name}: {str(exc).strip().splitlines()[0]}") from exc


def set_metadata(model, metadata: dict[str, Any]) -> None:
    for key, value in encode(metadata).items():
        model.set_rt_info(value, [RT_INFO_ROOT, key])


def save(model, xml_path: str | os.PathLike, *, fp16: bool = False) -> None:
    """Write ``xml_path`` and its ``.bin``; ``fp16`` compresses weights to FP16."""
    import openvino as ov

    ov.save_model(model, str(xml_path), compress_to_fp16=fp16)


def export_openvino(onnx_path: str | os.PathLike, xml_path: str | os.PathLike, precision: str,
                    metadata: dict[str, Any] | None = None) -> None:
    """FP32 or FP16 IR from an FP32 ONNX file (INT8 goes through export.quantize.quantize_openvino)."""
    if precision not in ("fp32", "fp16"):
        raise ExportError(f"export_openvino writes fp32 or fp16 IR, not {precision!r}")
    model = convert(onnx_path)
    set_metadata(model, {**(metadata or {}), "runtime": RUNTIME_CONFIG[precision]})
    save(model, xml_path, fp16=precision == "fp16")
