"""Unit read points (every criterion reads a unit where removal deletes it) and head/MLP score scales."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import tiny_model
from toolchain.importance import get_criterion
from toolchain.masking import build_masks
from toolchain.units import find_unit_layers, get_module, reduce_to_units


def test_conv_units_are_read_after_their_batchnorm():
    layers = {ly.name: ly for ly in find_unit_layers(tiny_model("resnet"))}
    assert layers["conv1"].hook == "bn1"
    assert layers["layer1.0.conv3"].hook == "layer1.0.bn3"
    assert layers["layer1.0.downsample.0"].hook == "layer1.0.downsample.1"
    # without a BatchNorm the conv's own output is the unit
    assert all(ly.hook == ly.name for ly in find_unit_layers(tiny_model("vgg")) if ly.kind == "conv")


def _read_point_outputs(model, layers, x):
    """The tensor at every layer's hook, and the gradient of the summed class-0 logit w.r.t. it.

    The rest of the model gets a copy of each recorded tensor: timm's Bottleneck adds the shortcut to bn3's
    output in place (``x += shortcut``), which would otherwise turn the record into bn3 + shortcut.
    """
    store, handles = {}, []

    def keep(_m, _i, o, name):
        store[name] = o
        return o.clone()

    for ly in layers:
        handles.append(get_module(model, ly.hook).register_forward_hook(lambda m, i, o, n=ly.name: keep(m, i, o, n)))
    for m in model.modules():
        if hasattr(m, "inplace"):
            m.inplace = False
    logits = model(x)
    for h in handles:
        h.remove()
    grads = torch.autograd.grad(logits[:, 0].sum(), [store[ly.name] for ly in layers])
    return store, dict(zip([ly.name for ly in layers], grads, strict=True))


def test_taylor_reads_the_batchnorm_output():
    model = tiny_model("resnet")
    with torch.no_grad():  # BatchNorms that are not the identity, so conv and BN outputs differ
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(-2, 2)
    layers = find_unit_layers(model)
    x = torch.randn(2, 1, 16, 16)
    acts, grads = _read_point_outputs(model, layers, x)
    got = get_criterion("taylor")(model, x, torch.tensor([0, 0]), layers)
    for ly in layers:
        expected = reduce_to_units((acts[ly.name] * grads[ly.name]).detach(), ly).sum(0)
        torch.testing.assert_close(got[ly.name], expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["lrp", "taylor", "dlb", "magnitude"])
def test_global_ranking_prunes_heads_on_a_tiny_vit(name):
    model = tiny_model("vit")
    layers = find_unit_layers(model)
    torch.manual_seed(0)
    x = torch.randn(8, 1, 16, 16)
    scores = get_criterion(name)(model, x, None, layers)
    heads = [ly for ly in layers if ly.kind == "head"]

    def heads_pruned(s):
        masks = build_masks(s, layers, 0.8)
        return sum(int((~masks.keep[ly.name]).sum()) for ly in heads)

    assert heads_pruned(scores) > 0
    # the same scores summed over a head's channels (the old scale) would keep every head
    summed = {k: v * (4 * ly.width if name == "magnitude" else ly.width) for ly in layers for k, v in scores.items()
              if k == ly.name}
    assert heads_pruned(summed) == 0


def test_unit_score_is_the_mean_over_its_channels():
    layer = find_unit_layers(tiny_model("vit"))[0]  # blocks.0.attn: 4 heads of 8 channels
    t = torch.zeros(1, 5, layer.size * layer.width)
    t[..., : layer.width] = 1.0  # head 0: every channel 1 at each of 5 tokens
    torch.testing.assert_close(reduce_to_units(t, layer), torch.tensor([[5.0, 0.0, 0.0, 0.0]]))
