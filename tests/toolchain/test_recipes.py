"""Training recipes are defined once (toolchain.recipes) and read by the baselines study."""

import pytest

from benchmarks.studies.baselines import RUNS
from toolchain.recipes import CPU_BUDGET, RECIPES, CpuBudget, recipe_for
from toolchain.train import TrainConfig


def test_train_args_are_valid_trainconfig_fields_and_fresh():
    for recipe in RECIPES.values():
        args = recipe.train_args()
        TrainConfig(**args).validate()
        args.setdefault("build_args", {})["x"] = 1  # callers may update it without touching the recipe
        assert "x" not in recipe.build_args
    assert recipe_for("no_such_family") is None


def test_baseline_runs_come_from_the_recipes():
    for key, run in RUNS.items():
        recipe = RECIPES[run["model"]]
        assert run.get("build_args", {}) == recipe.build_args, key
        if key != "vit_b16:chest_xray_224":  # its lr was re-chosen on that dataset's val split
            assert run["lr"] == recipe.lr, key


def test_cpu_budget_gives_every_dataset_about_the_same_number_of_images():
    big, small = CPU_BUDGET.schedule(4708), CPU_BUDGET.schedule(546)
    assert (big["epochs"], big["train_subset"]) == (2, 1500) and (small["epochs"], small["train_subset"]) == (6, None)
    assert big["patience"] == big["epochs"] and small["warmup_epochs"] == pytest.approx(1.5)
    assert CpuBudget(images_seen=100, subset=1500, min_epochs=3).schedule(1000)["epochs"] == 3
    TrainConfig(**big).validate()
    with pytest.raises(ValueError):
        CPU_BUDGET.schedule(0)
