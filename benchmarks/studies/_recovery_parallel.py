"""The recovery study's cells as Ray tasks (``medprune study recovery --workers N``, N > 1).

The driver prepares every dataset x model as the sequential path does (``recovery_grid.prepare``: the dense
checkpoint, trained here when not given, and the reference images), finds the cells that path would compute
(absent, or stale under ``--recompute-stale``) and submits one Ray task per cell with ``num_cpus=1``. A task
prepares the same model in its worker (kept for that worker's next cell of the model, so a criterion is
scored once per worker, not once per cell) and runs ``recovery_grid.compute_cell``: the cell the sequential
path computes, written to the same cache file (same key, same code-version record). The driver prints one
line per finished cell and each failure with its one-line error; the other cells still finish. The study
then assembles the cache as ``--cached-only`` would (``recovery_grid.main``), or, when a cell failed, writes
no report and exits 1 (the finished cells are cached: a rerun computes only the rest).

Threads: torch runs ``MEDPRUNE_THREADS`` threads per task (default 1); ONNX Runtime latency uses
``--threads`` as in the sequential path (it is part of the cell key). Cells are timed while other cells
run (each cell records the 1-min load average); a later sequential ``--retime`` measures again. The frozen
teacher's logits are memoised per worker process (``toolchain.recovery.distill.TeacherMemo``): an image's
teacher pass runs once per worker that recovers a student of that teacher, not once per run.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from toolchain.errors import ConfigError

_PREPARED: dict[tuple, Any] = {}  # in a worker: the last dataset x model prepared, reused by its next cells


def compute_cells(args: argparse.Namespace, log) -> tuple[argparse.Namespace, int]:
    """Compute the missing cells of ``args`` on Ray; ``(arguments that assemble them, number of failed cells)``.

    The returned arguments are ``args`` with ``--cached-only`` and the resolved dense checkpoints, so the
    assembly reads exactly the cells the tasks wrote and computes (or trains) nothing.
    """
    if args.workers < 2:
        raise ConfigError(f"--workers {args.workers}: the Ray path runs 2 or more workers")
    env = _task_env()
    ray, ours = _start(args.workers)
    started = time.perf_counter()
    try:
        return _submit_and_collect(ray, args, env, log, started)
    finally:
        if ours:  # a Ray the caller started (a test, a notebook) stays up
            ray.shutdown()


def _submit_and_collect(ray, args, env: dict[str, str], log, started: float) -> tuple[argparse.Namespace, int]:
    from toolchain.settings import cache_dir

    from . import _recovery_versions as versions
    from . import recovery_grid as grid

    task = ray.remote(num_cpus=1, max_retries=0)(_cell_task)
    env = {**env, "MEDPRUNE_CACHE": str(cache_dir().resolve()), "code": grid.__file__}
    jobs: dict[Any, str] = {}
    resolved: list[str] = []
    for data in args.data:
        for model in args.models:
            prep = grid.prepare(model, data, args)  # trains the dense model here when it is not given
            given = f"{data}/{model}={prep.weights}"
            resolved.append(given)
            task_args = argparse.Namespace(**{**vars(args), "checkpoint": [given]})
            cells = [(name, target) for name in args.criteria for target in grid.targets_for(model, args, data)]
            todo = [(n, t, p) for n, t in cells
                    if not grid.cached_cell(p := grid.cell_path(prep, data, model, n, t, args),
                                            versions.cell_code_version(n), args)[2]]
            for name, target, path in todo:
                jobs[task.remote(task_args, data, model, name, target, str(path), env)] = \
                    f"{data}/{model} · {name} · ÷{target:g}"
            log(f"{data}/{model}: {len(todo)} cell(s) submitted to {args.workers} Ray workers, "
                f"{len(cells) - len(todo)} cached")
    failed = collect(ray, jobs, log)
    log(f"{len(jobs) - failed} of {len(jobs)} cell(s) computed in {time.perf_counter() - started:.0f}s"
        + (f", {failed} failed" if failed else ""))
    return argparse.Namespace(**{**vars(args), "checkpoint": resolved, "cached_only": True,
                                 "recompute_stale": False}), failed


def collect(ray, jobs: dict[Any, str], log) -> int:
    """Wait for every task, one progress line per finished cell (or its failure); the number that failed."""
    from .paper.sweep import _err

    waiting, failed, total = dict(jobs), 0, len(jobs)
    while waiting:
        # a timeout keeps the loop in Python, so Ctrl-C interrupts promptly (finished cells are already cached)
        done, _ = ray.wait(list(waiting), num_returns=1, timeout=1.0)
        for ref in done:
            label = waiting.pop(ref)
            step = f"[{total - len(waiting)}/{total}] {label}"
            try:
                r = ray.get(ref)
            except Exception as exc:  # one cell that fails does not sink the others
                failed += 1
                log(f"{step}: FAILED: {_err(getattr(exc, 'cause', None) or exc)}")
                continue
            log(f"{step}: ratio {r['ratio']:.2f}, MACs ÷{r['macs_div']:.2f}, ORT speedup ×{r['speedup_ort']:.2f} "
                f"({r['seconds']:.0f}s)")
    return failed


def _cell_task(args: argparse.Namespace, data: str, model: str, name: str, target: float, path: str,
               env: dict[str, str]) -> dict[str, float]:
    """One cell in a Ray worker, computed and written by the sequential path's code."""
    import torch

    from . import _recovery_versions as versions
    from . import recovery_grid as grid

    if grid.__file__ != env["code"]:  # the driver's code (a worker imports from its working folder)
        raise RuntimeError(f"the worker runs {grid.__file__}, the driver {env['code']}: start it from that tree")
    t0 = time.perf_counter()
    os.environ.update({k: v for k, v in env.items() if k.startswith("MEDPRUNE_")})  # a worker outlives a task
    torch.set_num_threads(int(env["MEDPRUNE_THREADS"]))
    key = (data, model, repr(sorted(vars(args).items())))
    if key not in _PREPARED:
        _PREPARED.clear()
        _PREPARED[key] = grid.prepare(model, data, args)
    prep = _PREPARED[key]
    mine = grid.cell_path(prep, data, model, name, target, args)
    if str(mine) != path:  # the worker must see the driver's checkpoint, references and cache
        raise RuntimeError(f"the worker keys this cell as {mine}, the driver as {path}")
    cell = grid.compute_cell(prep, model, name, target, args, versions.cell_code_version(name), mine,
                             lambda msg: print(msg, flush=True))
    return {"ratio": cell["ratio"], "macs_div": cell["macs"]["ratio"], "speedup_ort": cell["speedup_ort"],
            "seconds": time.perf_counter() - t0}


def _task_env() -> dict[str, str]:
    """What a task reads from the environment: its torch threads (``MEDPRUNE_THREADS``, default 1) and data."""
    threads = os.environ.get("MEDPRUNE_THREADS", "").strip() or "1"
    if not threads.isdigit() or int(threads) < 1:
        raise ConfigError(f"MEDPRUNE_THREADS must be a whole number >= 1 (threads per Ray task), got {threads!r}")
    data = os.environ.get("MEDPRUNE_DATA")
    return {"MEDPRUNE_THREADS": threads, **({"MEDPRUNE_DATA": str(Path(data).resolve())} if data else {})}


def _start(workers: int):
    """``(ray, started here)``: Ray with ``workers`` CPUs (``RAY_ADDRESS``: that cluster), or a one-line error."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(f"--workers {workers} needs Ray ({exc}); install ray or run with --workers 1") from None
    from .paper.sweep import _err, start_ray

    ours = not ray.is_initialized()
    try:
        start_ray(workers)
    except Exception as exc:
        raise ConfigError(f"--workers {workers}: Ray did not start: {_err(exc)}") from None
    return ray, ours
