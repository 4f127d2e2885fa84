"""Code versions of the recovery study's cells: recorded in every computed cell, checked on every reuse.

A cell's cache key (``recovery_grid.run_model``) holds ``CELL_VERSION``, the checkpoint, criterion, target,
reference images, recovery recipe and threads, but not the code that scored, removed and recovered: keying on
it would discard hours of CPU at every edit. Instead each newly computed cell records
:func:`cell_code_version` (the criterion's module, ``remove_units``, the budget search and the recovery fit,
with the first-party modules of those areas they import), and assembly lists, in ``recovery.md``, every
reused cell whose recorded version differs from today's or that predates the record, so reuse is never
silent. ``--recompute-stale`` recomputes those cells instead.

A criterion's version holds its own code only (``toolchain.pipeline.criterion_source_files``: its module,
``base`` and the helpers it imports, not the other criteria that the registry package reaches), so an edit
to ``ig.py`` leaves the lrp and taylor cells current. Versions recorded before this narrowing hashed every
criterion's module; such cells are listed as computed by an older code version once, until recomputed.

    version = cell_code_version("lrp")
    reason = staleness(cell, version)  # None, "older" or "unrecorded"
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

# the areas whose code decides a cell's numbers (scoring, removal, budget search, recovery fit); modules
# outside them (data loading, reports) are not part of the version
SCOPE = ("toolchain/importance/", "toolchain/removal/", "toolchain/recovery/", "toolchain/budget.py",
         "toolchain/train.py", "toolchain/units.py", "toolchain/masking.py")
UNRECORDED, OLDER = "unrecorded", "older"


def _in_scope(file: Path) -> bool:
    text = file.as_posix()
    return any(f"/{part}" in text if part.endswith("/") else text.endswith(f"/{part}") for part in SCOPE)


@functools.cache
def cell_code_version(criterion: str) -> str:
    """sha256 of the criterion's, removal's and recovery's source (``toolchain.pipeline.code_version``)."""
    from toolchain.budget import search_budget
    from toolchain.importance import available, get_criterion
    from toolchain.pipeline import code_version, criterion_source_files
    from toolchain.recovery import recover_cached
    from toolchain.removal import remove_units

    if criterion not in available():
        raise ValueError(f"unknown criterion {criterion!r}")
    files = criterion_source_files(type(get_criterion(criterion)), remove_units, search_budget, recover_cached)
    return code_version(*[f for f in files if _in_scope(f)])


def staleness(cell: dict, current: str) -> str | None:
    """Why a cached cell was computed by other code than today's (``UNRECORDED``/``OLDER``), or None."""
    recorded = cell.get("code_version")
    if not recorded:
        return UNRECORDED
    return None if recorded == current else OLDER


def stale_entry(data: str, model: str, criterion: str, target: float, cell: dict, reason: str,
                path: Path) -> dict[str, Any]:
    return {"cell": f"{data}/{model}/{criterion}/÷{target:g}", "reason": reason,
            "recorded": (cell.get("code_version") or "")[:12] or None, "file": path.name}


def summary(runs: list[dict]) -> dict[str, Any]:
    """The study's cell-version record: today's version per criterion and every stale reused cell."""
    current: dict[str, str] = {}
    stale: list[dict] = []
    for run in runs:
        current.update(run.get("code_versions") or {})
        stale += run.get("stale_cells") or []
    n = sum(len(run.get("cells") or {}) for run in runs)
    return {"scope": list(SCOPE), "current": {k: v[:12] for k, v in sorted(current.items())}, "cells": n,
            "stale": stale}


def markdown(record: dict) -> str:
    """The ``recovery.md`` section listing reused cells computed by older or unrecorded code."""
    stale = record.get("stale") or []
    head = (f"Each computed cell records the code version (sha256) of the criterion, removal, budget search and "
            f"recovery code ({', '.join(f'`{s}`' for s in record['scope'])}). Of {record['cells']} cells assembled, ")
    if not stale:
        return "\n".join(["## Cell code versions", "", head + "every one was computed by today's code.", ""])
    lines = ["## Cell code versions", "", head + f"{len(stale)} were computed by code other than today's and are "
             "reused as they are (`--recompute-stale` recomputes them):", ""]
    by_reason = {r: [s for s in stale if s["reason"] == r] for r in (UNRECORDED, OLDER)}
    if by_reason[UNRECORDED]:
        lines += [f"- computed before versions were recorded ({len(by_reason[UNRECORDED])}): "
                  + ", ".join(s["cell"] for s in by_reason[UNRECORDED])]
    if by_reason[OLDER]:
        lines += [f"- computed by an older code version ({len(by_reason[OLDER])}): "
                  + ", ".join(f"{s['cell']} ({s['recorded']})" for s in by_reason[OLDER])]
    today = ", ".join(f"{k} `{v}`" for k, v in record["current"].items())
    return "\n".join(lines + ["", f"Today's versions: {today}.", ""])
