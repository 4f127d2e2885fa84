"""INT8 post-training static quantization, calibrated on preprocessed train-split images.

Two routes, one per runtime:

* ONNX Runtime: ``quantize_static`` in QDQ format, per-channel weights, MinMax calibration fed by a
  ``CalibrationDataReader``; QUInt8 activations × QInt8 weights, the recommended pair for x86 with
  VNNI (``activation_type="int8"`` gives symmetric activations for ARM).
* OpenVINO: ``nncf.quantize`` on the ``ov.Model`` (NNCF's native route, fast bias correction;
  ``ModelType.TRANSFORMER`` for ViTs so SmoothQuant and transformer ignore-patterns apply).

Calibration images come from :func:`calibration_images` (seeded subset of the train split).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ExportError
from .metadata import INPUT_NAME
from .onnx import _quiet


def calibration_indices(n_available: int, size: int, seed: int = 0) -> np.ndarray:
    """``size`` distinct indices (all when fewer are available), sorted, reproducible for ``seed``."""
    if size < 1:
        raise ExportError(f"--calib-size must be at least 1, got {size}")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_available, size=min(size, n_available), replace=False))


def _batches(x: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    for i in range(0, len(x), batch_size):
        yield np.ascontiguousarray(x[i:i + batch_size], dtype=np.float32)


def quantize_onnx(src: str | os.PathLike, dst: str | os.PathLike, calib: np.ndarray, *,
                  per_channel: bool = True, activation_type: str = "uint8", batch_size: int = 16) -> None:
    """QDQ INT8 copy of the FP32 ONNX ``src`` at ``dst`` (metadata_props carried over)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(calib) == 0:
        raise ExportError("INT8 quantization needs calibration images (got none)")
    act = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}.get(activation_type)
    if act is None:
        raise ExportError(f"activation_type must be uint8 or int8, got {activation_type!r}")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(_batches(calib, batch_size))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._it, None)
            return None if batch is None else {INPUT_NAME: batch}

    src, dst = Path(src), Path(dst)
    props = {p.key: p.value for p in onnx.load(str(src), load_external_data=False).metadata_props}
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # ORT logs per-tensor notes (e.g. LayerNorm weights kept per-tensor) as warnings
        try:
            with _quiet():
                # ORT's recommended pre-pass: fold/fuse and infer shapes so every tensor can be quantized.
                quant_pre_process(str(src), str(prepared), skip_symbolic_shape=False)
                quantize_static(
                    str(prepared), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                    activation_type=act, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"CalibTensorRangeSymmetric": False},
                )
        except ExportError:
            raise
        except Exception as exc:
            raise ExportError(f"ONNX Runtime INT8 quantization failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
        finally:
            root.setLevel(level)
    model = onnx.load(str(dst))
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(dst))


def quantize_openvino(model, calib: np.ndarray, *, transformer: bool = False, batch_size: int = 1) -> Any:
    """NNCF INT8 ``ov.Model`` from an FP32 ``ov.Model`` (rt_info is kept by NNCF's graph rewrite)."""
    try:
        import nncf
    except ImportError as exc:  # nncf is the optional "int8" extra
        raise ExportError("OpenVINO INT8 needs nncf: pip install 'medprune[int8]'") from exc
    if len(calib) == 0:
        raise ExportError("INT8 quantization needs calibration images (got none)")
    batches = list(_batches(calib, batch_size))
    kwargs: dict[str, Any] = {"subset_size": len(batches)}
    if transformer:
        kwargs["model_type"] = nncf.ModelType.TRANSFORMER
    try:
        with _quiet():
            return nncf.quantize(model, nncf.Dataset(batches), **kwargs)
    except Exception as exc:
        raise ExportError(f"NNCF INT8 quantization failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
