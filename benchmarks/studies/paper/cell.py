"""The work of one paper-grid cell, run inside a Ray worker (or directly, in tests).

A cell is (dataset, model, criterion, sampling). It scores every unit once on the reference images,
then masks the model at each ratio and measures it on the test split, searches the lossless ratio on
the validation split (selecting on test would report an optimistic ratio) and reports test metrics
at it, and measures how far the pruned model's input-level LRP heatmaps drift from the dense ones.

Prep tasks (``dense_task``, ``reference_task``) compute what many cells share once per model: dense
metrics and the reference indices of a sampling strategy (they do not depend on the criterion).

Everything here returns plain JSON-ready data (plus numpy heatmaps for the figure); the driver in
``benchmarks.studies.paper.sweep`` owns caching, so workers never write files (a Ray cluster without a shared
filesystem works too, as long as checkpoints and data are reachable at the same paths).

Reused from the toolchain: data loading, checkpoints, ``select_reference`` (sampling), criteria,
``toolchain.prune_eval`` (``score_units``, ``RatioEvaluator`` for masks/evaluation per ratio,
``find_lossless``), ``apply_masks`` and the heatmaps of ``toolchain.fidelity``. ``_adapters`` holds
thin glue between the grid's key names and those of the toolchain.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import numpy as np

# Written into every cell key: bump it when the cell's computation changes meaning, so stale cache
# entries are recomputed instead of silently mixed into a new report.
CELL_VERSION = 2


def single_thread() -> None:
    """One torch thread per worker: Ray gives every task one CPU, and oversubscription slows all."""
    import torch

    os.environ["MEDPRUNE_THREADS"] = "1"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)


def load_data(spec: dict):
    """The dataset of a cell/prep spec and the checkpoint's preprocess; uses the checkpoint's load options."""
    from toolchain.data import Preprocess, load_dataset

    ds = load_dataset(spec["data"], spec.get("data_dir"), load_size=spec.get("load_size"),
                      val_fraction=spec.get("val_fraction", 0.1), val_from_train=spec.get("val_from_train", 0.0),
                      seed=spec.get("data_seed", 0), progress=False)
    if spec.get("fingerprint") and ds.fingerprint != spec["fingerprint"]:
        from toolchain.errors import DataError

        raise DataError(f"dataset {ds.name} fingerprint {ds.fingerprint[:12]} differs from the checkpoint's "
                        f"{spec['fingerprint'][:12]}: the checkpoint was trained on other data")
    return ds, Preprocess.from_dict(spec["preprocess"])


def subset_indices(labels: np.ndarray, limit: int | None, seed: int) -> np.ndarray | None:
    """A stratified subset of ``limit`` indices (sorted), or None for the whole split."""
    if not limit or limit >= len(labels):
        return None
    from toolchain.train import stratified_subset

    return stratified_subset(labels, int(limit), seed)


def dense_task(spec: dict) -> dict:
    """Dense test/val metrics of one (dataset, model) on the same subsets the cells use."""
    from toolchain.evaluate import evaluate
    from toolchain.models import load_checkpoint

    single_thread()
    t0 = time.perf_counter()
    ds, pre = load_data(spec)
    model, _ = load_checkpoint(spec["checkpoint"])
    view = evaluation_view(ds, {"test": spec.get("test_limit"), "val": spec.get("val_limit")}, spec.get("seed", 0))
    out: dict[str, Any] = {split: evaluate(model, view, split, pre, batch_size=spec.get("batch_size", 128))
                           for split in ("test", "val")}
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


def reference_task(spec: dict) -> dict:
    """Reference indices (into the train split) of one sampling strategy for one (dataset, model)."""
    from toolchain.models import load_checkpoint
    from toolchain.sampling import select_reference

    single_thread()
    t0 = time.perf_counter()
    ds, pre = load_data(spec)
    model, _ = load_checkpoint(spec["checkpoint"])
    idx = select_reference(model, ds, pre, spec["n_per_class"], spec["sampling"], spec.get("seed", 0), "train",
                           pool_per_class=spec.get("pool_per_class"))
    labels = ds.split("train").labels[idx]
    return {"indices": [int(i) for i in idx], "per_class": np.bincount(labels, minlength=ds.num_classes).tolist(),
            "seconds": round(time.perf_counter() - t0, 2)}


def _summary(metrics: dict) -> dict:
    """The metrics a cell keeps per ratio (the confusion matrix stays, for recomputation)."""
    keep = ("n", "accuracy", "balanced_accuracy", "auc", "per_class", "confusion_matrix")
    return {k: metrics.get(k) for k in keep}


def evaluation_view(ds, limits: dict[str, int | None], seed: int):
    """``ds`` with its test/val splits cut to the stratified subsets the grid evaluates on."""
    import dataclasses

    splits = dict(ds.splits)
    for split, limit in limits.items():
        idx = subset_indices(ds.split(split).labels, limit, seed)
        if idx is not None:
            splits[split] = ds.split(split).subset(idx)
    return dataclasses.replace(ds, splits=splits)


def cell_task(spec: dict) -> dict:
    """Score once, evaluate every ratio on test, lossless search on val, explanation fidelity per ratio."""
    import torch

    from toolchain.importance import get_criterion
    from toolchain.masking import apply_masks
    from toolchain.models import load_checkpoint
    from toolchain.prune_eval import Context, find_lossless, lossless_evaluator, score_units
    from toolchain.units import find_unit_layers

    from . import _adapters as ad

    single_thread()
    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    ds, pre = load_data(spec)
    model, meta = load_checkpoint(spec["checkpoint"])
    layers = find_unit_layers(model)
    seed = spec.get("seed", 0)

    criterion = get_criterion(spec["criterion"], **(spec.get("criterion_options") or {}))
    x_ref = y_ref = None
    if criterion.needs_data:
        ref = np.asarray(spec["reference_indices"], dtype=np.int64)
        train = ds.split("train")
        x_ref, y_ref = pre(train.images[ref]), torch.as_tensor(train.labels[ref], dtype=torch.long)
    scores, timings["score_s"] = score_units(model, criterion, x_ref, y_ref, layers)

    view = evaluation_view(ds, {"test": spec.get("test_limit"), "val": spec.get("val_limit")}, seed)
    ctx = Context(model, meta, view, pre, "cpu", spec["checkpoint"], spec.get("sha256", ""))
    # the paper grid's lossless search uses the point rule (no interval), as its committed cells were computed
    ev = lossless_evaluator("point", ctx, scores, layers, scope=spec.get("scope", "global"),
                            normalize=spec.get("normalize"), batch_size=spec.get("batch_size", 128))
    ad.seed_dense(ev, spec["dense"])

    t0 = time.perf_counter()
    ratios = {_rkey(r): _summary(ev.metrics(r, "test")) for r in spec["ratios"]}
    timings["ratios_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    found = find_lossless(ev, spec.get("lossless_tolerance", 1.0), spec.get("lossless_sens_tolerance", 2.0),
                          search_split="val", resolution=spec.get("lossless_resolution", 0.01),
                          coarse_step=spec.get("lossless_coarse_step", 0.1))
    lossless = float(found["ratio"])
    lossless_test = _summary(ev.metrics(lossless, "test"))
    timings["lossless_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    fidelity, heatmaps = {}, {}
    n_fid = int(spec.get("fidelity_images", 0) or 0)
    if n_fid:
        test = ds.split("test")
        fid_idx = fidelity_indices(test.labels, n_fid, seed)
        x = pre(test.images[fid_idx])
        y = torch.as_tensor(test.labels[fid_idx], dtype=torch.long)
        dense_maps = ad.input_heatmaps(model, x, y)
        n_fig = int(spec.get("figure_images", 0) or 0)
        if n_fig:
            # the raw X-rays travel with the maps, so the report draws the figure without the data
            heatmaps.update(images=test.images[fid_idx[:n_fig]], indices=fid_idx[:n_fig], dense=dense_maps[:n_fig],
                            labels=test.labels[fid_idx[:n_fig]], class_names=np.asarray(ds.class_names, dtype=str))
        at = {_rkey(r): r for r in spec["ratios"]}
        if lossless > 0:
            at["lossless"] = lossless
        for key, r in at.items():
            maps = ad.input_heatmaps(apply_masks(model, ev.masks(r)), x, y)
            fidelity[key] = ad.compare_heatmaps(dense_maps, maps, top_fraction=spec.get("top_fraction", 0.1))
            if n_fig:
                heatmaps[key] = maps[:n_fig]
        fidelity["images"] = [int(i) for i in fid_idx]
    timings["fidelity_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_start

    return {
        "ratios": ratios,
        "lossless": {"ratio": lossless, "test": lossless_test, "val": _summary(ev.metrics(lossless, "val")),
                     "search": found},
        "fidelity": fidelity,
        "units": {"layers": len(layers), "total": int(sum(layer.size for layer in layers))},
        "timings": {k: round(v, 2) for k, v in timings.items()},
        "_heatmaps": {k: np.asarray(v) for k, v in heatmaps.items()},
    }


def fidelity_indices(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` test images, as balanced over classes as the split allows, fixed by ``seed``."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    picked: list[int] = []
    i = 0
    while len(picked) < min(n, len(labels)):
        for p in per:
            if i < len(p) and len(picked) < n:
                picked.append(int(p[i]))
        i += 1
    return np.asarray(picked, dtype=np.int64)


def _rkey(r: float) -> str:
    """Ratio keys in JSON: "0.15", "0.3", ... (stable text, no float repr noise)."""
    return f"{float(r):g}"


def finite_or_none(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)
