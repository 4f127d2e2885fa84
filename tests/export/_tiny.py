"""Trained tiny models (dense and hand-pruned) of all three families for the export tests."""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn

SIZE = 16


def preprocess(images: np.ndarray) -> np.ndarray:
    x = images.astype(np.float32)[:, None] / 255.0
    return (x - 0.4) / 0.3


def tiny_data(seed: int = 0):
    """Brightness-separable images: (train x, train y, test x, test y), preprocessed."""
    rng = np.random.default_rng(seed)
    out = []
    for n in (48, 32):
        y = np.arange(n) % 2
        img = np.clip(rng.integers(0, 100, (n, SIZE, SIZE)) + 155 * y[:, None, None], 0, 255).astype(np.uint8)
        out += [preprocess(img), y.astype(np.int64)]
    return tuple(out)


def _shrink_resnet(model: nn.Module) -> nn.Module:
    """Narrow every bottleneck's inner convs, as channel pruning does (block I/O widths unchanged)."""
    for block in [m for m in model.modules() if type(m).__name__ == "Bottleneck"]:
        w = max(2, block.conv1.out_channels // 2 + 1)
        block.conv1 = nn.Conv2d(block.conv1.in_channels, w, 1, bias=False)
        block.bn1 = nn.BatchNorm2d(w)
        block.conv2 = nn.Conv2d(w, w, 3, stride=block.conv2.stride, padding=1, bias=False)
        block.bn2 = nn.BatchNorm2d(w)
        block.conv3 = nn.Conv2d(w, block.conv3.out_channels, 1, bias=False)
    return model


def _shrink_vit(model: nn.Module, heads=(3, 1)) -> nn.Module:
    """Fewer attention heads (qkv/proj narrowed, num_heads and attn_dim updated) and MLP units."""
    for block, h in zip(model.blocks, heads, strict=False):
        attn, dim = block.attn, block.attn.qkv.in_features
        attn.qkv = nn.Linear(dim, 3 * h * attn.head_dim, bias=attn.qkv.bias is not None)
        attn.proj = nn.Linear(h * attn.head_dim, dim)
        attn.num_heads, attn.attn_dim = h, h * attn.head_dim
        hidden = block.mlp.fc1.out_features * 5 // 8
        block.mlp.fc1 = nn.Linear(dim, hidden)
        block.mlp.fc2 = nn.Linear(hidden, dim)
    return model


def build(family: str, pruned: bool) -> nn.Module:
    from tests.conftest import tiny_model

    if family == "vgg" and pruned:
        from timm.layers import ClassifierHead
        from timm.models.vgg import VGG, ConvMlp

        torch.manual_seed(0)
        model = VGG([5, "M", 11, 9, "M"], num_classes=2, in_chans=1)
        model.pre_logits = ConvMlp(9, 20, kernel_size=7, mlp_ratio=0.5, drop_rate=0.0)
        model.num_features = 20
        model.head = ClassifierHead(20, 2, pool_type="avg")
        return model
    model = tiny_model(family, img_size=SIZE)
    if pruned and family == "resnet":
        torch.manual_seed(1)
        return _shrink_resnet(model)
    if pruned and family == "vit":
        torch.manual_seed(1)
        return _shrink_vit(model)
    return model


def fit(model: nn.Module, x: np.ndarray, y: np.ndarray, steps: int = 30) -> nn.Module:
    torch.manual_seed(0)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    return model.eval()


@functools.cache
def trained(family: str, pruned: bool) -> nn.Module:
    x, y, _, _ = tiny_data()
    return fit(build(family, pruned), x, y)


def meta_for(model: nn.Module, family: str) -> dict:
    return {"arch": f"tiny_{family}", "class_names": ["normal", "pneumonia"], "num_classes": 2, "in_chans": 1,
            "img_size": SIZE, "preprocess": {"img_size": SIZE, "in_chans": 1, "mean": [0.4], "std": [0.3]},
            "medprune_version": "0.1.0", "pruning": {"recipe": {"criterion": "hand"}} if family else None}
