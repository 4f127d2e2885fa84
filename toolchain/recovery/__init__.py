"""Recovery after physical pruning: distillation fine-tuning, budget-driven pruning, iterative schedule.

    from toolchain.recovery import RecoveryConfig, recover_cached, prune_to_budget, masker_for, Gates
"""

from .budgeted import Gates, iterative_budget, masker_for, prune_to_budget, pruner_at, recover_and_gate
from .distill import distillation_loss
from .finetune import VERSION, RecoveryConfig, recover, recover_cached

__all__ = [
    "VERSION",
    "Gates",
    "RecoveryConfig",
    "distillation_loss",
    "iterative_budget",
    "masker_for",
    "prune_to_budget",
    "pruner_at",
    "recover",
    "recover_and_gate",
    "recover_cached",
]
