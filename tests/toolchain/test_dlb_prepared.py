"""DLB scores the caller's model in place (no deep copy): same relevance as on a frozen copy, model restored."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import tiny_model
from toolchain.importance import get_criterion
from toolchain.importance.dlb import backtrace, prepare
from toolchain.units import find_unit_layers, reduce_to_units


@pytest.mark.parametrize("family", ["vgg", "resnet", "vit"])
def test_in_place_scores_equal_the_copy_and_the_model_is_restored(family):
    model = tiny_model(family)
    layers = find_unit_layers(model)  # (traces the model: modes are set after it)
    model.train()  # modes, flags and the attention path must come back as they were
    model.get_submodule(next(n for n, m in model.named_modules() if n and not list(m.children()))).eval()
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False
    first = next(model.parameters())
    first.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    torch.manual_seed(4)
    x = torch.randn(3, 1, 16, 16)
    scores = get_criterion("dlb", batch_size=2)(model, x, None, layers)
    assert [m.training for m in model.modules()] == modes and [p.requires_grad for p in model.parameters()] == flags
    assert all(m.fused_attn is False for m in model.modules() if hasattr(m, "fused_attn"))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    work = prepare(model)  # the frozen deep copy the criterion used before
    expected = {ly.name: torch.zeros(ly.size, dtype=torch.float64) for ly in layers}
    for lo in (0, 2):
        bt = backtrace(work, x[lo:lo + 2], None, capture=layers)
        for ly in layers:
            expected[ly.name] += reduce_to_units(bt.relevance[ly.name], ly).sum(0).double()
    for ly in layers:
        assert torch.equal(scores[ly.name], expected[ly.name].float()), ly.name
