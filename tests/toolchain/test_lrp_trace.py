"""LRP's BatchNorm trace on a small crop: same relevance as a full-size trace, fallback, logit check."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.conftest import tiny_model
from tests.toolchain.test_lrp import _randomise_batchnorms
from toolchain.errors import ModelError
from toolchain.importance import _lrp_canonizers
from toolchain.importance.lrp import LRPExplainer
from toolchain.units import find_unit_layers


@pytest.fixture
def traced_sizes(monkeypatch) -> list[tuple[int, ...]]:
    """The input shapes ``find_conv_bn_pairs`` was called with."""
    sizes, original = [], _lrp_canonizers.find_conv_bn_pairs

    def spy(model, example):
        sizes.append(tuple(example.shape))
        return original(model, example)

    monkeypatch.setattr(_lrp_canonizers, "find_conv_bn_pairs", spy)
    return sizes


def _relevance(model, x, layers):
    with LRPExplainer(model, x[:1]) as ex:
        return ex.relevance(x, torch.tensor([0, 1]), layers, absolute=False, input_relevance=False)[0]


def test_crop_trace_gives_the_full_size_relevance(traced_sizes, monkeypatch):
    model = _randomise_batchnorms(tiny_model("resnet"))
    x = torch.randn(2, 1, 48, 48)
    layers = find_unit_layers(model)
    cropped = _relevance(model, x, layers)
    monkeypatch.setattr(_lrp_canonizers, "TRACE_SIDE", 10_000)  # no crop: the trace runs on x[:1] itself
    full = _relevance(model, x, layers)
    assert traced_sizes == [(1, 1, 32, 32), (1, 1, 48, 48)]
    for layer in layers:
        torch.testing.assert_close(cropped[layer.name], full[layer.name], rtol=0, atol=0, msg=layer.name)


def test_a_model_that_refuses_the_crop_is_traced_at_full_size(traced_sizes):
    torch.manual_seed(0)
    model = _randomise_batchnorms(nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 40 * 40, 2)).eval())
    model.medprune_spec = {"img_size": 40}  # the size find_unit_layers traces the units at
    x = torch.randn(2, 1, 40, 40)
    units = _relevance(model, x, find_unit_layers(model))
    assert traced_sizes == [(1, 1, 32, 32), (1, 1, 40, 40)]  # the head refused 32 px
    assert all(torch.isfinite(u).all() and u.abs().sum() > 0 for u in units.values())


class _ConvFeedsTwo(nn.Module):
    """A conv whose output feeds its BatchNorm and a skip: merging the BatchNorm changes the skip."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))

    def forward(self, x):
        y = self.conv(x)
        return self.head(self.bn(y) + y)


@pytest.mark.parametrize("side", [16, 48])  # checked on the first batch / on the trace's crop
def test_canonizing_that_changes_the_logits_is_refused_and_undone(side):
    torch.manual_seed(0)
    model = _randomise_batchnorms(_ConvFeedsTwo().eval())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 1, side, side)
    with pytest.raises(ModelError, match="changed its logits"):
        with LRPExplainer(model, x[:1], copy=False) as ex:
            ex.relevance(x)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all("forward" not in m.__dict__ for m in model.modules())
