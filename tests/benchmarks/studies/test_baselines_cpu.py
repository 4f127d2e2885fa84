"""baselines_cpu: one schedule and the policy's lr for every run; the load sampler; the report's timing."""

from __future__ import annotations

import pytest

from benchmarks.studies import baselines_cpu as bc
from toolchain.recipes import CPU_BUDGET, RECIPES


@pytest.fixture
def data(monkeypatch, tmp_path):
    import numpy as np

    monkeypatch.setattr("toolchain.data.load_dataset", lambda name, **kw: type("DS", (), {
        "split": lambda self, s: type("S", (), {"labels": np.zeros(546 if "breast" in name else 4708)})()})())


@pytest.mark.parametrize("model", sorted(RECIPES))
def test_config_is_recipe_plus_chosen_lr_plus_the_shared_schedule(model, data):
    cfg = bc.config(model, "breastmnist", lr=3e-4)
    sched = CPU_BUDGET.schedule(546)
    assert (cfg.lr, cfg.data, cfg.epochs, cfg.train_subset, cfg.device) == (3e-4, "breastmnist_64", sched["epochs"],
                                                                             None, "cpu")
    assert cfg.build_args == RECIPES[model].build_args and cfg.warmup_epochs == sched["warmup_epochs"]
    chest = bc.config(model, "chest_xray_224", lr=1e-4)
    assert (chest.load_size, chest.train_subset, chest.epochs) == (64, 1500, 2)


def test_unknown_dataset_is_a_config_error(data):
    from toolchain.errors import ConfigError

    with pytest.raises(ConfigError):
        bc.config("vgg19", "cifar", lr=1e-4)


def test_load_sampler_records_samples():
    with bc.LoadSampler(period=0.01) as load:
        import time

        time.sleep(0.05)
    s = load.summary()
    assert s["samples"] >= 1 and s["min"] <= s["mean"] <= s["max"]
    assert bc.machine()["cores_usable"] >= 1
