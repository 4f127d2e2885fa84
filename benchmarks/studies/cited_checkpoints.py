"""Every checkpoint the committed results cite, with the ``medprune train`` command that retrains it.

``make baselines`` (``medprune study baselines_cpu``) trains its own runs (the hyper-parameter policy and
the CPU grid) and then these: a committed result cites a checkpoint by its weights sha256 (key
``checkpoint_sha256``, ``weights_sha256``, or ``sha256`` beside ``checkpoint``), and the command comes
from the same file (``train_command``, or a ``train_config`` turned into the CLI line) or from another
file citing the same sha256. Checkpoints cited only by ``make baselines``' own outputs are made by its
policy and grid runs, so they need no command here.

The training time each checkpoint recorded when it was trained is looked up (its sidecar in the local
cache, else ``baselines.json``'s ``train_wall_s``), so a command that does not retrain them can still
say what retraining them took, and on which device.
"""

from __future__ import annotations

import functools
import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from toolchain.errors import ConfigError

OWN = ("baselines_cpu.json", "hparam_policy.json")  # written by make baselines itself


@dataclass
class Cited:
    sha256: str
    checkpoint: str | None = None
    command: str | None = None
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"sha256": self.sha256, "checkpoint": self.checkpoint, "command": self.command, "files": self.files}


def train_command(cfg: dict) -> str:
    """The ``medprune train`` line of a recorded TrainConfig dict (``baselines.cli_command`` + train subset)."""
    from toolchain.train import TrainConfig

    from .baselines import cli_command

    command = cli_command(TrainConfig(**cfg))
    if cfg.get("train_subset"):  # baselines.cli_command predates train_subset
        command += f" --train-subset {cfg['train_subset']}"
    return command


def scan(results: Path) -> dict[str, Cited]:
    """sha256 -> what the result JSONs under ``results`` say about that checkpoint (files in name order)."""
    if not results.is_dir():
        raise ConfigError(f"results folder {results} not found")
    cited: dict[str, Cited] = {}
    for path in sorted(results.glob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from exc
        for entry in _entries(doc):
            sha = entry.get("checkpoint_sha256") or entry.get("weights_sha256") or entry.get("sha256")
            c = cited.setdefault(sha, Cited(sha))
            c.checkpoint = c.checkpoint or entry.get("checkpoint")
            if c.command is None and path.name not in OWN:
                c.command = entry.get("train_command") or (
                    train_command(entry["train_config"]) if isinstance(entry.get("train_config"), dict) else None)
            if path.name not in c.files:
                c.files.append(path.name)
    return cited


def _entries(node):
    """Every dict in ``node`` that names a checkpoint's weights sha256."""
    if isinstance(node, dict):
        if isinstance(node.get("checkpoint_sha256") or node.get("weights_sha256"), str) or (
                "checkpoint" in node and isinstance(node.get("sha256"), str)):
            yield node
        for v in node.values():
            yield from _entries(v)
    elif isinstance(node, list):
        for v in node:
            yield from _entries(v)


def to_retrain(cited: dict[str, Cited]) -> list[Cited]:
    """The cited checkpoints ``make baselines`` retrains with their own command (not made by its own runs)."""
    return [c for c in cited.values() if not set(c.files) <= set(OWN)]


def uncovered(cited: dict[str, Cited]) -> list[Cited]:
    """Cited checkpoints no command reproduces (a result that cannot be rebuilt from a fresh clone)."""
    return [c for c in to_retrain(cited) if not c.command]


def recorded_training(c: Cited, results: Path) -> dict:
    """What training this checkpoint took when it was trained: seconds, device and where that is read."""
    from toolchain.models import read_sidecar

    path = Path(c.checkpoint) if c.checkpoint else None
    if path is not None and path.is_file():
        try:
            _, side = read_sidecar(path)
        except Exception:  # an unreadable sidecar is a missing record, not a failure of the report
            side = None
        if side and side.get("weights_sha256") == c.sha256:
            train = side["meta"].get("train") or {}
            return {"wall_s": train.get("wall_s"), "device": train.get("device"), "source": "checkpoint sidecar"}
    for r in _baselines_runs(results / "baselines.json"):
        if c.checkpoint and r.get("checkpoint") == c.checkpoint:
            return {"wall_s": r.get("train_wall_s"), "device": r.get("train_device"), "source": "baselines.json"}
    return {"wall_s": None, "device": None, "source": None}


@functools.cache
def _baselines_runs(path: Path) -> list[dict]:
    """``baselines.json``'s runs, read once per process (looked up for every cited checkpoint)."""
    return json.loads(path.read_text()).get("runs", []) if path.is_file() else []


def retrain(c: Cited) -> tuple[Path, str]:
    """Run ``c.command`` (quiet) with this interpreter's ``medprune``; the checkpoint and its weights sha256."""
    from toolchain.models import read_sidecar

    argv = shlex.split(c.command)
    if argv[:2] != ["medprune", "train"]:
        raise ConfigError(f"cited checkpoint {c.sha256[:16]}: not a medprune train command: {c.command!r}")
    exe = Path(sys.executable).with_name("medprune")
    out = subprocess.run([str(exe), *argv[1:], "--quiet"], check=True, capture_output=True, text=True).stdout
    weights = Path(next(ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("checkpoint:")))
    _, side = read_sidecar(weights)
    return weights, side["weights_sha256"]


def section(results: Path, produced: dict[str, str], *, train: bool | tuple[str, ...], log) -> list[dict]:
    """One entry per cited checkpoint: made by this command's own runs (``produced``: sha256 -> run), else
    retrained with its command when ``train`` (True: all; a tuple: those whose sha256 starts with one of its
    prefixes) and compared with the cited sha256, else listed with the training time it recorded."""
    rows = []
    for c in scan(results).values():
        row = {**c.to_dict(), "recorded": recorded_training(c, results), "made_by": produced.get(c.sha256)}
        wanted = train is True or (bool(train) and c.sha256.startswith(tuple(train)))
        if row["made_by"] is None and wanted and c.command and not set(c.files) <= set(OWN):
            log(f"== cited {c.sha256[:16]} ({', '.join(c.files)}): {c.command}")
            t0 = time.perf_counter()
            weights, sha = retrain(c)
            row.update(retrained={"checkpoint": str(weights), "sha256": sha, "seconds": round(time.perf_counter() - t0, 1)})
            log(f"== cited {c.sha256[:16]}: retrained, sha256 {sha[:16]} ({'same' if sha == c.sha256 else 'DIFFERENT'})")
        rows.append(row)
    return rows


def status(row: dict) -> str:
    """How this command stands to one cited checkpoint, in words."""
    if row["made_by"]:
        return f"reproduced (same sha256) by {row['made_by']}"
    if row.get("retrained"):
        same = row["retrained"]["sha256"] == row["sha256"]
        return "retrained, same sha256" if same else f"retrained, DIFFERENT sha256 `{row['retrained']['sha256'][:16]}`"
    if set(row["files"]) <= set(OWN):
        return "NOT reproduced: an earlier run of this command made it; this run's weights differ"
    return "not retrained by this run"


def markdown_lines(rows: list[dict]) -> list[str]:
    """The report's section on the checkpoints the committed results cite."""
    if not rows:
        return []
    same = sum(1 for r in rows if r["made_by"] or (r.get("retrained") or {}).get("sha256") == r["sha256"])
    listed = [r for r in rows if not r["made_by"] and not r.get("retrained") and not set(r["files"]) <= set(OWN)]
    by_device: dict[str, float] = {}
    for r in listed:
        if r["recorded"]["wall_s"] is not None:
            dev = r["recorded"]["device"] or "unknown device"
            by_device[dev] = by_device.get(dev, 0.0) + r["recorded"]["wall_s"] / 60
    lines = ["", "## Checkpoints the committed results cite", "",
             f"{len(rows)} checkpoints are cited by sha256 in `benchmarks/results/*.json` (this command's own "
             f"previous outputs included); **{same} reproduced bit-identically** by this run."]
    if listed:
        lines.append(f"{len(listed)} were not retrained by this run (`--cited list` or `--cited-subset`); the training "
                     "time each recorded when it was trained: " + ", ".join(
                         f"{m:.1f} min on {d}" for d, m in sorted(by_device.items())) + " (different machines and "
                     "loads; a CPU retrain of a checkpoint trained on cuda takes far longer).")
    lines += ["", "| sha256 | cited by | this run | recorded training | command |", "|---|---|---|---|---|"]
    for r in rows:
        rec = r["recorded"]
        took = f"{rec['wall_s']:.0f} s on {rec['device']}" if rec["wall_s"] is not None else "n/a"
        lines.append(f"| `{r['sha256'][:16]}` | {', '.join(r['files'])} | {status(r)} | {took} | "
                     f"{'`' + r['command'] + '`' if r['command'] else 'made by the policy / grid runs'} |")
    return lines
