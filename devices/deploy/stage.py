"""The one shape of a cached deploy stage.

A stage is a frozen dataclass: its *key fields* are its inputs and, with the class's ``version``, its
cache key (nothing outside the stage builds that key). Fields made with :func:`live` are in-memory
handles the stage computes from (the loaded model, the evaluator); they are derived from key fields
(e.g. the checkpoint's sha256) and so stay out of the key. ``outputs`` names the files a stage writes
into its folder; what ``run`` returns is its JSON result (``StageResult.data``).

Example::

    @dataclass(frozen=True)
    class Export(Stage):
        name = "export"
        version = 1
        outputs = ("model_*.onnx",)
        source: str          # digest of the stage that produced the weights
        fmt: str
        precision: str

        def run(self, workdir: Path) -> dict: ...

    exp = Export(source=pr.key_digest, fmt="onnx", precision="fp32")(pipe)
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from toolchain.pipeline import Pipeline, StageResult


def added(default: Any) -> Any:
    """A key field added after stages were cached: left out of the key while it holds ``default``, so every
    earlier key (and the result cached under it) stays valid."""
    return field(default=default, metadata={"added": True})


def live(default: Any = None) -> Any:
    """A field holding an in-memory input (not part of the cache key: it derives from key fields)."""
    return field(default=default, compare=False, repr=False, metadata={"live": True})


@dataclass(frozen=True)
class Stage:
    name: ClassVar[str]
    version: ClassVar[int]  # bump when the stage's computation or output format changes
    outputs: ClassVar[tuple[str, ...]] = ()  # files written into the stage folder (besides result.json)

    def key(self) -> dict:
        """The cache key: every non-live field (an ``added`` one only off its default) plus the stage version."""
        key = {f.name: getattr(self, f.name) for f in fields(self) if not f.metadata.get("live")
               and not (f.metadata.get("added") and getattr(self, f.name) == f.default)}
        return {"v": self.version, **key}

    def run(self, workdir: Path) -> dict:
        raise NotImplementedError

    def __call__(self, pipe: Pipeline, *, fresh: bool = False) -> StageResult:
        """Run through ``pipe`` (cached by :meth:`key`); ``fresh`` drops a cached result first."""
        if fresh:
            shutil.rmtree(pipe.folder(self.name, self.key(), self.run), ignore_errors=True)
        return pipe.stage(self.name, self.key(), self.run)
