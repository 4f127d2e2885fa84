"""PyTorch → ONNX, checked, shape-inferred and optionally simplified.

Exporter choice (measured on torch 2.14 / timm 1.0.31, see README "Export"): the dynamo exporter
(``torch.onnx.export(dynamo=True)``) handles all three families, including timm VGG's ConvMlp head,
whose upsampling ``adaptive_avg_pool2d`` the legacy TorchScript exporter refuses at small inputs, and
physically pruned ViTs (fewer heads: ``attn_dim`` shrinks with ``num_heads``). ViT attention with
``fused_attn`` exports through ``scaled_dot_product_attention``. It also gives smaller graphs
(ViT-B: 503 vs 955 nodes). The legacy exporter stays as a fallback for models dynamo cannot trace.

Simplification with onnxslim (``simplify="auto"``, the default) is kept only when it removes nodes:
on the dynamo output it is a no-op for VGG/ResNet and folds ViT-B from 503 to 419 nodes
(benchmarks/results/export_quality.md reports node counts and latency with and without it).
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import ExportError
from .metadata import INPUT_NAME, OUTPUT_NAME, encode

OPSET = 18
SIMPLIFY_MODES = ("auto", "on", "off")


@contextlib.contextmanager
def _quiet():
    """The exporters print progress and warn about things that are not the user's problem."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _export_dynamo(model: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    torch.onnx.export(
        model, (example,), str(path), dynamo=True, external_data=False, opset_version=opset,
        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], verbose=False,
        dynamic_shapes=({0: torch.export.Dim("batch")},),
    )


def _export_torchscript(model: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    torch.onnx.export(
        model, (example,), str(path), dynamo=False, opset_version=opset, do_constant_folding=True,
        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
    )


def check(model_proto):
    """Shape inference then the full ONNX checker; ExportError naming the problem if invalid."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model_proto, check_type=True, strict_mode=True)
        onnx.checker.check_model(inferred, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"exported ONNX graph is invalid: {str(exc).splitlines()[0]}") from exc
    return inferred


def set_metadata(model_proto, metadata: dict[str, Any]) -> None:
    """Replace medprune's keys in ``metadata_props`` with JSON strings of ``metadata``."""
    import onnx

    props = {p.key: p.value for p in model_proto.metadata_props}
    props.update(encode(metadata))
    del model_proto.metadata_props[:]
    onnx.helper.set_model_props(model_proto, props)


def set_metadata_file(path: str | os.PathLike, metadata: dict[str, Any]) -> None:
    import onnx

    proto = onnx.load(str(path))
    set_metadata(proto, metadata)
    onnx.save(proto, str(path))


def simplify(model_proto, mode: str = "auto"):
    """``(model, applied)``: onnxslim's graph when ``mode == "on"``, or when ``auto`` and it has fewer nodes."""
    if mode not in SIMPLIFY_MODES:
        raise ExportError(f"unknown simplify mode {mode!r}: use one of {', '.join(SIMPLIFY_MODES)}")
    if mode == "off":
        return model_proto, False
    import onnxslim

    with _quiet():
        slim = onnxslim.slim(model_proto)
    if mode == "on" or len(slim.graph.node) < len(model_proto.graph.node):
        return slim, True
    return model_proto, False


def export_onnx(model: nn.Module, path: str | os.PathLike, input_shape: tuple[int, int, int], *,
                metadata: dict[str, Any] | None = None, simplify_mode: str = "auto", opset: int = OPSET,
                exporter: str = "auto") -> dict[str, Any]:
    """Write ``model`` as FP32 ONNX to ``path`` (input "image" (batch,C,H,W) → output "logits").

    ``exporter``: "auto" (dynamo, then TorchScript if dynamo fails), "dynamo" or "torchscript".
    Returns facts about the export: exporter used, node counts, whether simplification was kept.
    The caller is responsible for atomicity (see export.exporter, which writes into a staging dir).
    """
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    example = torch.randn(2, *input_shape)  # batch 2: the batch axis must not specialise to 1
    attempts = {"auto": ("dynamo", "torchscript"), "dynamo": ("dynamo",), "torchscript": ("torchscript",)}
    if exporter not in attempts:
        raise ExportError(f"unknown exporter {exporter!r}: use auto, dynamo or torchscript")
    errors = []
    used = None
    for name in attempts[exporter]:
        fn = _export_dynamo if name == "dynamo" else _export_torchscript
        try:
            with _quiet(), torch.no_grad():
                fn(model, example, path, opset)
            used = name
            break
        except Exception as exc:  # exporter internals raise many types; report them all at the end
            errors.append(f"{name}: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}")
    if used is None:
        raise ExportError(f"ONNX export of {type(model).__name__} failed ({'; '.join(errors)})")
    proto = onnx.load(str(path))
    nodes_raw = len(proto.graph.node)
    proto, simplified = simplify(proto, simplify_mode)
    proto = check(proto)
    set_metadata(proto, {**(metadata or {}), "exporter": f"torch {torch.__version__} {used} opset {opset}"})
    onnx.save(proto, str(path))
    return {"exporter": used, "opset": opset, "nodes_raw": nodes_raw, "nodes": len(proto.graph.node),
            "simplified": simplified}


def to_fp16(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """FP16 weights and compute, FP32 input/output (``keep_io_types``), so callers feed the same arrays.

    Uses ONNX Runtime's own converter (``onnxruntime.transformers.float16``), no extra dependency.
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    proto = onnx.load(str(src))
    props = {p.key: p.value for p in proto.metadata_props}
    with _quiet():
        half = convert_float_to_float16(proto, keep_io_types=True)
        # The converter appends its input Casts after their consumers on some graphs (ViT).
        OnnxModel.graph_topological_sort(half.graph, is_deterministic=True)
    half = check(half)
    del half.metadata_props[:]
    onnx.helper.set_model_props(half, props)
    onnx.save(half, str(dst))
