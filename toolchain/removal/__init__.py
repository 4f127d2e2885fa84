"""Physical removal of masked units (Torch-Pruning), at neuron or group granularity.

    from toolchain.removal import remove_units, group_masks
    pruned, report = remove_units(model, masks, example_input, granularity="neuron", round_to=8)
    masks = group_masks(model, scores, layers, ratio=0.5, example_input=x)   # coupled units together

The pruned model is a deep copy whose logits equal ``apply_masks(model, masks)``'s (checked on the
example input). ``save_pruned``/``load_checkpoint`` round-trip it without pickle; ``compare_models``
measures params, MACs, size and eager latency of dense vs pruned.
"""

from .adapter import UnitScoreImportance
from .compare import compare_models
from .group import GroupMasker, group_masks
from .pruned_io import pruning_meta, save_pruned
from .remove import GRANULARITIES, remove_units

__all__ = [
    "GRANULARITIES",
    "UnitScoreImportance",
    "compare_models",
    "GroupMasker",
    "group_masks",
    "pruning_meta",
    "remove_units",
    "save_pruned",
]
