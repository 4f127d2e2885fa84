"""Where medprune finds data and keeps its caches (environment-driven, never hard-coded paths)."""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path | None:
    """The data directory from ``MEDPRUNE_DATA``, or None when unset."""
    value = os.environ.get("MEDPRUNE_DATA", "").strip()
    return Path(value).expanduser() if value else None


def cache_dir() -> Path:
    """Root of cached checkpoints, scores and stage outputs (``MEDPRUNE_CACHE``, default ``./.cache/medprune``)."""
    value = os.environ.get("MEDPRUNE_CACHE", "").strip()
    root = Path(value).expanduser() if value else Path.cwd() / ".cache" / "medprune"
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file in the way or a read-only parent: the user's to fix, in one line
        from .errors import OutputError

        raise OutputError(f"cache folder {root} (MEDPRUNE_CACHE) cannot be created: {exc.strerror or exc}") from exc
    return root


def resolve_device(device: str = "auto") -> str:
    """``auto`` picks CUDA when present so a GPU user runs the same command at 224 px."""
    import torch

    from .errors import ConfigError

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda requested but no CUDA device is available")
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"unknown device {device!r}: use auto, cpu or cuda")
    return device
