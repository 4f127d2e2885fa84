"""Tiny models exported by the tests themselves (shared by the harness, roofline and CLI tests)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn


def tiny_cnn(width: int = 4, in_chans: int = 1, num_classes: int = 2) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(in_chans, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes),
    ).eval()


def export_tiny(path: Path, width: int = 4, size: int = 16, in_chans: int = 1) -> Path:
    model = tiny_cnn(width, in_chans)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, torch.zeros(1, in_chans, size, size), str(path), input_names=["image"],
                          output_names=["logits"], dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
                          dynamo=False)
    return path


def to_openvino(onnx_path: Path) -> Path:
    import openvino as ov

    xml = onnx_path.with_suffix(".xml")
    ov.save_model(ov.convert_model(str(onnx_path)), str(xml))
    return xml
