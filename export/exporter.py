"""Export one model to one format and precision, verify it, and only then publish the files.

Everything is built in a hidden staging directory next to the output; files are renamed into
``out_dir`` only after the checker and the parity gate (export.verify) pass, so a failed export
never leaves a file that looks valid. Output names: ``{name}_{format}_{precision}.onnx`` or
``.xml``/``.bin``, plus ``{name}_{format}_{precision}.verify.json`` (the parity report).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from toolchain.atomic import atomic_file
from toolchain.errors import ConfigError

from . import onnx as onnx_export
from . import openvino as ov_export
from .metadata import build_metadata
from .verify import TOLERANCES, logits_of, raise_if_failed, runner_for, torch_runner, verify

FORMATS: dict[str, tuple[str, ...]] = {
    "onnx": ("fp32", "fp16", "int8"),
    "openvino": ("fp32", "fp16", "int8"),
}
SUFFIX = {"onnx": ".onnx", "openvino": ".xml"}


@dataclass
class ExportResult:
    path: Path  # the entry file (.onnx or .xml)
    files: list[Path]
    fmt: str
    precision: str
    info: dict[str, Any] = field(default_factory=dict)
    verification: dict[str, Any] | None = None


def check_request(fmt: str, precision: str) -> None:
    if fmt not in FORMATS:
        raise ConfigError(f"unsupported format {fmt!r}: supported formats are {', '.join(FORMATS)}")
    if precision not in FORMATS[fmt]:
        raise ConfigError(f"unsupported precision {precision!r} for {fmt}: supported are {', '.join(FORMATS[fmt])}")


def output_name(name: str, fmt: str, precision: str) -> str:
    return f"{name}_{fmt}_{precision}{SUFFIX[fmt]}"


def _is_transformer(model: nn.Module, meta: dict[str, Any]) -> bool:
    return "vit" in str(meta.get("arch", "")).lower() or hasattr(model, "blocks")


def export_model(
    model: nn.Module,
    meta: dict[str, Any],
    out_dir: str | os.PathLike,
    fmt: str,
    precision: str,
    *,
    name: str = "model",
    source_sha256: str | None = None,
    eval_x: np.ndarray | None = None,
    eval_y: np.ndarray | None = None,
    calib_x: np.ndarray | None = None,
    simplify_mode: str = "auto",
    base_onnx: str | os.PathLike | None = None,
    tolerances: dict[str, dict[str, float]] | None = None,
) -> ExportResult:
    """Export ``model`` (checkpoint ``meta``) and, when ``eval_x`` is given, gate it on parity.

    ``calib_x``: preprocessed calibration images (INT8 only). ``eval_x``/``eval_y``: preprocessed
    evaluation images and labels; without them the export is written unverified (checker only).
    ``base_onnx``: an FP32 ONNX file already exported from this same model (by this function), reused
    instead of tracing again when deriving other formats/precisions.
    """
    check_request(fmt, precision)
    if precision == "int8" and (calib_x is None or len(calib_x) == 0):
        raise ConfigError("INT8 export needs calibration images: pass --data (the train split is used)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    input_shape = (int(meta.get("in_chans", 3)), int(meta.get("img_size", 224)), int(meta.get("img_size", 224)))
    metadata = {**build_metadata(meta, source_sha256=source_sha256), "format": fmt, "precision": precision}
    final = output_name(name, fmt, precision)
    stage = Path(tempfile.mkdtemp(prefix=f".{Path(final).stem}.", suffix=".tmp", dir=out_dir))
    try:
        entry = stage / final
        fp32_onnx = entry if (fmt, precision) == ("onnx", "fp32") else stage / "_fp32.onnx"
        if base_onnx is not None:
            shutil.copyfile(base_onnx, fp32_onnx)
            info = {"base_onnx": str(base_onnx)}
            if fp32_onnx == entry:
                onnx_export.set_metadata_file(entry, metadata)
        else:
            info = onnx_export.export_onnx(model, fp32_onnx, input_shape, metadata=metadata,
                                           simplify_mode=simplify_mode)
        if fmt == "onnx" and precision == "fp16":
            onnx_export.to_fp16(fp32_onnx, entry)
            onnx_export.set_metadata_file(entry, metadata)
        elif fmt == "onnx" and precision == "int8":
            from .quantize import quantize_onnx

            quantize_onnx(fp32_onnx, entry, calib_x)
            onnx_export.set_metadata_file(entry, metadata)
        elif fmt == "openvino" and precision in ("fp32", "fp16"):
            ov_export.export_openvino(fp32_onnx, entry, precision, metadata)
        elif fmt == "openvino":
            from .quantize import quantize_openvino

            ov_model = ov_export.convert(fp32_onnx)
            quantized = quantize_openvino(ov_model, calib_x, transformer=_is_transformer(model, meta))
            ov_export.set_metadata(quantized, {**metadata, "runtime": ov_export.RUNTIME_CONFIG[precision]})
            ov_export.save(quantized, entry)
        if fp32_onnx != entry:
            fp32_onnx.unlink()
        files = sorted(p for p in stage.iterdir() if p.is_file())
        result = ExportResult(entry, files, fmt, precision, info=info)
        if eval_x is not None and eval_y is not None:
            reference = logits_of(torch_runner(model), eval_x)
            run = runner_for(entry, precision)
            result.verification = verify(run, reference, eval_x, np.asarray(eval_y), precision,
                                         backend="onnxruntime" if fmt == "onnx" else "openvino",
                                         tolerances=tolerances)
            raise_if_failed(result.verification, f"{fmt} {precision}")
        # Publish: the entry file last, so a reader never sees an .xml without its .bin.
        published = []
        for f in sorted(files, key=lambda p: p == entry):
            target = out_dir / f.name
            os.replace(f, target)
            published.append(target)
        result.files, result.path = published, out_dir / final
        report = {"file": final, "format": fmt, "precision": precision, "export": info,
                  "metadata": metadata, "tolerances": tolerances or TOLERANCES,
                  "verification": result.verification}
        report_path = out_dir / f"{Path(final).stem}.verify.json"
        with atomic_file(report_path, "w") as fh:
            json.dump(report, fh, indent=1, default=str)
        report_path.chmod(0o644)
        return result
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _preprocess_chunks(preprocess, images: np.ndarray, chunk: int = 256) -> np.ndarray:
    return np.concatenate([preprocess(images[i:i + chunk]).numpy() for i in range(0, len(images), chunk)])


def load_images(meta: dict[str, Any], data: str | None = None, data_dir: str | os.PathLike | None = None, *,
                calib_size: int = 0, eval_size: int | None = None, eval_split: str = "test",
                seed: int = 0) -> dict[str, np.ndarray]:
    """Preprocessed arrays for export: ``calib`` (seeded train subset) and ``eval_x``/``eval_y``.

    ``eval_size``: None = no evaluation images, 0 = the whole ``eval_split``, n = a seeded subset of n.
    Images are preprocessed exactly as at training time (the checkpoint's ``preprocess``).
    """
    from toolchain.evaluate import dataset_for_checkpoint

    from .quantize import calibration_indices

    ds, preprocess = dataset_for_checkpoint(meta, data, data_dir)
    out: dict[str, np.ndarray] = {}
    if calib_size:
        train = ds.split("train")
        idx = calibration_indices(len(train.labels), calib_size, seed)
        out["calib"] = _preprocess_chunks(preprocess, train.images[idx])
    if eval_size is not None and eval_size < 0:
        raise ConfigError(f"--verify-size must be >= 0, got {eval_size}")
    if eval_size is not None:
        split = ds.split(eval_split)
        idx = np.arange(len(split.labels))
        if eval_size and eval_size < len(idx):
            idx = np.sort(np.random.default_rng(seed + 1).choice(len(idx), size=eval_size, replace=False))
        out["eval_x"] = _preprocess_chunks(preprocess, split.images[idx])
        out["eval_y"] = np.asarray(split.labels[idx], dtype=np.int64)
    return out
