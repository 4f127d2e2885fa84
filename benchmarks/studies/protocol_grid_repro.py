"""Reproduce a committed protocol-grid result from the runs it records (one command for a merged run).

    MEDPRUNE_DATA=/work/shared/data medprune study protocol_grid_repro \\
        [--from benchmarks/results/protocol_grid.json] [--out benchmarks/results] [--work DIR] [--dry-run]

A merged ``protocol_grid.json`` records how it was made as ``run && run && ... && merge`` in its
``command`` (``protocol_grid.merge``). This study replays those commands in their order: every run with
its ``--out`` moved under ``--work`` (default ``<cache>/protocol_grid_runs``: the recorded folders were
scratch folders of the machine that made them), then the merge of those folders into ``--out``. Each
run reads its cells from the protocol grid's cache when their key matches (checkpoint, criterion,
settings, device and the code that computes them, ``protocol_grid._cell_key``): on unchanged code
nothing is recomputed; after a code edit the cells whose code changed are computed again, as any
protocol-grid run would.

``--dry-run`` computes and writes nothing: it prints every run with how many of its cells are cached
under today's keys (it reads the checkpoints' sidecars, not their weights), then the merge.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from toolchain.errors import ConfigError

from . import protocol_grid as pg
from .registry import RESULTS, StudyParser, study

PREFIX = ["medprune", "study", "protocol_grid"]


def plan(command: str, work: Path, out: Path) -> tuple[list[list[str]], list[str]]:
    """``(argv of every run, argv of the merge)`` of a recorded ``command``: each run's ``--out`` moved to a
    numbered folder under ``work``, the merge reading those folders and writing ``out``."""
    tokens = shlex.split(command)
    parts, start = [], 0
    for i, tok in enumerate([*tokens, "&&"]):
        if tok == "&&":
            parts.append(tokens[start:i])
            start = i + 1
    if any(p[:3] != PREFIX for p in parts):
        raise ConfigError(f"not a chain of `{' '.join(PREFIX)}` commands: {command[:120]!r}")
    *runs, merge = [p[3:] for p in parts]
    if "--merge" not in merge or any("--merge" in r for r in runs):
        raise ConfigError("the recorded command does not end with its one --merge (a single run: rerun its command)")
    moved: dict[str, str] = {}
    for i, argv in enumerate(runs):
        old = _value(argv, "--out")
        moved[old] = str(work / f"{i:02d}-{Path(old).name}")
        argv[argv.index("--out") + 1] = moved[old]
    at = merge.index("--merge") + 1
    end = next((j for j in range(at, len(merge)) if merge[j].startswith("--")), len(merge))
    unknown = [d for d in merge[at:end] if d not in moved]
    if unknown:
        raise ConfigError(f"the merge reads {', '.join(unknown)}, which no run of the command writes")
    merge = [*merge[:at], *(moved[d] for d in merge[at:end]), *merge[end:]]
    if "--out" in merge:
        merge[merge.index("--out") + 1] = str(out)
    else:
        merge += ["--out", str(out)]
    return runs, merge


def _value(argv: list[str], flag: str) -> str:
    if flag not in argv or argv.index(flag) + 1 >= len(argv):
        raise ConfigError(f"a recorded run has no {flag} DIR: {shlex.join(argv)[:120]}")
    return argv[argv.index(flag) + 1]


def cached_cells(argv: list[str]) -> tuple[int, int]:
    """``(cached, total)`` cells of one run under today's keys, computing nothing."""
    from toolchain.models import recorded_sha256

    a = pg.parse_args(argv)
    keys = [k for _, path in a.checkpoints for name in a.criteria
            for k in pg.cell_keys(recorded_sha256(path), name, a, pg.DEVICE)[1].values()]
    return sum(pg._cache_get(k) is not None for k in keys), len(keys)


@study("protocol_grid_repro")
def main(argv: list[str] | None = None) -> int:
    from toolchain import settings

    p = StudyParser("protocol_grid_repro", __doc__)
    p.add_argument("--from", dest="source", type=Path, default=RESULTS / "protocol_grid.json",
                   help="the merged protocol_grid.json whose runs are replayed")
    p.add_out()
    p.add_argument("--work", type=Path, default=None, help="folder of the runs' outputs [<cache>/protocol_grid_runs]")
    p.add_argument("--dry-run", action="store_true", help="list the runs and their cached cells; compute nothing")
    a = p.parse_args(list(argv or []))
    if not a.source.is_file():
        raise ConfigError(f"--from: {a.source} not found")

    command = json.loads(a.source.read_text()).get("command") or ""
    runs, merge = plan(command, a.work or settings.cache_dir() / "protocol_grid_runs", a.out)
    for i, run in enumerate(runs, 1):
        line = f"[{i}/{len(runs)}] medprune study protocol_grid {shlex.join(run)}"
        if a.dry_run:
            cached, total = cached_cells(run)
            print(f"{line}\n    {cached} of {total} cells cached under today's keys", flush=True)
        else:
            print(line, flush=True)
            pg.main(run)
    print(f"merge: medprune study protocol_grid {shlex.join(merge)}", flush=True)
    return 0 if a.dry_run else pg.main(merge)
