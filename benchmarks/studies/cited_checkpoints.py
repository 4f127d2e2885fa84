"""Every checkpoint the committed results cite, with the ``medprune train`` command that retrains it.

``make baselines`` (``medprune study baselines_cpu``) trains its own runs (the hyper-parameter policy and
the CPU grid) and then these: a committed result cites a checkpoint by its weights sha256 (key
``checkpoint_sha256``, ``weights_sha256``, or ``sha256`` beside ``checkpoint``), and the command comes
from the same file (``train_command``, or a ``train_config`` turned into the CLI line) or from another
file citing the same sha256. Checkpoints cited only by ``make baselines``' own outputs are made by its
policy and grid runs, so they need no command here.

The training time each checkpoint recorded when it was trained is looked up (its sidecar in the local
cache, else ``baselines.json``'s ``train_wall_s``), so a command that does not retrain them can still
say what retraining them took, on which device and with how many threads. A checkpoint trained on another device than this
machine's is not retrained by ``--cited train`` (CPU and CUDA kernels give different weights, so the
retrain could not match; naming it in ``--cited-subset`` retrains it anyway).

A retrain is proved a retrain, not a cache hit: its checkpoint must be another file than the cited one
(run with ``MEDPRUNE_CACHE`` set to an empty folder), and its record says whether this call trained it
or found it in that folder's cache, with the thread count, torch build and cache key it was trained
with, beside the cited checkpoint's (what to suspect when the sha256 differs).

The retrain runs ``medprune train`` as a subprocess (the console script beside the interpreter), which keys
the training cache by the training code it runs: a retrain of a checkpoint made by older training code (or
found in a cache that code filled) must run that code, ``PYTHONPATH`` = an export of the old commit, for both
this command and the subprocess. The thread count is part of the bits: set ``MEDPRUNE_THREADS`` to the one
the checkpoint recorded (stop 17: ``70b56255``/``0d21c92d`` differ at 1 thread, match at their recorded 2).
"""

from __future__ import annotations

import datetime as _dt
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
        if path.name in OWN and isinstance(doc, dict):
            # make baselines' own cited section repeats the others' citations and names its retrained
            # checkpoints: read back, a DIFFERENT retrain would become a cited checkpoint of its own
            doc = {k: v for k, v in doc.items() if k != "cited"}
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

    side = _sidecar(c.checkpoint)
    if side and side.get("weights_sha256") == c.sha256:
        return {**_how_trained(side), "source": "checkpoint sidecar"}
    for r in _baselines_runs(results / "baselines.json"):
        if c.checkpoint and r.get("checkpoint") == c.checkpoint:
            return {"wall_s": r.get("train_wall_s"), "device": r.get("train_device"),
                    "threads": r.get("train_threads"), "source": "baselines.json"}
    return {"wall_s": None, "device": None, "threads": None, "source": None}


def _sidecar(path: str | Path | None) -> dict | None:
    """The checkpoint's sidecar, or None when it is absent or unreadable (a missing record, not a failure)."""
    from toolchain.models import read_sidecar

    if not path or not Path(path).is_file():
        return None
    try:
        return read_sidecar(path)[1]
    except Exception:
        return None


# what a checkpoint's sidecar says about how it was trained (the cache key's hash covers config, data
# fingerprint, device and training-code version)
HOW = ("wall_s", "device", "threads", "torch", "cache_key")


def _how_trained(side: dict) -> dict:
    train = side["meta"].get("train") or {}
    return {k: train.get(k) for k in HOW}


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


def section(results: Path, produced: dict[str, str], *, train: bool | tuple[str, ...], log,
            earlier: list[dict] = (), earlier_by: str | None = None) -> list[dict]:
    """One entry per cited checkpoint: made by this command's own runs (``produced``: sha256 -> run), else
    retrained with its command when ``train`` (True: all trained on this machine's device; a tuple: those
    whose sha256 starts with one of its prefixes) and compared with the cited sha256, else the retrain an
    ``earlier`` section recorded (made by ``earlier_by``), else listed with the training time it recorded."""
    from toolchain import settings

    here = settings.resolve_device("auto")
    before = {r["sha256"]: r["retrained"] for r in earlier if r.get("retrained")}
    rows = []
    for c in scan(results).values():
        row = {**c.to_dict(), "recorded": recorded_training(c, results), "made_by": produced.get(c.sha256)}
        named = bool(train) and train is not True and c.sha256.startswith(tuple(train))
        other_device = row["recorded"]["device"] not in (None, here)
        if row["made_by"] is None and c.command and not set(c.files) <= set(OWN):
            if other_device and not named:
                row["skipped"] = f"trained on {row['recorded']['device']}, this machine trains on {here}"
            if named or (train is True and not other_device):
                log(f"== cited {c.sha256[:16]} ({', '.join(c.files)}): {c.command}")
                t0 = time.time()
                weights, sha = retrain(c)
                row["retrained"] = retrained_record(c, weights, sha, t0)
                log(f"== cited {c.sha256[:16]}: {status(row)}")
            elif c.sha256 in before:
                row["retrained"] = {"by": earlier_by, **before[c.sha256]}
        rows.append(row)
    return rows


def retrained_record(c: Cited, weights: Path, sha: str, t0: float) -> dict:
    """What a retrain of ``c`` (started at ``t0``, epoch seconds) made and how, beside how ``c`` was trained."""
    side, stat = _sidecar(weights), weights.stat() if weights.is_file() else None
    cited = _sidecar(c.checkpoint)
    cited = cited if cited and cited.get("weights_sha256") == c.sha256 else None
    return {"checkpoint": str(weights), "sha256": sha, "seconds": round(time.time() - t0, 1),
            "same_file": bool(c.checkpoint) and stat is not None and Path(c.checkpoint).is_file()
            and weights.resolve() == Path(c.checkpoint).resolve(),
            # an earlier retrain into the same (separate) cache is returned as is: still a retrain, not this call's
            "trained_by_this_call": stat is not None and stat.st_mtime >= t0,
            "written": _dt.datetime.fromtimestamp(stat.st_mtime, _dt.timezone.utc).isoformat(timespec="seconds")
            if stat else None,
            "how": _how_trained(side) if side else None, "cited_how": _how_trained(cited) if cited else None,
            "config_differs": _config_differs(side, cited) if side and cited else None}


# TrainConfig fields that do not change the weights (training's own _NOT_HASHED)
_SAME_WEIGHTS = ("device", "data_dir", "quiet", "allow_missing_class")


def _config_differs(side: dict, cited: dict) -> list[str]:
    """Recorded train_config fields (and the data fingerprint) that differ between two checkpoints."""
    import dataclasses

    from toolchain.train import TrainConfig

    # a field an older checkpoint does not record (ordinal, val_from_train) had its default then
    default = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}
    a, b = side["meta"].get("train_config") or {}, cited["meta"].get("train_config") or {}
    out = sorted(k for k in set(a) | set(b) if k not in _SAME_WEIGHTS and a.get(k, default.get(k)) != b.get(k, default.get(k)))
    if (side["meta"].get("dataset") or {}).get("fingerprint") != (cited["meta"].get("dataset") or {}).get("fingerprint"):
        out.append("dataset fingerprint")
    return out


def differences(retrained: dict) -> list[str]:
    """How the retrain was trained unlike the cited checkpoint (thread count, torch, device, code version)."""
    now, then = retrained.get("how") or {}, retrained.get("cited_how") or {}
    out = [f"{k} {then[k]} -> {now[k]}" for k in ("threads", "torch", "device") if then.get(k) != now.get(k)
           and then.get(k) is not None]
    if retrained.get("config_differs"):
        out.append("recorded config differs: " + ", ".join(retrained["config_differs"]))
    elif then.get("cache_key") and now.get("cache_key") and then["cache_key"] != now["cache_key"]:
        # same config, data and device: the key's remaining input is the training code's version
        out.append("training-code version differs (cache key)")
    return out


def status(row: dict) -> str:
    """How this command stands to one cited checkpoint, in words."""
    if row["made_by"]:
        return f"reproduced (same sha256) by {row['made_by']}"
    r = row.get("retrained")
    if r:
        if r.get("same_file"):
            return "NOT retrained: the training cache returned the cited checkpoint itself (use an empty MEDPRUNE_CACHE)"
        how = r.get("how") or {}
        said = ", ".join(filter(None, [
            f"{how['wall_s']:.0f} s training" if how.get("wall_s") is not None else None,
            f"{how['threads']} thread{'s' if how['threads'] != 1 else ''}" if how.get("threads") else None,
            None if r.get("trained_by_this_call", True) else  # <cache>/checkpoints/<key>/model.safetensors
            f"found in its training cache `{Path(r['checkpoint']).parent.parent.parent}`, written {r.get('written')}",
            "by an earlier run" if r.get("by") else None]))
        said = f" ({said})" if said else ""
        why = differences(r)
        if r["sha256"] == row["sha256"]:  # a difference here did not change the weights
            return f"retrained, same sha256{said}" + (f"; trained unlike the cited one: {'; '.join(why)}" if why else "")
        return (f"retrained, DIFFERENT sha256 `{r['sha256'][:16]}`{said}; trained unlike the cited one: "
                + ("; ".join(why) if why else "no recorded difference (same threads, torch, device, code)"))
    if row.get("skipped"):
        return f"not retrained: {row['skipped']} (a retrain cannot be bit-identical)"
    if set(row["files"]) <= set(OWN):
        return "NOT reproduced: an earlier run of this command made it; this run's weights differ"
    return "not retrained by this run"


def _reproduced(r: dict) -> bool:
    retrained = r.get("retrained") or {}
    return bool(r["made_by"]) or (retrained.get("sha256") == r["sha256"] and not retrained.get("same_file"))


def _minutes(rows: list[dict]) -> str:
    """The training time these checkpoints recorded when trained, summed per device."""
    by_device: dict[str, float] = {}
    for r in rows:
        if r["recorded"]["wall_s"] is not None:
            dev = r["recorded"]["device"] or "unknown device"
            by_device[dev] = by_device.get(dev, 0.0) + r["recorded"]["wall_s"] / 60
    return ", ".join(f"{m:.1f} min on {d}" for d, m in sorted(by_device.items())) or "none recorded"


def _groups(rows: list[dict]) -> dict[str, list[dict]]:
    """The cited checkpoints by how this command stands to them (each row in at most one group)."""
    return {"reproduced": [r for r in rows if _reproduced(r)],
            "different": [r for r in rows if r.get("retrained") and not _reproduced(r)],
            "other_device": [r for r in rows if r.get("skipped") and not r.get("retrained")],
            "not_retrained": [r for r in rows if not r["made_by"] and not r.get("retrained") and not r.get("skipped")
                              and not set(r["files"]) <= set(OWN)]}


def summary(rows: list[dict]) -> dict:
    """Counts of the cited section (headline figures read them), with the retrains' own training minutes."""
    g = _groups(rows)
    retrained = [r["retrained"] for r in rows if r.get("retrained") and not r["retrained"].get("same_file")]
    walls = [(r.get("how") or {}).get("wall_s") for r in retrained]
    return {"cited": len(rows), **{k: len(v) for k, v in g.items()}, "retrained": len(retrained),
            "retrain_minutes": round(sum(w for w in walls if w is not None) / 60, 1),
            "retrain_minutes_known": sum(w is not None for w in walls)}


def markdown_lines(rows: list[dict]) -> list[str]:
    """The report's section on the checkpoints the committed results cite."""
    if not rows:
        return []
    g = _groups(rows)
    skipped, listed = g["other_device"], g["not_retrained"]
    lines = ["", "## Checkpoints the committed results cite", "",
             f"{len(rows)} checkpoints are cited by sha256 in `benchmarks/results/*.json` (this command's own "
             f"previous outputs included); **{len(g['reproduced'])} reproduced bit-identically** (by this command's "
             "own runs, or retrained with their own command into a separate training cache); "
             f"{len(g['different'])} retrained with a DIFFERENT sha256."]
    if skipped:
        files = sorted({f for r in skipped for f in r["files"] if f not in OWN})
        lines.append(f"{len(skipped)} were trained on another device ({_minutes(skipped)} recorded) and are not "
                     "retrained here: CPU and CUDA kernels give different weights, so no retrain on this machine "
                     "can match them. Running their command here gives a checkpoint of the same recipe trained "
                     "on this device (the device is part of the training cache key), with other weights and other "
                     f"figures than {', '.join(f'`{f}`' for f in files)} report; this command's own runs (table "
                     "above) are the CPU-trained alternative (`protocol_grid --from-baselines`).")
    if listed:
        lines.append(f"{len(listed)} were not retrained by this run (`--cited list` or `--cited-subset`; "
                     f"{_minutes(listed)} recorded when trained, on different machines and loads).")
    lines += ["", "| sha256 | cited by | reproduced? | recorded training | command |", "|---|---|---|---|---|"]
    for r in rows:
        rec = r["recorded"]
        took = f"{rec['wall_s']:.0f} s on {rec['device']}" if rec["wall_s"] is not None else "n/a"
        if rec.get("threads"):  # a retrain matches only at this thread count (MEDPRUNE_THREADS)
            took += f", {rec['threads']} thread{'s' if rec['threads'] != 1 else ''}"
        lines.append(f"| `{r['sha256'][:16]}` | {', '.join(r['files'])} | {status(r)} | {took} | "
                     f"{'`' + r['command'] + '`' if r['command'] else 'made by the policy / grid runs'} |")
    earlier: dict[str, list[str]] = {}
    for r in rows:
        if (r.get("retrained") or {}).get("by"):
            earlier.setdefault(r["retrained"]["by"], []).append(f"`{r['sha256'][:8]}`")
    lines += [f"\nRetrained by an earlier run, `{by}`: {', '.join(shas)}." for by, shas in earlier.items()]
    if any((r.get("retrained") or {}).get("trained_by_this_call") is False for r in rows):
        lines += ["", "A retrain \"found in its training cache\" was trained there by the same `medprune train` "
                  "command before this run, and is another file than the cited checkpoint."]
    return lines
