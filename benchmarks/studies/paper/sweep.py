"""Running a paper-grid sweep on Ray: checkpoints, then shared prep (dense metrics, reference indices),
then one task per cell, each stored by the driver as it finishes (so an interrupted sweep resumes), and
the results JSON assembled from the store."""

from __future__ import annotations

import datetime as _dt
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from toolchain.atomic import atomic_file
from toolchain.pipeline import digest

from ..registry import RESULTS
from .cache import (
    Cache,
    Task,
    _json_default,
    cell_spec,
    default_cache_root,
    dense_spec,
    heatmap_loader,
    needs_data,
    reference_spec,
)
from .cell import cell_task, dense_task, reference_task
from .checkpoints import (
    _baseline_checkpoint,
    _cached_checkpoint,
    checkpoint_info,
    train_config_for,
    train_task,
)
from .config import SCHEMA, Grid


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

    def cached_or_submit(task: Task, fn, *args):
        hit = cache.get(task)
        if hit is not None:
            return hit, True
        return fn.remote(*args), False

    for (d, m), info in infos.items():
        task, spec = dense_spec(d, info, grid)
        value, _ = cached_or_submit(task, dense_r, spec)
        dense[(d, m)] = (task, value)
        for s in grid.samplings:
            if all(data_free.values()):
                break
            task, spec = reference_spec(d, info, s, grid)
            value, _ = cached_or_submit(task, ref_r, spec)
            refs[(d, m, s)] = (task, value)

    cell_keys: dict[str, Task] = {}  # CellId.label() -> its cell task
    jobs: dict[Any, tuple[Task, str]] = {}  # ObjectRef -> (cell task, label)
    prep_jobs: dict[Any, tuple[str, str]] = {}
    submitted: set[str] = set()
    for table in (dense, refs):
        for task, value in table.values():
            if not isinstance(value, dict):
                prep_jobs[value] = task

    for cid in submission_order(expand(grid)):
        info = infos.get((cid.dataset, cid.model))
        if info is None:
            continue
        free = data_free[cid.criterion]
        sampling = None if free else cid.sampling
        ref_task, ref_value = (None, None) if free else refs[(cid.dataset, cid.model, cid.sampling)]
        dense_task_, dense_value = dense[(cid.dataset, cid.model)]
        task, spec = cell_spec(cid.dataset, cid.model, cid.criterion, sampling, info, grid,
                               ref_task.id if ref_task else None, dense_task_.id)
        cell_keys[cid.label()] = task
        if task in submitted or cache.get(task) is not None:
            if task not in submitted:
                counts["cached"] += 1
                submitted.add(task)
            continue
        submitted.add(task)
        jobs[cell_r.remote(spec, dense_value, ref_value)] = (task, cid.label())

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
                    try:
                        cache.put(meta, ray.get(ref))
                    except Exception as exc:
                        failures.append({"cell": meta.id[:12], "stage": meta.kind, "error": _err(exc)})
                        console.print(f"[red]{meta.kind} {meta.id[:12]} failed: {_err(exc)}[/]")
                    continue
                task, label = meta
                try:
                    result = ray.get(ref)
                    cache.put(task, result)
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
        task = dense[(d, m)][0]
        models.setdefault(d, {})[m] = {**{k: info[k] for k in ("checkpoint", "sha256", "source", "arch", "img_size",
                                                               "load_size", "train_config")},
                                       "dense": cache.get(task), "dense_key": task.id}
    references = {}
    for (d, m, s), (task, _) in refs.items():
        value = cache.get(task)
        references.setdefault(d, {}).setdefault(m, {})[s] = value
    data_free = {c: not needs_data(c) for c in grid.criteria}
    cells = []
    for cid in expand(grid):
        task = cell_keys.get(cid.label())
        cells.append({**asdict(cid), "key": task.id if task else None, "data_free": data_free[cid.criterion],
                      "folder": cache.folder(task) if task else None,
                      "result": cache.get(task) if task else None})
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
    return write_report(results, out_dir, name=name, heatmap_loader=heatmap_loader(results))
