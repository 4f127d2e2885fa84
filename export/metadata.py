"""Metadata carried inside every exported model, so a deployed file explains itself.

ONNX stores it in ``metadata_props`` and OpenVINO in ``rt_info["medprune"]``; in both, every value
is a JSON string (ONNX only allows strings, and one encoding for both keeps readers identical).
Keys: arch, class_names, preprocess, input_size ([C, H, W]), medprune_version, pruning_recipe,
source_sha256, dataset, format, precision, exporter, runtime (suggested runtime settings).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

INPUT_NAME = "image"
OUTPUT_NAME = "logits"
RT_INFO_ROOT = "medprune"


def build_metadata(meta: dict[str, Any], *, source_sha256: str | None = None) -> dict[str, Any]:
    """Metadata values (not yet JSON-encoded) from a checkpoint ``meta`` (see toolchain.models)."""
    from toolchain import __version__

    size = int(meta.get("img_size", 224))
    return {
        "arch": meta.get("arch"),
        "class_names": list(meta.get("class_names") or []),
        "preprocess": meta.get("preprocess"),
        "input_size": [int(meta.get("in_chans", 3)), size, size],
        "medprune_version": meta.get("medprune_version") or __version__,
        "pruning_recipe": (meta.get("pruning") or {}).get("recipe"),
        "source_sha256": source_sha256,
        "dataset": meta.get("dataset"),
    }


def encode(metadata: dict[str, Any]) -> dict[str, str]:
    return {str(k): json.dumps(v, sort_keys=True) for k, v in metadata.items()}


def decode(props: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in props.items():
        try:
            out[k] = json.loads(v)
        except (TypeError, json.JSONDecodeError):
            out[k] = v  # foreign keys written by other tools stay as plain strings
    return out


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The decoded medprune metadata of an exported ``.onnx`` or OpenVINO ``.xml`` file."""
    p = Path(path)
    if p.suffix == ".onnx":
        import onnx

        model = onnx.load(str(p), load_external_data=False)
        return decode({prop.key: prop.value for prop in model.metadata_props})
    if p.suffix == ".xml":
        import openvino as ov

        model = ov.Core().read_model(str(p))
        if not model.has_rt_info([RT_INFO_ROOT]):
            return {}
        node = model.get_rt_info([RT_INFO_ROOT])
        return decode({k: model.get_rt_info([RT_INFO_ROOT, k]).astype(str) for k in node.astype(dict)})
    raise ValueError(f"not an exported model: {p} (expected .onnx or .xml)")
