"""Models: construction by alias or timm name, safetensors checkpoints, size/compute summaries."""

from .checkpoint import (
    checkpoint_meta,
    load_checkpoint,
    read_sidecar,
    recorded_sha256,
    resize_to_state,
    resolve_checkpoint,
    save_checkpoint,
)
from .registry import (
    ALIASES,
    build_model,
    count_macs,
    count_params,
    default_build_args,
    layer_summary,
    parse_build_args,
    resolve_arch,
)

__all__ = [
    "ALIASES",
    "build_model",
    "checkpoint_meta",
    "count_macs",
    "count_params",
    "default_build_args",
    "layer_summary",
    "load_checkpoint",
    "parse_build_args",
    "read_sidecar",
    "recorded_sha256",
    "resize_to_state",
    "resolve_arch",
    "resolve_checkpoint",
    "save_checkpoint",
]
