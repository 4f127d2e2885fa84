"""The paper grid's result store and the keys of its tasks.

Tasks (dense metrics, reference indices, cells) run on Ray workers that never write files (a cluster
need not share a filesystem); the driver stores each returned value as a ``toolchain.pipeline`` stage
(``Pipeline.publish``: ``<root>/stages/<kind>-<digest>/`` with ``key.json``, ``result.json`` and, for
cells, ``heatmaps.npz``), so the grid and ``medprune deploy`` share one cache layout, one folder rule and
one ``digest``. A task's key holds every input that changes its result (data fingerprint,
preprocessing, checkpoint sha256, sizes, criterion and its options, ratios, ``CELL_VERSION``, the device)
and the pipeline adds the code version of the task function and its first-party imports (criteria
included); paths and batch size stay out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toolchain.pipeline import Pipeline, digest

from .cell import CELL_VERSION, cell_task, dense_task, reference_task
from .config import Grid

TASKS = {"dense": dense_task, "reference": reference_task, "cell": cell_task}
# The device every task computes on, in every task's key: ``cell.py`` loads checkpoints on load_checkpoint's
# default device and evaluates through a CPU ``Context``, in Ray tasks that reserve CPUs only. It is named
# here rather than read from cell.py because an edit to cell.py changes the code version of every task.
TASK_DEVICE = "cpu"


@dataclass(frozen=True)
class Task:
    """One cached unit of work: its kind (a key of ``TASKS``), its full key (``Pipeline.full_key``: the
    inputs and the code version, taken once when the task is made, as canonical JSON so it is hashable)
    and its id, the digest of that key."""

    kind: str
    full_key: str
    id: str


class Cache:
    """Finished tasks as ``toolchain.pipeline`` stages under ``root``."""

    def __init__(self, root: Path):
        from rich.console import Console

        self.root = Path(root)
        self.pipe = Pipeline(self.root, console=Console(quiet=True))

    def get(self, task: Task) -> dict | None:
        found = self.pipe.lookup(task.kind, json.loads(task.full_key))
        return None if found is None else found.data

    def folder(self, task: Task) -> str | None:
        """Where a finished task's files live, relative to ``root`` (recorded in the results JSON)."""
        found = self.pipe.lookup(task.kind, json.loads(task.full_key))
        return None if found is None else str(found.path.relative_to(self.root))

    def put(self, task: Task, value: dict) -> None:
        heatmaps = value.pop("_heatmaps", None)
        data = json.loads(json.dumps(value, default=_json_default))  # numpy scalars as numbers, not strings

        def write(folder: Path) -> None:
            if heatmaps:
                np.savez_compressed(folder / "heatmaps.npz", **heatmaps)

        self.pipe.publish(task.kind, json.loads(task.full_key), data, write=write)

    def heatmaps(self, folder: str) -> dict[str, np.ndarray] | None:
        """A cell's heatmaps from its recorded folder; None when the cache no longer holds them."""
        return _load_npz(self.root / folder / "heatmaps.npz")


def heatmap_loader(results: dict):
    """``cell -> heatmaps`` for the report, from the cache the results were computed in (``cache_root``).

    Cells record their stage folder; results written before the grid stored its tasks as pipeline
    stages record none, and their heatmaps sit at ``<cache_root>/cells/<key>.npz``.
    """
    cache = Cache(Path(results["cache_root"]))

    def load(cell: dict) -> dict[str, np.ndarray] | None:
        folder = cell.get("folder")
        if folder:
            return cache.heatmaps(folder)
        return _load_npz(cache.root / "cells" / f"{cell['key']}.npz")
    return load


def _load_npz(path: Path) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    with np.load(path) as z:
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
            **({"val_from_train": info["val_from_train"]} if info.get("val_from_train") else {}),
            "preprocess": info["preprocess"], "checkpoint": info["checkpoint"], "sha256": info["sha256"],
            "seed": s.seed,
            "batch_size": s.batch_size, "test_limit": s.test_limit, "val_limit": s.val_limit}


def _task(kind: str, spec: dict, sha: str, extra: dict) -> Task:
    # paths and batch size do not change results; the checkpoint's sha256, data fingerprint and the device
    # (TASK_DEVICE) do; Pipeline.full_key adds the code version of the task function
    ignore = {"checkpoint", "data_dir", "batch_size", "dense", "reference_indices"}
    key = {"version": CELL_VERSION, "sha256": sha, "device": TASK_DEVICE,
           **{k: v for k, v in spec.items() if k not in ignore}, **extra}
    full = Pipeline.full_key(kind, key, TASKS[kind])
    return Task(kind, json.dumps(full, sort_keys=True, separators=(",", ":"), default=str), digest(full))


def dense_spec(dataset: str, info: dict, grid: Grid) -> tuple[Task, dict]:
    spec = _base_spec(dataset, info, grid)
    return _task("dense", spec, info["sha256"], {}), spec


def reference_spec(dataset: str, info: dict, sampling: str, grid: Grid) -> tuple[Task, dict]:
    spec = {**_base_spec(dataset, info, grid), "sampling": sampling, "n_per_class": grid.sizes.n_per_class,
            "pool_per_class": grid.sizes.pool_per_class}
    spec.pop("test_limit"), spec.pop("val_limit")
    return _task("reference", spec, info["sha256"], {}), spec


def needs_data(criterion: str) -> bool:
    from toolchain.importance import get_criterion

    return get_criterion(criterion).needs_data


def cell_spec(dataset: str, model: str, criterion: str, sampling: str | None, info: dict, grid: Grid,
              ref_id: str | None, dense_id: str) -> tuple[Task, dict]:
    s = grid.sizes
    spec = {**_base_spec(dataset, info, grid), "model": model, "criterion": criterion,
            "criterion_options": grid.criterion_options.get(criterion, {}), "sampling": sampling,
            "n_per_class": s.n_per_class if sampling else None, "ratios": [float(r) for r in grid.ratios],
            "lossless_tolerance": s.lossless_tolerance, "lossless_sens_tolerance": s.lossless_sens_tolerance,
            "lossless_resolution": s.lossless_resolution, "lossless_coarse_step": s.lossless_coarse_step,
            "scope": s.scope, "normalize": s.normalize,
            "fidelity_images": s.fidelity_images, "figure_images": s.figure_images, "top_fraction": s.top_fraction}
    return _task("cell", spec, info["sha256"], {"reference": ref_id, "dense": dense_id}), spec
