"""The recovery loss: knowledge distillation from the dense model plus class-weighted cross-entropy.

    loss = ce_weight * CE_w(student, y) + kd_weight * T² * KL(softmax(teacher/T) || softmax(student/T))

KL is averaged over the batch (``batchmean``), and T² keeps its gradient scale independent of the
temperature (Hinton et al. 2015). The class weights (inverse frequency, as in training) weight the
cross-entropy only: the teacher's soft targets already carry its calibrated class balance.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError


def check_weights(temperature: float, kd_weight: float, ce_weight: float) -> None:
    if not temperature > 0:
        raise ConfigError(f"distillation temperature must be > 0, got {temperature}")
    if kd_weight < 0 or ce_weight < 0 or kd_weight + ce_weight == 0:
        raise ConfigError(f"loss weights must be >= 0 and not both 0, got kd {kd_weight}, ce {ce_weight}")


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor, *,
                      temperature: float = 4.0, kd_weight: float = 1.0, ce_weight: float = 1.0,
                      class_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Scalar loss for student logits ``(N, K)`` against teacher logits and integer targets."""
    check_weights(temperature, kd_weight, ce_weight)
    if student.shape != teacher.shape:
        raise ConfigError(f"student logits {tuple(student.shape)} and teacher logits {tuple(teacher.shape)} differ")
    return _loss(student, teacher.detach(), targets, temperature, kd_weight, ce_weight, class_weight)


def _loss(student, teacher, targets, t, kd_weight, ce_weight, class_weight):
    total = student.new_zeros(())
    if ce_weight:
        total = total + ce_weight * F.cross_entropy(student, targets, weight=class_weight)
    if kd_weight:
        kl = F.kl_div(F.log_softmax(student / t, 1), F.log_softmax(teacher / t, 1), reduction="batchmean",
                      log_target=True)
        total = total + kd_weight * t * t * kl
    return total


class TeacherMemo:
    """Teacher logits per input image, for recoveries whose batches are not augmented.

    The dense teacher is frozen and in eval mode, so its logits for an image never change: a study that
    recovers many pruned students from one teacher pays the teacher's forward pass once per image
    instead of once per image, epoch and student (on VGG19 at ÷5 MACs that pass costs more than the
    student's training step). Keyed by the teacher's weight digest and each image's bytes; the last
    ``keep`` teachers are kept.
    """

    def __init__(self, keep: int = 2):
        self.keep = keep
        self._store: OrderedDict[str, dict[bytes, torch.Tensor]] = OrderedDict()

    def table(self, teacher_key: str) -> dict[bytes, torch.Tensor]:
        table = self._store.pop(teacher_key, None)
        self._store[teacher_key] = {} if table is None else table
        while len(self._store) > self.keep:
            self._store.popitem(last=False)
        return self._store[teacher_key]

    @staticmethod
    def logits(teacher: nn.Module, x: torch.Tensor, table: dict[bytes, torch.Tensor]) -> torch.Tensor:
        keys = [hashlib.blake2b(row.detach().cpu().contiguous().numpy().tobytes(), digest_size=16).digest()
                for row in x]
        todo = [i for i, k in enumerate(keys) if k not in table]
        if todo:
            with torch.no_grad():
                out = teacher(x[todo]).detach()
            for i, row in zip(todo, out, strict=True):
                table[keys[i]] = row
        return torch.stack([table[k] for k in keys]).to(x.device)


MEMO = TeacherMemo()


def distill_loss_factory(teacher: nn.Module, temperature: float, kd_weight: float,
                         ce_weight: float, memo_key: str | None = None) -> Callable[[torch.Tensor | None], Callable]:
    """``make_loss`` for :func:`toolchain.train.fit`: the teacher sees the same (augmented) batch.

    ``memo_key`` (the teacher's weight digest; only for un-augmented batches) reuses the teacher's
    logits per image through :data:`MEMO`.
    """
    check_weights(temperature, kd_weight, ce_weight)
    teacher.eval()
    table = MEMO.table(memo_key) if memo_key else None

    def make(class_weight):
        def loss(logits, y, x):
            if kd_weight and table is not None:
                t = MEMO.logits(teacher, x, table)
            elif kd_weight:
                with torch.no_grad():
                    t = teacher(x)
            else:
                t = logits.detach()
            return _loss(logits, t, y, temperature, kd_weight, ce_weight, class_weight)

        return loss

    return make
