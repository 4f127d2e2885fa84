"""Shared command line of the per-checkpoint diagnostics: which (dataset, model) baselines to study."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from toolchain.atomic import atomic_file
from toolchain.errors import ConfigError

from .paper.checkpoints import checkpoint_for


def add_pair_arguments(p: argparse.ArgumentParser, default_pairs: tuple[str, ...]) -> None:
    p.add_argument("--pairs", default=",".join(default_pairs), help="DATASET:MODEL,... (default: %(default)s)")
    p.add_argument("--checkpoint", action="append", default=[], metavar="DATASET:MODEL=PATH",
                   help="use this checkpoint instead of the trained baseline (repeatable)")


def resolve_pairs(pairs: str, checkpoints: list[str]) -> list[tuple[str, str, str]]:
    """``(dataset, model, checkpoint)`` per pair; ConfigError before any work when one is missing."""
    bad = [item for item in checkpoints if "=" not in item]
    if bad:
        raise ConfigError(f"--checkpoint wants DATASET:MODEL=PATH, got {bad[0]!r}")
    given = dict(item.split("=", 1) for item in checkpoints)
    parsed = [tuple(s.split(":", 1)) for s in pairs.split(",") if s]
    if not parsed or any(len(pair) != 2 for pair in parsed):
        raise ConfigError(f"--pairs wants DATASET:MODEL items, got {pairs!r}")
    return [(d, m, checkpoint_for(d, m, given)) for d, m in parsed]


def publish(out: Path, name: str, report: dict, findings: Callable[[dict], list[str]],
            markdown: Callable[[dict], str], plot: Callable[[dict, Path], None]) -> dict:
    """Add the computed findings, write ``name``.json, .md and .png under ``out`` (each atomically), print
    the findings."""
    report["findings"] = findings(report)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_file(out / f"{name}.json", "w") as fh:
        json.dump(report, fh, indent=1)
    with atomic_file(out / f"{name}.md", "w") as fh:
        fh.write(markdown(report))
    plot(report, out / f"{name}.png")
    for line in report["findings"]:
        print(line)
    return report


def save_png(fig, path: Path, dpi: int = 110) -> None:
    """Tight layout, written atomically, figure closed."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_file(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=dpi)
    plt.close(fig)

