"""Shared fixtures: tiny datasets and tiny models of all three families (fast on 2 CPU cores)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))

SHARED = Path(os.environ.get("MEDPRUNE_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data")


@pytest.fixture
def shared_data() -> Path:
    """The shared real-data directory; tests using it are skipped (with the reason) when absent."""
    if not (SHARED / "medmnist" / "pneumoniamnist.npz").exists():
        pytest.skip(f"shared data not found at {SHARED} (set MEDPRUNE_DATA)")
    return SHARED


def write_tiny_npz(path: Path, n=(24, 8, 8), size=16, channels=1, classes=2, seed=0) -> Path:
    """A MedMNIST-format npz whose classes differ in brightness, so a model can learn it fast."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in zip(("train", "val", "test"), n, strict=True):
        labels = np.arange(count) % classes
        shape = (count, size, size) if channels == 1 else (count, size, size, channels)
        base = rng.integers(0, 100, size=shape)
        bright = (labels * (155 // max(classes - 1, 1))).reshape((-1,) + (1,) * (len(shape) - 1))
        arrays[f"{split}_images"] = np.clip(base + bright, 0, 255).astype(np.uint8)
        arrays[f"{split}_labels"] = labels.reshape(-1, 1).astype(np.uint8)
    np.savez(path, **arrays)
    return path


@pytest.fixture
def tiny_npz(tmp_path) -> Path:
    return write_tiny_npz(tmp_path / "tinymnist.npz")


@pytest.fixture
def cli_env(tmp_path, monkeypatch):
    """CLI tests: a private cache, one thread, wide tables, and no tracebacks from MEDPRUNE_DEBUG."""
    monkeypatch.setenv("MEDPRUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MEDPRUNE_THREADS", "1")
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.delenv("MEDPRUNE_DEBUG", raising=False)


def train_tiny_resnet(root: Path, epochs: int = 2, lr: float | None = 3e-3,
                      threads: str | None = None) -> tuple[Path, Path]:
    """A test_resnet trained on the tiny brightness dataset (16 px, 1 channel) under ``root``: (weights, npz).

    ``lr=None`` keeps TrainConfig's default learning rate."""
    from toolchain.train import TrainConfig, train

    npz = write_tiny_npz(root / "tinymnist.npz", n=(32, 16, 16))
    settings = {} if lr is None else {"lr": lr}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDPRUNE_CACHE", str(root / "cache"))
        if threads is not None:
            mp.setenv("MEDPRUNE_THREADS", threads)
        weights = train(TrainConfig(model="test_resnet", data=str(npz), img_size=16, epochs=epochs, batch_size=16,
                                    augment=False, patience=0, device="cpu", quiet=True, **settings))
    return weights, npz


def tiny_model(family: str, in_chans: int = 1, num_classes: int = 2, img_size: int = 16) -> torch.nn.Module:
    """Small members of each family, built with the same timm classes as the real models."""
    from timm.models.resnet import Bottleneck, ResNet
    from timm.models.vgg import VGG
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    if family == "vgg":
        from timm.layers import ClassifierHead
        from timm.models.vgg import ConvMlp

        model = VGG([8, "M", 16, 16, "M"], num_classes=num_classes, in_chans=in_chans)
        model.pre_logits = ConvMlp(16, 32, kernel_size=7, mlp_ratio=0.5, drop_rate=0.0)
        model.num_features = 32
        model.head = ClassifierHead(32, num_classes, pool_type="avg")
        return model.eval()
    if family == "resnet":
        return ResNet(Bottleneck, [1, 1, 1, 1], num_classes=num_classes, in_chans=in_chans,
                      stem_width=8, channels=(8, 16, 16, 32)).eval()
    if family == "vit":
        return VisionTransformer(img_size=img_size, patch_size=4, in_chans=in_chans, num_classes=num_classes,
                                 embed_dim=32, depth=2, num_heads=4, mlp_ratio=2.0).eval()
    raise ValueError(family)


@pytest.fixture(params=["vgg", "resnet", "vit"])
def tiny_family(request) -> str:
    return request.param
