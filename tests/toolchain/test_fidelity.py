"""Heatmap fidelity: input-level LRP maps and their agreement metrics."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import tiny_model
from toolchain.fidelity import fidelity, heatmaps


def test_identical_maps_agree_perfectly():
    maps = torch.randn(4, 16, 16)
    f = fidelity(maps, maps.clone())
    assert f["spearman_mean"] == pytest.approx(1.0)
    assert f["iou10_mean"] == pytest.approx(1.0)
    assert f["spearman_std"] == pytest.approx(0.0, abs=1e-12)


def test_unrelated_maps_barely_agree():
    g = torch.Generator().manual_seed(0)
    f = fidelity(torch.randn(8, 32, 32, generator=g), torch.randn(8, 32, 32, generator=g))
    assert abs(f["spearman_mean"]) < 0.1
    assert f["iou10_mean"] < 0.15  # chance level for two random top-10 % sets is about 0.05


def test_monotone_transform_keeps_ranks_and_constant_maps_are_handled():
    maps = torch.randn(3, 8, 8)
    assert fidelity(maps, maps * 5 + 2)["spearman_mean"] == pytest.approx(1.0)
    zeros = torch.zeros(2, 8, 8)
    assert fidelity(zeros, zeros)["spearman_mean"] == pytest.approx(1.0)
    assert fidelity(zeros, torch.randn(2, 8, 8))["spearman_mean"] == pytest.approx(0.0)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError):
        fidelity(torch.zeros(2, 8, 8), torch.zeros(3, 8, 8))


def test_heatmaps_have_one_map_per_image(tiny_family):
    model = tiny_model(tiny_family)
    x = torch.randn(3, 1, 16, 16)
    maps = heatmaps(model, x, torch.tensor([0, 1, 0]))
    assert maps.shape == (3, 16, 16)
    assert torch.isfinite(maps).all()
    assert fidelity(maps, heatmaps(model, x, torch.tensor([0, 1, 0])))["spearman_mean"] == pytest.approx(1.0)
