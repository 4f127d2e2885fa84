"""Relevance-flow diagnostic: corner share on known maps, gradient baselines, flow on a tiny ResNet."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from benchmarks.studies import relevance_flow as rf  # noqa: E402
from tests.conftest import tiny_model  # noqa: E402
from toolchain.fidelity import heatmaps  # noqa: E402


def test_corner_share_of_known_maps():
    uniform = torch.ones(2, 16, 16)
    corner = torch.zeros(2, 16, 16)
    corner[:, 0, 0] = -3.0  # sign does not matter: shares are of |relevance|
    assert rf.corner_share(uniform) == pytest.approx([1 / 16, 1 / 16])
    assert rf.corner_share(corner) == pytest.approx([1.0, 1.0])
    assert rf.corner_share(torch.ones(1, 2, 16, 16)) == pytest.approx([1 / 16])  # channels are summed first


def test_gradient_maps_on_a_linear_model_are_exact():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(2 * 4 * 4, 3, bias=False))
    x, y = torch.randn(5, 2, 4, 4), torch.tensor([0, 1, 2, 0, 1])
    gxi = rf.gradient_maps(model, x, y)
    ig = rf.gradient_maps(model, x, y, steps=8)
    assert gxi.shape == (5, 4, 4)
    # a linear model's gradient does not depend on the input: IG == gradient x input == the logit decomposed
    torch.testing.assert_close(ig, gxi)
    torch.testing.assert_close(gxi.sum((1, 2)), model(x).gather(1, y[:, None]).squeeze(1).detach())


def test_flow_on_a_tiny_resnet():
    model = tiny_model("resnet", img_size=32)
    torch.manual_seed(1)
    x, y = torch.rand(4, 1, 32, 32), torch.tensor([0, 1, 0, 1])
    flow = rf.relevance_flow(model, x, y)
    stages = {s["stage"]: s for s in flow["stages"]}
    assert {"layer1", "layer2", "layer3", "layer4"} <= set(stages)
    assert stages["layer4"]["hw"] == [1, 1] and stages["layer4"]["share_at_00"] == pytest.approx(1.0)
    assert all(0.0 <= s["share_at_00"] <= 1.0 + 1e-9 for s in stages.values())
    blocks = flow["projection_blocks"]
    assert [b["block"] for b in blocks] == ["layer1.0", "layer2.0", "layer3.0", "layer4.0"]
    assert all(0.0 <= b["shortcut_share"] <= 1.0 for b in blocks)
    # the flow's input map is the heatmap fidelity uses, and the model is left untouched
    expected = rf.corner_share(heatmaps(model, x, y)).mean()
    assert flow["input_corner_share"] == pytest.approx(float(expected), rel=1e-5)
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())


def test_findings_explain_a_corner_only_when_there_is_one():
    def run(share, shortcut_share):
        return {"model": "resnet50", "dataset": "d", "methods": {
            "lrp:epsilon_plus_flat": {"corner_share_mean": share}, "grad_x_input": {"corner_share_mean": 0.07},
            "lrp:epsilon": {"corner_share_mean": 0.08}},
            "flow": {"stages": [{"stage": "layer3", "hw": [2, 2], "share_at_00": 0.9}, {"stage": "layer4", "hw": [1, 1], "share_at_00": 1.0}],
                     "projection_blocks": [{"block": "layer4.0", "out_hw": [1, 1], "shortcut_share": shortcut_share}]}}

    biased, even = rf.findings({"runs": [run(0.6, 0.99), run(0.07, 0.5)]})
    assert "60.0%" in biased and "99.0% of its relevance into the shortcut" in biased
    assert "layer3 output keeps 90.0%" in biased
    assert "No corner bias" in even and "shortcut" not in even
