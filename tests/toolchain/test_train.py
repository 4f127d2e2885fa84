"""Training: loss goes down on a tiny set, cached reuse, determinism, metadata; predict/evaluate."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import write_tiny_npz
from toolchain.errors import ConfigError
from toolchain.train import TrainConfig, class_weights, make_schedule, train

TINY_VIT = {"embed_dim": 32, "depth": 2, "num_heads": 4, "patch_size": 4}
TINY_RESNET = {"layers": [1, 1, 1, 1], "channels": [8, 16, 16, 32], "stem_width": 8}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDPRUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MEDPRUNE_THREADS", "1")
    return tmp_path / "cache"


def _cfg(npz, **kw) -> TrainConfig:
    base = dict(model="vit_b16", data=str(npz), img_size=16, epochs=4, batch_size=8, lr=3e-3, warmup_epochs=0.5,
                patience=0, build_args=dict(TINY_VIT), device="cpu", quiet=True)
    return TrainConfig(**{**base, **kw})


def test_training_lowers_loss_and_records_meta(tmp_path, cache):
    from toolchain.models import checkpoint_meta, load_checkpoint

    npz = write_tiny_npz(tmp_path / "tinymnist.npz", n=(48, 16, 16))
    weights = train(_cfg(npz))
    assert weights.name == "model.safetensors" and weights.parent.parent == cache / "checkpoints"
    assert weights.parent.name.startswith("vit_b16-tinymnist-")
    meta = checkpoint_meta(weights)
    hist = meta["train_history"]
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert set(meta["metrics"]) == {"val", "test"} and meta["metrics"]["test"]["n"] == 16
    assert meta["dataset"]["fingerprint"] and meta["preprocess"]["img_size"] == 16
    assert meta["train_config"]["build_args"] == TINY_VIT and meta["train"]["best_epoch"] >= 1
    model, _ = load_checkpoint(weights)
    assert model(torch.zeros(1, 1, 16, 16)).shape == (1, 2)


def test_cache_reuse_force_and_determinism(tmp_path, cache, monkeypatch):
    import toolchain.train as train_mod

    npz = write_tiny_npz(tmp_path / "tinymnist.npz")
    cfg = _cfg(npz, model="resnet50", build_args=dict(TINY_RESNET), epochs=2)
    first = train(cfg)
    blob = first.read_bytes()

    def boom(*a, **k):
        raise AssertionError("retrained despite a cached checkpoint")

    monkeypatch.setattr(train_mod, "fit", boom)
    again = train(_cfg(npz, model="resnet50", build_args=dict(TINY_RESNET), epochs=2, device="auto"))
    assert again == first and again.read_bytes() == blob
    monkeypatch.undo()
    monkeypatch.setenv("MEDPRUNE_CACHE", str(cache))
    monkeypatch.setenv("MEDPRUNE_THREADS", "1")
    forced = train(cfg, force=True)
    assert forced == first and forced.read_bytes() == blob  # same seed, same bytes


def test_cache_key_tracks_config_and_data_not_device():
    cfg = TrainConfig()
    assert cfg.cache_key("a" * 64) == TrainConfig(device="cpu").cache_key("a" * 64)
    assert cfg.cache_key("a" * 64) != TrainConfig(seed=1).cache_key("a" * 64)
    assert cfg.cache_key("a" * 64) != cfg.cache_key("b" * 64)


def test_config_validation():
    for bad in (dict(optimizer="lion"), dict(select_metric="f1"), dict(epochs=0), dict(lr=0.0)):
        with pytest.raises(ConfigError):
            TrainConfig(**bad).validate()


def test_class_weights_and_schedule():
    w = class_weights(np.array([0, 1, 1, 1]), 2)
    assert torch.allclose(w, torch.tensor([2.0, 2 / 3]))
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make_schedule(opt, total_steps=10, warmup_steps=2, min_ratio=0.0)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 0.5 and lrs[1] == 1.0 and lrs[2] == 1.0 and lrs[-1] < 0.05
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:], strict=False))


def test_predict_and_evaluate(tmp_path):
    from tests.conftest import tiny_model
    from toolchain.data import Preprocess, load_dataset
    from toolchain.evaluate import evaluate, predict

    ds = load_dataset(write_tiny_npz(tmp_path / "tinymnist.npz"))
    pre = Preprocess.for_dataset(ds, 16, 1)
    model = tiny_model("resnet")
    probs, labels = predict(model, ds, "test", pre, batch_size=3)
    assert probs.shape == (8, 2) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert np.array_equal(labels, ds.split("test").labels)
    sub, _ = predict(model, ds, "test", pre, indices=np.array([1, 3]))
    assert np.allclose(sub, probs[[1, 3]], atol=1e-6)
    metrics = evaluate(model, ds, "test", pre)
    assert metrics["n"] == 8 and 0 <= metrics["accuracy"] <= 1
