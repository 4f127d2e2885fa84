"""Pruned checkpoints without pickle: ``save_checkpoint`` + ``meta["pruning"]``.

The stored tensor shapes are the truth: ``toolchain.models.load_checkpoint`` rebuilds the dense
architecture, resizes each module to the stored shapes and applies ``pruning.module_attrs`` (the
attention head counts that shapes alone do not carry).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

RECIPE_KEYS = ("criterion", "ratio", "granularity", "round_to")


def pruning_meta(report: dict[str, Any], recipe: dict[str, Any]) -> dict[str, Any]:
    """``meta["pruning"]`` for a model returned by :func:`remove_units` with ``report``."""
    return {
        "recipe": {**{k: recipe.get(k) for k in RECIPE_KEYS}, **recipe},
        "module_attrs": dict(report.get("module_attrs") or {}),
        "units": dict(report.get("units") or {}),
        "params_before": report.get("params_before"),
        "params_after": report.get("params_after"),
    }


def save_pruned(path: str | os.PathLike, pruned: nn.Module, meta: dict[str, Any], report: dict[str, Any],
                recipe: dict[str, Any]) -> Path:
    """Write the pruned model; ``meta`` is the dense checkpoint's meta (arch, build_args, classes…)."""
    from ..models.checkpoint import save_checkpoint

    meta = dict(meta)
    meta["pruning"] = pruning_meta(report, recipe)
    return save_checkpoint(path, pruned, meta)
