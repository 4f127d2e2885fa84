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


def test_same_seed_gives_bit_identical_weights(tmp_path, monkeypatch):
    """Deterministic CPU training: one epoch of a tiny model, trained twice from scratch, hashes equal."""
    import hashlib

    npz = write_tiny_npz(tmp_path / "tinymnist.npz")
    monkeypatch.setenv("MEDPRUNE_THREADS", "1")
    digests = []
    for run, seed in (("a", 0), ("b", 0), ("c", 1)):
        monkeypatch.setenv("MEDPRUNE_CACHE", str(tmp_path / run))  # a fresh cache: really trains each time
        weights = train(_cfg(npz, model="resnet50", build_args=dict(TINY_RESNET), epochs=1, seed=seed))
        digests.append(hashlib.sha256(weights.read_bytes()).hexdigest())
        meta = __import__("toolchain.models", fromlist=["checkpoint_meta"]).checkpoint_meta(weights)
        assert meta["train"]["deterministic"] and meta["train"]["device"] == "cpu"
    assert digests[0] == digests[1]
    assert digests[0] != digests[2]  # the comparison can fail: another seed gives other weights
    assert not torch.are_deterministic_algorithms_enabled()  # switched on only while training


def test_read_test_false_trains_the_same_weights_without_reading_test(tmp_path, monkeypatch):
    """Deploy trains with read_test=False: test is never read (its split raises), the sidecar has val metrics
    only, and weights and cache folder are those of the default run (which scores test into the sidecar)."""
    from toolchain.data.dataset import Dataset
    from toolchain.models import read_sidecar

    npz = write_tiny_npz(tmp_path / "tinymnist.npz")
    monkeypatch.setenv("MEDPRUNE_THREADS", "1")
    original = Dataset.split
    runs = {}
    for read_test in (True, False):
        monkeypatch.setenv("MEDPRUNE_CACHE", str(tmp_path / str(read_test)))  # a fresh cache: really trains
        with monkeypatch.context() as mp:
            if not read_test:
                mp.setattr(Dataset, "split", lambda self, name: original(self, name) if name != "test"
                           else pytest.fail("training read the test split"))
            weights = train(_cfg(npz, model="resnet50", build_args=dict(TINY_RESNET), epochs=1), read_test=read_test)
        runs[read_test] = (weights.parent.name, read_sidecar(weights)[1])
    (key_a, side_a), (key_b, side_b) = runs[True], runs[False]
    assert set(side_a["meta"]["metrics"]) == {"val", "test"} and set(side_b["meta"]["metrics"]) == {"val"}
    assert key_a == key_b and side_a["weights_sha256"] == side_b["weights_sha256"]


def test_train_command_says_when_its_cached_checkpoint_has_no_test_metrics(tmp_path, capsys, cli_env, monkeypatch):
    """A checkpoint deploy trained (read_test=False) is the cache entry `medprune train` of the same config
    returns: the command says test was not scored and how to score it, instead of a silently shorter table."""
    import toolchain.train as train_mod
    from tests.toolchain._byom_data import run_cli

    npz = write_tiny_npz(tmp_path / "tinymnist.npz")
    cfg = TrainConfig(model="test_resnet", data=str(npz), img_size=16, epochs=1, batch_size=16, lr=3e-3,
                      augment=False, patience=0, device="cpu", quiet=True)
    weights = train(cfg, read_test=False)
    monkeypatch.setattr(train_mod, "fit", lambda *a, **k: pytest.fail("retrained despite a cached checkpoint"))
    code, out, err = run_cli(["train", "--model", "test_resnet", "--data", npz, "--img-size", "16", "--epochs", "1",
                              "--batch-size", "16", "--lr", "0.003", "--no-augment", "--patience", "0",
                              "--device", "cpu", "-q"], capsys)
    assert code == 0, err
    said = " ".join(out.split())
    assert f"checkpoint: {weights}" in out and "no test metrics in this checkpoint" in said
    assert f"medprune evaluate -c {weights} --split test" in said


def test_deterministic_block_refuses_nondeterministic_ops():
    from toolchain.determinism import deterministic

    before = torch.are_deterministic_algorithms_enabled()
    with deterministic("cpu"):
        assert torch.are_deterministic_algorithms_enabled()
    assert torch.are_deterministic_algorithms_enabled() == before


def test_cache_key_tracks_config_data_device_and_code(monkeypatch):
    import toolchain.train as train_mod

    cfg = TrainConfig(device="cpu")
    key = cfg.cache_key("a" * 64)
    assert key != TrainConfig(seed=1, device="cpu").cache_key("a" * 64)
    assert key != cfg.cache_key("b" * 64)
    assert key != TrainConfig(device="cuda").cache_key("a" * 64)  # CPU and CUDA weights differ
    auto = TrainConfig(device="auto").cache_key("a" * 64)
    assert auto == (key if not torch.cuda.is_available() else TrainConfig(device="cuda").cache_key("a" * 64))
    monkeypatch.setattr(train_mod, "training_code_version", lambda: "0" * 64)  # the training code changed
    assert cfg.cache_key("a" * 64) != key


def test_training_code_version_follows_the_training_sources():
    from toolchain.pipeline import source_files
    from toolchain.train import TRAINING_CODE

    names = {p.relative_to(p.parents[2]).as_posix() if p.parent.name != "toolchain" else f"toolchain/{p.name}"
             for p in source_files(*TRAINING_CODE, follow_imports=False)}
    assert {"toolchain/train.py", "toolchain/data/loader.py", "toolchain/data/transforms.py",
            "toolchain/models/registry.py", "toolchain/metrics.py"} <= names


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
