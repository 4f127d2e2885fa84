"""Training recipes per model family: the hyper-parameters chosen in the baseline trials, defined once.

``benchmarks.studies.baselines`` builds every baseline run from a recipe plus per-dataset settings
(epochs, patience, load size and the few overrides chosen on a dataset's val split), and
``medprune deploy`` reads the recipe's ``lr`` and ``build_args`` when it trains a checkpoint it was not
given (its runs are a few epochs long, so it keeps TrainConfig's warm-up). A family without a recipe
trains with ``TrainConfig`` defaults.

    >>> RECIPES["vit_b16"].train_args()
    {'lr': 0.0003, 'warmup_epochs': 2.0, 'build_args': {'patch_size': 16}}
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Recipe:
    lr: float
    warmup_epochs: float | None = None  # None: TrainConfig's default
    build_args: dict[str, Any] = field(default_factory=dict)

    def train_args(self) -> dict[str, Any]:
        """The TrainConfig fields this recipe sets (a fresh dict: callers may update it)."""
        args: dict[str, Any] = {"lr": self.lr}
        if self.warmup_epochs is not None:
            args["warmup_epochs"] = self.warmup_epochs
        if self.build_args:
            args["build_args"] = dict(self.build_args)
        return args


RECIPES: dict[str, Recipe] = {
    "vgg19": Recipe(lr=1e-4),  # no BatchNorm: 1e-3 did not train in the trials
    "resnet50": Recipe(lr=1e-3),
    # 16 px patches: at 32 px the ViT-B/16 keeps its width/depth/heads on a 2x2 grid + CLS token
    "vit_b16": Recipe(lr=3e-4, warmup_epochs=2.0, build_args={"patch_size": 16}),
}


@dataclass(frozen=True)
class CpuBudget:
    """The lean schedule every model and dataset shares when checkpoints are trained on a 2-core CPU.

    Each run sees about ``images_seen`` training images: a stratified subset of at most ``subset`` images
    for as many epochs as that takes (at least ``min_epochs``), so a large and a small dataset get the same
    number of optimiser steps. Warm-up is a fixed fraction of the run for every model (the recipes' warm-up
    in epochs is sized for full-length runs) and early stopping is off (the best val epoch is kept anyway).

        >>> CPU_BUDGET.schedule(4708)["epochs"], CPU_BUDGET.schedule(546)["epochs"]
        (2, 6)
    """

    images_seen: int = 3000
    subset: int = 1500
    min_epochs: int = 2
    warmup_fraction: float = 0.25

    def schedule(self, n_train: int) -> dict[str, Any]:
        """The TrainConfig fields (epochs, train_subset, warm-up, patience) for a train split of ``n_train``."""
        if n_train < 1:
            raise ValueError(f"a train split needs images, got n_train={n_train}")
        used = min(n_train, self.subset)
        epochs = max(self.min_epochs, math.ceil(self.images_seen / used))
        return {"epochs": epochs, "train_subset": self.subset if n_train > self.subset else None,
                "warmup_epochs": self.warmup_fraction * epochs, "patience": epochs}


CPU_BUDGET = CpuBudget()


def recipe_for(model: str) -> Recipe | None:
    """The recipe of ``model`` (a family name such as ``vit_b16``), or None when it has none."""
    return RECIPES.get(model)
