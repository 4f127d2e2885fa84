"""Recovery after physical pruning: distillation fine-tuning, budget-driven pruning, iterative schedule.

    from toolchain.recovery import RecoveryConfig, recover_cached, prune_to_budget, masker_for, Gates
"""

from .align import align_to_teacher, fit_logit_offset, fold_logit_offset
from .budgeted import Gates, iterative_budget, masker_for, prune_to_budget, pruner_at, recover_and_gate
from .distill import distillation_loss
from .finetune import VERSION, RecoveryConfig, recover, recover_cached

__all__ = [
    "VERSION",
    "Gates",
    "RecoveryConfig",
    "align_to_teacher",
    "distillation_loss",
    "fit_logit_offset",
    "fold_logit_offset",
    "iterative_budget",
    "masker_for",
    "prune_to_budget",
    "pruner_at",
    "recover",
    "recover_and_gate",
    "recover_cached",
]
