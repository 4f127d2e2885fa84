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


def test_trained_minutes_counts_each_checkpoint_once():
    policy = {"models": [{"candidates": [{"sha256": "a", "train_wall_s": 60.0}, {"sha256": "b", "train_wall_s": 120.0}]}]}
    runs = [{"weights_sha256": "b", "train": {"wall_s": 120.0}},  # the policy's chosen checkpoint, reused
            {"weights_sha256": "c", "train": {"wall_s": 30.0}}, {"weights_sha256": "d", "train": {}}]
    assert bc.trained_minutes(policy, runs) == {"checkpoints": 4, "with_time": 3, "minutes": 3.5}


def test_policy_from_a_finished_run_needs_every_model(tmp_path):
    import json

    from toolchain.errors import ConfigError

    path = tmp_path / "hparam_policy.json"
    path.write_text(json.dumps({"models": [{"model": "resnet50", "chosen": {"lr": 3e-3}, "candidates": []},
                                           {"model": "vgg19", "chosen": {"lr": 1e-4}, "candidates": []}]}))
    assert [m["model"] for m in bc._read_policy(path, ["resnet50"])["models"]] == ["resnet50"]
    with pytest.raises(ConfigError, match="vit_b16"):
        bc._read_policy(path, ["resnet50", "vit_b16"])
    with pytest.raises(ConfigError, match="not found"):
        bc._read_policy(tmp_path / "none.json", ["resnet50"])


def test_produced_by_names_every_run_that_made_a_checkpoint():
    policy = {"models": [{"model": "resnet50", "candidates": [{"sha256": "a", "lr": 1e-3}, {"sha256": "b", "lr": 3e-3}]}]}
    runs = [{"weights_sha256": "b", "key": "resnet50:pneumoniamnist"}, {"weights_sha256": "c", "key": "resnet50:breastmnist"}]
    assert bc.produced_by(policy, runs) == {"a": "policy resnet50 lr 0.001",
                                            "b": "policy resnet50 lr 0.003 = resnet50:pneumoniamnist",
                                            "c": "resnet50:breastmnist"}


def test_finished_needs_a_finished_run(tmp_path):
    from toolchain.errors import ConfigError

    with pytest.raises(ConfigError):
        bc.main(["--finished", str(tmp_path), "--out", str(tmp_path / "out")])


def test_cited_subset_retrains_only_the_named_checkpoints_and_needs_cited_train():
    import types

    from toolchain.errors import ConfigError

    assert bc._cited_train(types.SimpleNamespace(cited="train", cited_subset=[])) is True
    assert bc._cited_train(types.SimpleNamespace(cited="list", cited_subset=[])) is False
    assert bc._cited_train(types.SimpleNamespace(cited="train", cited_subset=["c8c4", "d28d"])) == ("c8c4", "d28d")
    with pytest.raises(ConfigError):
        bc._cited_train(types.SimpleNamespace(cited="list", cited_subset=["abc"]))
