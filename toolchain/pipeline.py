"""A resumable, content-addressed stage runner (the engine behind ``medprune deploy``).

Each stage has a key (its inputs: config values and the digests of upstream stages). The key's hash
names the stage's folder under ``<root>/stages/``; a finished stage holds ``result.json`` and is
reused on the next run, so an interrupted run resumes where it stopped. A stage writes into a temp
folder that is renamed into place only when it succeeds (Ctrl-C leaves nothing half-done).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from .atomic import atomic_dir


def digest(obj: Any) -> str:
    """Stable sha256 of a JSON-able object (sorted keys, no whitespace)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


@dataclass
class StageResult:
    name: str
    key_digest: str
    path: Path  # the stage's folder (files it wrote live here)
    data: dict  # what the stage returned (JSON-able)
    cached: bool
    seconds: float


@dataclass
class Pipeline:
    root: Path
    console: Console = field(default_factory=lambda: Console(stderr=True))
    results: dict[str, StageResult] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    def stage(self, name: str, key: dict, fn: Callable[[Path], dict]) -> StageResult:
        """Run ``fn(workdir) -> dict`` unless a finished stage with the same key exists."""
        key_digest = digest({"stage": name, **key})
        folder = Path(self.root) / "stages" / f"{name}-{key_digest[:16]}"
        index = len(self.results) + 1
        if (folder / "result.json").is_file():
            data = json.loads((folder / "result.json").read_text())
            result = StageResult(name, key_digest, folder, data, True, 0.0)
            self.console.print(f"[dim][{index}] {name}: cached ({folder.name})[/]")
        else:
            self.console.print(f"[bold][{index}] {name}[/] …")
            t0 = time.perf_counter()
            with atomic_dir(folder) as tmp:
                data = fn(tmp) or {}
                (tmp / "key.json").write_text(json.dumps(key, indent=2, sort_keys=True, default=str))
                (tmp / "result.json").write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
            seconds = time.perf_counter() - t0
            result = StageResult(name, key_digest, folder, data, False, seconds)
            self.console.print(f"[green][{index}] {name}: done in {seconds:.1f} s[/]")
        self.results[name] = result
        return result

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def summary(self) -> dict:
        return {
            "total_seconds": round(self.elapsed(), 1),
            "stages": {n: {"cached": r.cached, "seconds": round(r.seconds, 1), "digest": r.key_digest[:16]}
                       for n, r in self.results.items()},
        }
