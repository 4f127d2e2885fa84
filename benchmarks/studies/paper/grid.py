"""The paper's study at CPU scale: models x criteria x sampling x pruning ratios, swept on Ray.

    MEDPRUNE_DATA=/work/shared/data python -m benchmarks.studies.paper.grid \
        [--datasets pneumoniamnist] [--models vgg19,resnet50,vit_b16] [--criteria lrp,dlb,ig,...] \
        [--samplings confidence,random,clustering] [--ratios 0.15,0.3,0.5,0.7] \
        [--n-per-class 10] [--fidelity-images 16] [--test-limit N] [--val-limit N] [--pool-per-class N]

A *cell* is (dataset, model, criterion, sampling): unit scores are computed once on the reference
images, then every ratio is evaluated on the test split; the lossless ratio is searched on the
validation split (never on test, so the ratio is not selected on the data it is reported on) and
test metrics are reported at it; explanation fidelity compares input-level LRP heatmaps of the
dense and the masked model on a few test images (see ``benchmarks.studies.paper.cell``).

Each cell is a Ray task (``num_cpus=1``, one torch thread). Ray starts locally
(``ray.init(num_cpus=<cores>)``) unless ``RAY_ADDRESS`` names a cluster (which must see the same
checkpoint and data paths). Every finished cell is cached as one JSON file keyed by a hash of its
configuration and the checkpoint's sha256, written atomically by the driver, so an interrupted
sweep resumes where it stopped. Data-free criteria (magnitude, random) ignore the sampling, so
they are computed once per model and shown under every sampling.

Checkpoints come from ``toolchain.train`` (cached, so a trained baseline is reused, not retrained): the
configs recorded in ``benchmarks/results/baselines.json`` or ``benchmarks.studies.baselines.RUNS``; a dataset
without a baseline borrows the model's baseline hyperparameters with ``--train-subset`` train images.
``--checkpoint DATASET:MODEL=PATH`` injects one directly.

Writes benchmarks/results/paper_grid.{json,md} and paper_grid_*.png (``--out`` to change).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import shlex
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from toolchain.atomic import atomic_file
from toolchain.errors import ConfigError, MedpruneError

from .cell import CELL_VERSION, cell_task, dense_task, reference_task

RESULTS = Path(__file__).resolve().parents[2] / "results"
SCHEMA = "medprune.paper_grid/1"

DATASETS = ("pneumoniamnist", "breastmnist", "chest_xray_224")
MODELS = ("vgg19", "resnet50", "vit_b16")
CRITERIA = ("lrp", "dlb", "ig", "magnitude", "random", "taylor")
SAMPLINGS = ("confidence", "random", "clustering")
RATIOS = (0.15, 0.3, 0.5, 0.7)
# chest_xray_224 is 224 px JPEG; the CPU-scale study loads it small (the models train at 32 px anyway)
DEFAULT_LOAD_SIZE = {"chest_xray_224": 64}


@dataclass
class Sizes:
    """Everything besides the grid axes that changes a cell's result (all of it is in the cell key)."""

    n_per_class: int = 10
    pool_per_class: int | None = 300  # candidates per class for confidence/clustering (None: whole train split)
    fidelity_images: int = 16
    figure_images: int = 4
    top_fraction: float = 0.1
    test_limit: int | None = None  # stratified test subset (None: the whole split)
    val_limit: int | None = 256  # the lossless search evaluates val ~7 times per cell
    # prune_eval.find_lossless: accuracy may drop <= tolerance points and no class sensitivity by more
    # than sens_tolerance points (on val); a coarse scan then bisection on a resolution grid. At CPU
    # scale a 0.25 scan + 0.05 grid (~7 val evaluations) replaces the library's 0.1/0.01 (~14): the
    # paper's claims are 10-point ranges.
    lossless_tolerance: float = 1.0
    lossless_sens_tolerance: float = 2.0
    lossless_resolution: float = 0.05
    lossless_coarse_step: float = 0.25
    scope: str = "global"
    normalize: str | None = None
    batch_size: int = 128
    seed: int = 0


@dataclass
class Grid:
    datasets: list[str] = field(default_factory=lambda: ["pneumoniamnist"])
    models: list[str] = field(default_factory=lambda: list(MODELS))
    criteria: list[str] = field(default_factory=lambda: list(CRITERIA))
    samplings: list[str] = field(default_factory=lambda: list(SAMPLINGS))
    ratios: list[float] = field(default_factory=lambda: list(RATIOS))
    sizes: Sizes = field(default_factory=Sizes)
    load_sizes: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_LOAD_SIZE))
    checkpoints: dict[str, str] = field(default_factory=dict)  # "dataset:model" -> checkpoint path
    train_subset: int | None = 2000  # train-split cap for checkpoints the grid has to train itself
    train: bool = True  # False: pairs without a checkpoint are reported as not run
    # IG's default "layer" path runs one IG per unit layer (53 for ResNet50): hours on CPU. The "input"
    # path (layer conductance along the image path) scores every layer in n_steps passes.
    criterion_options: dict[str, dict] = field(default_factory=lambda: {"ig": {"path": "input"}})
    data_dir: str | None = None

    def validate(self) -> None:
        from toolchain.importance import available, get_criterion

        known = set(available())
        for c in self.criteria:
            if c not in known:
                raise ConfigError(f"unknown criterion {c!r}; choose from {', '.join(sorted(known))}")
            get_criterion(c, **self.criterion_options.get(c, {}))  # bad options fail before any work
        for s in self.samplings:
            if s not in SAMPLINGS:
                raise ConfigError(f"unknown sampling {s!r}; choose from {', '.join(SAMPLINGS)}")
        for r in self.ratios:
            if not 0 < r < 1:
                raise ConfigError(f"pruning ratios must lie in (0, 1), got {r}")
        if not (self.datasets and self.models and self.criteria and self.samplings):
            raise ConfigError("every grid axis needs at least one value")


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


# ---------------------------------------------------------------- checkpoints


def _baseline_configs(path: Path | None = None) -> list[dict]:
    """Entries of baselines.json that name a model and dataset (checkpoint path and/or train config)."""
    path = path or RESULTS / "baselines.json"
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        return []
    found: list[dict] = []

    def walk(node):
        if isinstance(node, dict):
            cfg = node.get("train_config") or node.get("config")
            cfg = cfg if isinstance(cfg, dict) else None
            model = node.get("model") or (cfg or {}).get("model")
            data_name = node.get("data") or node.get("dataset") or (cfg or {}).get("data")
            if isinstance(data_name, dict):
                data_name = data_name.get("name")
            if isinstance(model, str) and isinstance(data_name, str) and (cfg or node.get("checkpoint")):
                found.append({"model": model, "data": data_name, "train_config": cfg, "origin": "baselines.json",
                              "checkpoint": node.get("checkpoint") or node.get("checkpoint_path")})
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(data)
    return found


def _baseline_runs() -> list[dict]:
    """The baseline configs of ``benchmarks.studies.baselines`` (used until baselines.json has been written)."""
    try:
        from ..baselines import RUNS, make_config
    except ImportError:
        return []
    out = []
    for key in RUNS:
        cfg = make_config(key)
        out.append({"model": cfg.model, "data": cfg.data, "train_config": cfg.to_dict(), "checkpoint": None,
                    "origin": "benchmarks.studies.baselines.RUNS"})
    return out


def _dataset_matches(entry_data: str, dataset: str) -> bool:
    """``breastmnist_64`` (a baseline trained on the 64 px release) serves the grid's ``breastmnist``."""
    a, b = Path(str(entry_data)).stem, Path(dataset).stem
    return a == b or a.startswith(b + "_")


def train_config_for(dataset: str, model: str, grid: Grid):
    """The TrainConfig of a (dataset, model) and where it came from.

    The baseline's config when baselines.json (or ``benchmarks.studies.baselines.RUNS``) has this pair; else the
    baseline hyperparameters of the
    same model on another dataset with this dataset swapped in (``grid.train_subset`` caps its train
    split, so e.g. chest_xray_224 trains in CPU time); else TrainConfig defaults, also capped.
    """
    from toolchain.train import TrainConfig

    fields = set(TrainConfig.__dataclass_fields__)
    entries = [e for e in _baseline_configs() + _baseline_runs() if e["model"] == model and e["train_config"]]
    exact = [e for e in entries if _dataset_matches(e["data"], dataset)]
    if exact:
        cfg = {k: v for k, v in exact[0]["train_config"].items() if k in fields}
        cfg.update(model=model, quiet=True, device="cpu")
        return TrainConfig(**cfg), exact[0]["origin"]
    overrides = dict(data=dataset, load_size=grid.load_sizes.get(dataset), data_dir=grid.data_dir, quiet=True,
                     device="cpu", train_subset=grid.train_subset)
    if entries:
        cfg = {k: v for k, v in entries[0]["train_config"].items() if k in fields}
        cfg.update(model=model, **overrides)
        return TrainConfig(**cfg), f"{entries[0]['origin']} hyperparameters of {model} on {entries[0]['data']}"
    return TrainConfig(model=model, **overrides), "TrainConfig defaults"


def _baseline_checkpoint(dataset: str, model: str) -> str | None:
    for entry in _baseline_configs():
        if entry["model"] == model and _dataset_matches(entry["data"], dataset) and entry.get("checkpoint"):
            if Path(entry["checkpoint"]).exists():
                return entry["checkpoint"]
    return None


def checkpoint_for(dataset: str, model: str, given: dict[str, str] | None = None) -> str:
    """``given["DATASET:MODEL"]`` or the trained baseline's checkpoint; ConfigError naming the fix otherwise."""
    path = (given or {}).get(f"{dataset}:{model}") or _baseline_checkpoint(dataset, model)
    if not path:
        raise ConfigError(f"no checkpoint for {dataset}:{model}: train the baseline (python -m benchmarks.studies.baselines) "
                          f"or pass --checkpoint {dataset}:{model}=PATH")
    return str(path)


def _cached_checkpoint(cfg) -> Path | None:
    """The checkpoint toolchain.train would return for ``cfg`` if it was trained before, else None."""
    from toolchain.data import load_dataset
    from toolchain.train import checkpoint_dir

    ds = load_dataset(cfg.data, cfg.data_dir, load_size=cfg.load_size, val_fraction=cfg.val_fraction, seed=cfg.seed,
                      progress=False)
    weights = checkpoint_dir(cfg, ds.name, ds.fingerprint) / "model.safetensors"
    return weights if weights.exists() else None


def train_task(cfg_dict: dict, cache_root: str) -> str:
    from toolchain.train import TrainConfig, train

    from .cell import single_thread

    # the driver's checkpoint cache, whatever directory Ray started this worker in
    os.environ["MEDPRUNE_CACHE"] = cache_root
    single_thread()
    return str(train(TrainConfig(**cfg_dict)))


def checkpoint_info(path: str | os.PathLike, source: str) -> dict:
    """What cells need from a checkpoint: its sha256, preprocess, how its data was loaded."""
    from toolchain.models import read_sidecar

    weights, side = read_sidecar(path)
    meta = side["meta"]
    cfg = meta.get("train_config") or {}
    return {
        "checkpoint": str(weights),
        "sha256": side.get("weights_sha256"),
        "source": source,
        "arch": meta.get("arch"),
        "img_size": meta.get("img_size"),
        "preprocess": meta["preprocess"],
        "load_size": cfg.get("load_size"),
        "val_fraction": cfg.get("val_fraction", 0.1),
        "data_seed": cfg.get("seed", 0),
        "fingerprint": (meta.get("dataset") or {}).get("fingerprint"),
        "train_metrics": meta.get("metrics"),
        "train_config": cfg,
    }


# ---------------------------------------------------------------- cache


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
        except json.JSONDecodeError:
            return None  # cannot happen with atomic writes, but a damaged entry is recomputed, not trusted

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


def _key_of(spec: dict, kind: str, sha: str, extra: dict) -> str:
    # paths and batch size do not change results; the checkpoint's sha256 and data fingerprint do
    ignore = {"checkpoint", "data_dir", "batch_size", "dense", "reference_indices"}
    return digest({"kind": kind, "version": CELL_VERSION, "sha256": sha,
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


# ---------------------------------------------------------------- Ray


def start_ray(num_cpus: int | None = None):
    import ray

    if ray.is_initialized():
        return ray
    address = os.environ.get("RAY_ADDRESS", "").strip()
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus or len(os.sched_getaffinity(0)), include_dashboard=False, log_to_driver=False)
    return ray


def _remote(ray, fn):
    return ray.remote(num_cpus=1, max_retries=0)(fn)


# ---------------------------------------------------------------- the sweep


@dataclass
class CellId:
    dataset: str
    model: str
    criterion: str
    sampling: str

    def label(self) -> str:
        return f"{self.dataset}/{self.model}/{self.criterion}/{self.sampling}"


def expand(grid: Grid) -> list[CellId]:
    return [CellId(d, m, c, s) for d in grid.datasets for m in grid.models for c in grid.criteria
            for s in grid.samplings]


# rough single-thread cost of one evaluation image at 32 px (measured on the dev machine): the costliest
# cells are submitted first so that the last cells running in parallel are short ones
_COST = {"vgg19": 3.0, "vit_b16": 2.0, "resnet50": 1.0}


def submission_order(cells: list[CellId]) -> list[CellId]:
    return sorted(cells, key=lambda c: -_COST.get(c.model, 1.5))


def run_grid(grid: Grid, *, cache_root: Path | None = None, num_cpus: int | None = None, console=None,
             command: str | None = None) -> dict:
    """Run (or resume) the sweep; returns the assembled results (not yet written)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from toolchain import settings

    grid.validate()
    console = console or Console(stderr=True)
    cache = Cache(cache_root or default_cache_root())
    t_start = time.perf_counter()
    ray = start_ray(num_cpus)
    train_r, dense_r, ref_r, cell_r = (_remote(ray, f) for f in (train_task, dense_task, reference_task, cell_entry))
    counts = {"computed": 0, "cached": 0, "failed": 0}

    # 1. checkpoints (cached training; independent per (dataset, model), so they run in parallel)
    infos: dict[tuple[str, str], dict] = {}
    failures: list[dict] = []
    pending_train = {}
    for d in grid.datasets:
        for m in grid.models:
            given = grid.checkpoints.get(f"{d}:{m}") or _baseline_checkpoint(d, m)
            if given:
                infos[(d, m)] = checkpoint_info(given, "given" if grid.checkpoints.get(f"{d}:{m}") else "baselines.json")
                continue
            cfg, source = train_config_for(d, m, grid)
            if not grid.train:
                cached = _cached_checkpoint(cfg)
                if cached is None:
                    failures.append({"cell": f"{d}/{m}", "stage": "train", "error": "no trained checkpoint "
                                     "(--no-train)"})
                    continue
                infos[(d, m)] = checkpoint_info(cached, f"toolchain.train cache ({source})")
                continue
            console.print(f"[dim]checkpoint {d}/{m}: toolchain.train ({source}; cached when trained before)[/]")
            pending_train[train_r.remote(cfg.to_dict(), str(settings.cache_dir()))] = (d, m, source)
    for ref, (d, m, source) in pending_train.items():
        try:
            infos[(d, m)] = checkpoint_info(ray.get(ref), f"toolchain.train ({source})")
        except Exception as exc:  # one model that cannot train does not sink the sweep
            failures.append({"cell": f"{d}/{m}", "stage": "train", "error": _err(exc)})
            console.print(f"[red]training {d}/{m} failed: {_err(exc)}[/]")

    # 2. shared prep (dense metrics, reference indices) and 3. cells; cells take prep results as
    # ObjectRefs, so Ray starts a cell as soon as its prep is done (no barrier between phases)
    dense: dict[tuple[str, str], tuple[str, Any]] = {}
    refs: dict[tuple[str, str, str], tuple[str, Any]] = {}
    data_free = {c: not needs_data(c) for c in grid.criteria}

    def cached_or_submit(kind: str, key: str, fn, *args):
        hit = cache.get(kind, key)
        if hit is not None:
            return hit, True
        return fn.remote(*args), False

    for (d, m), info in infos.items():
        key, spec = dense_spec(d, info, grid)
        value, _ = cached_or_submit("dense", key, dense_r, spec)
        dense[(d, m)] = (key, value)
        for s in grid.samplings:
            if all(data_free.values()):
                break
            key, spec = reference_spec(d, info, s, grid)
            value, _ = cached_or_submit("reference", key, ref_r, spec)
            refs[(d, m, s)] = (key, value)

    cell_keys: dict[str, str] = {}  # CellId.label() -> cell key
    jobs: dict[Any, tuple[str, str, str]] = {}  # ObjectRef -> (key, label, kind)
    prep_jobs: dict[Any, tuple[str, str]] = {}
    submitted: set[str] = set()
    for kind, table in (("dense", dense), ("reference", refs)):
        for key, value in table.values():
            if not isinstance(value, dict):
                prep_jobs[value] = (kind, key)

    for cid in submission_order(expand(grid)):
        info = infos.get((cid.dataset, cid.model))
        if info is None:
            continue
        free = data_free[cid.criterion]
        sampling = None if free else cid.sampling
        ref_key, ref_value = (None, None) if free else refs[(cid.dataset, cid.model, cid.sampling)]
        dense_key, dense_value = dense[(cid.dataset, cid.model)]
        key, spec = cell_spec(cid.dataset, cid.model, cid.criterion, sampling, info, grid, ref_key, dense_key)
        cell_keys[cid.label()] = key
        if key in submitted or cache.get("cells", key) is not None:
            if key not in submitted:
                counts["cached"] += 1
                submitted.add(key)
            continue
        submitted.add(key)
        jobs[cell_r.remote(spec, dense_value, ref_value)] = (key, cid.label(), "cells")

    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[status]}")]
    n_unique = len(set(cell_keys.values()))
    console.print(f"{len(cell_keys)} grid cells, {n_unique} distinct (data-free criteria ignore the sampling): "
                  f"{counts['cached']} cached, {len(jobs)} to compute")
    try:
        with Progress(*columns, console=console, transient=False) as progress:
            bar = progress.add_task("paper grid cells", total=n_unique, completed=counts["cached"],
                                    status=f"{counts['cached']} cached")
            waiting = {**{r: v for r, v in prep_jobs.items()}, **jobs}
            while waiting:
                # a timeout keeps the loop in Python, so Ctrl-C interrupts the sweep promptly
                done, _ = ray.wait(list(waiting), num_returns=1, timeout=1.0)
                if not done:
                    continue
                ref = done[0]
                meta = waiting.pop(ref)
                if ref in prep_jobs:
                    kind, key = meta
                    try:
                        cache.put(kind, key, ray.get(ref))
                    except Exception as exc:
                        failures.append({"cell": key[:12], "stage": kind, "error": _err(exc)})
                        console.print(f"[red]{kind} {key[:12]} failed: {_err(exc)}[/]")
                    continue
                key, label, _ = meta
                try:
                    result = ray.get(ref)
                    cache.put("cells", key, result)
                    counts["computed"] += 1
                    progress.console.log(f"{label}: lossless {result['lossless']['ratio']:.2f}, "
                                         f"{result['timings']['total_s']:.0f}s")
                except Exception as exc:
                    counts["failed"] += 1
                    failures.append({"cell": label, "stage": "cell", "error": _err(exc)})
                    progress.console.log(f"[red]{label} failed: {_err(exc)}[/]")
                progress.update(bar, advance=1, status=f"{counts['cached']} cached, {counts['computed']} computed"
                                + (f", {counts['failed']} failed" if counts["failed"] else ""))
    except BaseException:
        # Ctrl-C, or SIGTERM (Ray's driver handler turns it into SystemExit): finished cells are cached;
        # the interrupted invocation still counts toward the sweep's wall time
        _record_run(cache, grid, time.perf_counter() - t_start, {**counts, "interrupted": True}, command)
        raise

    wall = time.perf_counter() - t_start
    return assemble(grid, cache, infos, dense, refs, cell_keys, failures, counts, wall, command)


def cell_entry(spec: dict, dense_value: dict, ref_value) -> dict:
    """The Ray entry point of a cell: prep results arrive resolved (Ray resolves ObjectRef arguments)."""
    indices = ref_value["indices"] if isinstance(ref_value, dict) else ref_value
    return cell_task({**spec, "dense": dense_value, "reference_indices": indices})


def _err(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"[:300]


def assemble(grid: Grid, cache: Cache, infos, dense, refs, cell_keys, failures, counts, wall, command) -> dict:
    """The results JSON: config, checkpoints with dense metrics, one entry per grid cell."""
    models: dict[str, dict] = {}
    for (d, m), info in infos.items():
        key = dense[(d, m)][0]
        models.setdefault(d, {})[m] = {**{k: info[k] for k in ("checkpoint", "sha256", "source", "arch", "img_size",
                                                               "load_size", "train_config")},
                                       "dense": cache.get("dense", key), "dense_key": key}
    references = {}
    for (d, m, s), (key, _) in refs.items():
        value = cache.get("reference", key)
        references.setdefault(d, {}).setdefault(m, {})[s] = value
    data_free = {c: not needs_data(c) for c in grid.criteria}
    cells = []
    for cid in expand(grid):
        key = cell_keys.get(cid.label())
        cells.append({**asdict(cid), "key": key, "data_free": data_free[cid.criterion],
                      "result": cache.get("cells", key) if key else None})
    history = _record_run(cache, grid, wall, counts, command)
    return {
        "schema": SCHEMA,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "grid": {"datasets": grid.datasets, "models": grid.models, "criteria": grid.criteria,
                 "samplings": grid.samplings, "ratios": grid.ratios, "load_sizes": grid.load_sizes,
                 "criterion_options": grid.criterion_options},
        "sizes": asdict(grid.sizes),
        "wall_s": round(wall, 1),
        "counts": counts,
        "runs": history,
        "runs_by_dataset": runs_by_dataset(cache, grid),
        "machine": _machine(),
        "models": models,
        "references": references,
        "cells": cells,
        "failures": failures,
        "cache_root": str(cache.root),
    }


def _runs_path(cache: Cache, grid: Grid) -> Path:
    key = digest({"grid": asdict(grid) | {"checkpoints": sorted(grid.checkpoints)}})[:16]
    return cache.root / "runs" / f"{key}.json"


def read_runs(cache: Cache, grid: Grid) -> list[dict]:
    path = _runs_path(cache, grid)
    return json.loads(path.read_text()) if path.is_file() else []


def _record_run(cache: Cache, grid: Grid, wall: float, counts: dict, command: str | None) -> list[dict]:
    """Append this invocation to the grid's run log (resumed sweeps sum their invocations' wall time)."""
    runs = read_runs(cache, grid)
    runs.append({"finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                 "wall_s": round(wall, 1), **counts, "command": command})
    with atomic_file(_runs_path(cache, grid), "w") as fh:
        json.dump(runs, fh, indent=1)
    return runs


def runs_by_dataset(cache: Cache, grid: Grid) -> dict[str, list[dict]]:
    """Invocations of the one-dataset grids (same other axes): a dataset swept on its own keeps its wall time."""
    import dataclasses

    if len(grid.datasets) < 2:
        return {}
    return {d: read_runs(cache, dataclasses.replace(grid, datasets=[d])) for d in grid.datasets}


def _machine() -> dict:
    import platform

    import torch

    try:
        import ray

        ray_version = ray.__version__
        resources = ray.cluster_resources() if ray.is_initialized() else {}
    except ImportError:
        ray_version, resources = None, {}
    return {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
            "affinity": len(os.sched_getaffinity(0)), "torch": torch.__version__, "ray": ray_version,
            "ray_cpus": resources.get("CPU"), "ray_address": os.environ.get("RAY_ADDRESS") or "local"}


def write_results(results: dict, out_dir: Path = RESULTS, name: str = "paper_grid") -> Path:
    from .report import write_report

    out_dir = Path(out_dir)
    with atomic_file(out_dir / f"{name}.json", "w") as fh:
        json.dump(results, fh, indent=1, default=_json_default)
    return write_report(results, out_dir, name=name, heatmap_loader=Cache(Path(results["cache_root"])).heatmaps)


# ---------------------------------------------------------------- CLI


def _csv(text: str | None, default, cast=str) -> list:
    if text is None:
        return list(default)
    return [cast(t.strip()) for t in text.split(",") if t.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.studies.paper.grid", description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", help=f"comma list (default pneumoniamnist; all: {','.join(DATASETS)})")
    p.add_argument("--models", help=f"comma list (default {','.join(MODELS)})")
    p.add_argument("--criteria", help=f"comma list (default {','.join(CRITERIA)})")
    p.add_argument("--samplings", help=f"comma list (default {','.join(SAMPLINGS)})")
    p.add_argument("--ratios", help=f"comma list (default {','.join(map(str, RATIOS))})")
    sizes = Sizes()
    p.add_argument("--n-per-class", type=int, default=sizes.n_per_class)
    p.add_argument("--pool-per-class", type=int, default=sizes.pool_per_class,
                   help="reference candidates per class for confidence/clustering (0: whole train split)")
    p.add_argument("--fidelity-images", type=int, default=sizes.fidelity_images)
    p.add_argument("--figure-images", type=int, default=sizes.figure_images)
    p.add_argument("--test-limit", type=int, default=None, help="stratified test subset (default/0: whole split)")
    p.add_argument("--val-limit", type=int, default=sizes.val_limit, help="stratified val subset (0: whole split)")
    p.add_argument("--lossless-tolerance", type=float, default=sizes.lossless_tolerance,
                   help="accuracy drop allowed at the lossless ratio, in points (on val)")
    p.add_argument("--lossless-sens-tolerance", type=float, default=sizes.lossless_sens_tolerance,
                   help="per-class sensitivity drop allowed, in points (on val)")
    p.add_argument("--lossless-resolution", type=float, default=sizes.lossless_resolution)
    p.add_argument("--lossless-coarse-step", type=float, default=sizes.lossless_coarse_step)
    p.add_argument("--load-size", action="append", default=[], metavar="DATASET=PX",
                   help="load size per dataset (default chest_xray_224=64)")
    p.add_argument("--checkpoint", action="append", default=[], metavar="DATASET:MODEL=PATH")
    p.add_argument("--train-subset", type=int, default=Grid().train_subset,
                   help="train images for checkpoints without a baseline (0: whole split)")
    p.add_argument("--no-train", action="store_true",
                   help="skip (dataset, model) pairs without a trained checkpoint instead of training them")
    p.add_argument("--option", action="append", default=[], metavar="CRITERION:KEY=VALUE",
                   help="criterion option (default ig:path=input), e.g. ig:n_steps=16")
    p.add_argument("--seed", type=int, default=sizes.seed)
    p.add_argument("--num-cpus", type=int, default=None, help="local Ray CPUs (default: this process's cores)")
    p.add_argument("--cache", type=Path, default=None, help="cell cache root (default $MEDPRUNE_CACHE/paper_grid)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--report-only", action="store_true", help="re-render the report from --out's JSON")
    return p.parse_args(argv)


def grid_from_args(a: argparse.Namespace) -> Grid:
    load_sizes = dict(DEFAULT_LOAD_SIZE)
    for item in a.load_size:
        name, _, px = item.partition("=")
        if not px.isdigit():
            raise ConfigError(f"--load-size expects DATASET=PX, got {item!r}")
        load_sizes[name] = int(px)
    checkpoints = {}
    for item in a.checkpoint:
        cell, sep, path = item.partition("=")
        if not sep or ":" not in cell:
            raise ConfigError(f"--checkpoint expects DATASET:MODEL=PATH, got {item!r}")
        checkpoints[cell] = path
    options = Grid().criterion_options
    for item in a.option:
        crit, sep, rest = item.partition(":")
        key, eq, raw = rest.partition("=")
        if not sep or not eq or not key:
            raise ConfigError(f"--option expects CRITERION:KEY=VALUE, got {item!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        options.setdefault(crit, {})[key] = value
    sizes = Sizes(n_per_class=a.n_per_class, pool_per_class=a.pool_per_class or None,
                  fidelity_images=a.fidelity_images, figure_images=a.figure_images, test_limit=a.test_limit or None,
                  val_limit=a.val_limit or None, lossless_tolerance=a.lossless_tolerance,
                  lossless_sens_tolerance=a.lossless_sens_tolerance, lossless_resolution=a.lossless_resolution,
                  lossless_coarse_step=a.lossless_coarse_step, seed=a.seed)
    return Grid(datasets=_csv(a.datasets, ["pneumoniamnist"]), models=_csv(a.models, MODELS),
                criteria=_csv(a.criteria, CRITERIA), samplings=_csv(a.samplings, SAMPLINGS),
                ratios=_csv(a.ratios, RATIOS, float), sizes=sizes, load_sizes=load_sizes, checkpoints=checkpoints,
                train_subset=a.train_subset or None, train=not a.no_train, criterion_options=options)


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    console = Console(stderr=True)
    command = "python -m benchmarks.studies.paper.grid " + " ".join(shlex.quote(x) for x in (argv if argv is not None
                                                                                    else sys.argv[1:]))
    try:
        a = parse_args(argv)
        if a.report_only:
            results = json.loads((a.out / "paper_grid.json").read_text())
        else:
            grid = grid_from_args(a)
            results = run_grid(grid, cache_root=a.cache, num_cpus=a.num_cpus, console=console, command=command)
        report = write_results(results, a.out)
    except MedpruneError as exc:
        console.print(f"[red]error:[/] {exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: finished cells are cached; rerun the same command to resume[/]")
        return 130
    except SystemExit as exc:
        if exc.code != signal.SIGTERM:  # Ray's driver turns SIGTERM into sys.exit(15)
            raise
        console.print("[yellow]terminated: finished cells are cached; rerun the same command to resume[/]")
        return 143
    console.print(f"report: {report}  ({results['counts']} in {results['wall_s']:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
