"""The recovery loss: knowledge distillation from the dense model plus class-weighted cross-entropy.

    loss = ce_weight * CE_w(student, y) + kd_weight * T² * KL(softmax(teacher/T) || softmax(student/T))

KL is averaged over the batch (``batchmean``), and T² keeps its gradient scale independent of the
temperature (Hinton et al. 2015). The class weights (inverse frequency, as in training) weight the
cross-entropy only: the teacher's soft targets already carry its calibrated class balance.
"""

from __future__ import annotations

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


def distill_loss_factory(teacher: nn.Module, temperature: float, kd_weight: float,
                         ce_weight: float) -> Callable[[torch.Tensor | None], Callable]:
    """``make_loss`` for :func:`toolchain.train.fit`: the teacher sees the same (augmented) batch."""
    check_weights(temperature, kd_weight, ce_weight)
    teacher.eval()

    def make(class_weight):
        def loss(logits, y, x):
            if kd_weight:
                with torch.no_grad():
                    t = teacher(x)
            else:
                t = logits.detach()
            return _loss(logits, t, y, temperature, kd_weight, ce_weight, class_weight)

        return loss

    return make
