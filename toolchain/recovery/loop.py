"""The recovery's fit: :func:`toolchain.fitloop.fit` (the loop ``train.fit`` runs), resumable after any epoch.

Given a :class:`.resume.ResumeFile`, the loop's state is written after every epoch and, when a state is there
at the start, the fit continues from the next epoch (bit-identical to an uninterrupted run on the same torch
thread count; a test holds it, and another holds the loop without a state to ``train.fit``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..fitloop import LoopState, fit, stopped
from .resume import ResumeFile


def fit_resumable(model: nn.Module, ds, preprocess, cfg, *, make_loss, device: str = "cpu", console=None,
                  resume: ResumeFile | None = None, memo: dict | None = None) -> dict[str, Any]:
    """Train ``model`` in place (ending on the best-validation weights) like ``fit(..., read_test=False)``.

    ``make_loss(class_weight) -> loss(logits, y, x)``; ``memo`` is the teacher-logit table the loss fills
    (saved with the state so a resumed run reads the same teacher logits); ``resume`` is where the state lives.
    """
    if make_loss is None:
        raise ConfigError("fit_resumable needs make_loss (the recovery's distillation loss)")
    return fit(model, ds, preprocess, cfg, device=device, console=console, make_loss=make_loss, read_test=False,
               resume=_Resume(resume, memo) if resume else None)


@dataclass(frozen=True)
class _Resume:
    """:class:`toolchain.fitloop.Resume` over a resume file and the teacher-logit memo saved beside the loop."""

    file: ResumeFile
    memo: dict | None

    def start(self, model: nn.Module, optimizer, schedule, cfg, console) -> LoopState | None:
        loop = self.file.load(model, optimizer, schedule, self.memo, cfg.epochs)
        if loop is not None:
            console.print(_resuming(self.file.key, loop, cfg))
        return loop

    def save(self, loop: LoopState, model: nn.Module, optimizer, schedule) -> None:
        self.file.save(loop, model, optimizer, schedule, self.memo)


def _resuming(key: str, loop: LoopState, cfg) -> str:
    done = loop.epoch >= cfg.epochs or stopped(loop, cfg)
    where = f"after its last epoch ({loop.epoch}/{cfg.epochs})" if done else f"at epoch {loop.epoch + 1}/{cfg.epochs}"
    threads = torch.get_num_threads()
    other = (f" (state written with {loop.threads} torch threads, now {threads}: the bits may differ from an "
             "uninterrupted run)") if loop.threads and loop.threads != threads else ""
    return f"resuming {key[:16]} {where}{other}"
