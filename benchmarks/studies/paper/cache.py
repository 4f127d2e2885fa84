"""The paper grid's result store and the keys of its tasks.

Cells run on Ray workers that never write files (a cluster need not share a filesystem): the driver
stores each returned value as ``<root>/<kind>/<key>.json`` (+ ``.npz`` heatmaps for cells), written
atomically, the JSON last as the completion marker. A key is ``toolchain.pipeline.digest`` of the task's
spec: every input that changes the result (data fingerprint, preprocessing, checkpoint sha256, sizes,
criterion and its options, ratios, ``CELL_VERSION``), never paths or batch size.
"""

from __future__ import annotations

import functools
import json
import warnings
from pathlib import Path

import numpy as np

from toolchain.atomic import atomic_file
from toolchain.pipeline import code_version, digest

from .cell import CELL_VERSION
from .config import Grid


class Cache:
    """One JSON per finished task under ``root/<kind>/<key>.json`` (+ ``.npz`` heatmaps for cells)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, kind: str, key: str, suffix: str = ".json") -> Path:
        return self.root / kind / f"{key}{suffix}"

    def get(self, kind: str, key: str) -> dict | None:
        p = self.path(kind, key)
        if not p.is_file():
            return None
        try:
            return json.loads(p.read_text())
        except json.JSONDecodeError as exc:  # atomic writes make this rare; recomputed, not trusted, and said
            warnings.warn(f"paper-grid cache entry {p} is unreadable ({exc}); recomputing", stacklevel=2)
            return None

    def put(self, kind: str, key: str, value: dict) -> None:
        heatmaps = value.pop("_heatmaps", None)
        if heatmaps:
            # the npz first: the JSON is the completion marker
            with atomic_file(self.path(kind, key, ".npz")) as fh:
                np.savez_compressed(fh, **heatmaps)
        with atomic_file(self.path(kind, key), "w") as fh:
            json.dump(value, fh, indent=1, default=_json_default)

    def heatmaps(self, kind: str, key: str) -> dict[str, np.ndarray] | None:
        p = self.path(kind, key, ".npz")
        if not p.is_file():
            return None
        with np.load(p) as z:
            return {k: z[k] for k in z.files}


def _json_default(obj):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(type(obj).__name__)


def default_cache_root() -> Path:
    from toolchain import settings

    return settings.cache_dir() / "paper_grid"


# ---------------------------------------------------------------- task specs


def _base_spec(dataset: str, info: dict, grid: Grid) -> dict:
    s = grid.sizes
    # the data the checkpoint was trained on (e.g. breastmnist_64 for the grid's breastmnist)
    data = (info.get("train_config") or {}).get("data") or dataset
    return {"data": data, "data_dir": grid.data_dir, "load_size": info["load_size"],
            "val_fraction": info["val_fraction"], "data_seed": info["data_seed"], "fingerprint": info["fingerprint"],
            "preprocess": info["preprocess"], "checkpoint": info["checkpoint"], "sha256": info["sha256"],
            "seed": s.seed,
            "batch_size": s.batch_size, "test_limit": s.test_limit, "val_limit": s.val_limit}


@functools.cache
def _cell_code_version() -> str:
    # the cell tasks and every first-party module they import (criteria included): edited code reruns
    return code_version("benchmarks.studies.paper.cell")


def _key_of(spec: dict, kind: str, sha: str, extra: dict) -> str:
    # paths and batch size do not change results; the checkpoint's sha256, data fingerprint, the device
    # (cell tasks run on CPU) and the code do
    ignore = {"checkpoint", "data_dir", "batch_size", "dense", "reference_indices"}
    return digest({"kind": kind, "version": CELL_VERSION, "sha256": sha, "device": "cpu",
                   "code_version": _cell_code_version(),
                   **{k: v for k, v in spec.items() if k not in ignore}, **extra})


def dense_spec(dataset: str, info: dict, grid: Grid) -> tuple[str, dict]:
    spec = _base_spec(dataset, info, grid)
    return _key_of(spec, "dense", info["sha256"], {}), spec


def reference_spec(dataset: str, info: dict, sampling: str, grid: Grid) -> tuple[str, dict]:
    spec = {**_base_spec(dataset, info, grid), "sampling": sampling, "n_per_class": grid.sizes.n_per_class,
            "pool_per_class": grid.sizes.pool_per_class}
    spec.pop("test_limit"), spec.pop("val_limit")
    return _key_of(spec, "reference", info["sha256"], {}), spec


def needs_data(criterion: str) -> bool:
    from toolchain.importance import get_criterion

    return get_criterion(criterion).needs_data


def cell_spec(dataset: str, model: str, criterion: str, sampling: str | None, info: dict, grid: Grid,
              ref_key: str | None, dense_key: str) -> tuple[str, dict]:
    s = grid.sizes
    spec = {**_base_spec(dataset, info, grid), "model": model, "criterion": criterion,
            "criterion_options": grid.criterion_options.get(criterion, {}), "sampling": sampling,
            "n_per_class": s.n_per_class if sampling else None, "ratios": [float(r) for r in grid.ratios],
            "lossless_tolerance": s.lossless_tolerance, "lossless_sens_tolerance": s.lossless_sens_tolerance,
            "lossless_resolution": s.lossless_resolution, "lossless_coarse_step": s.lossless_coarse_step,
            "scope": s.scope, "normalize": s.normalize,
            "fidelity_images": s.fidelity_images, "figure_images": s.figure_images, "top_fraction": s.top_fraction}
    return _key_of(spec, "cell", info["sha256"], {"reference": ref_key, "dense": dense_key}), spec
