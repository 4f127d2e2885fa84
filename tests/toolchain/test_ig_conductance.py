"""IG's one-pass conductance (``path="input"``) against captum's LayerConductance at every unit layer."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import tiny_model
from toolchain.importance import get_criterion
from toolchain.importance._hooks import frozen_params, no_inplace
from toolchain.units import find_unit_layers, get_module


@pytest.mark.parametrize("family", ["vgg", "vit"])
def test_conductance_matches_captum_layer_conductance(family):
    """medprune sums ``(a_i - a_{i-1}) * g_i`` (gradient at the end of each step); captum's LayerConductance
    takes the gradient at the start of each step, so on the reversed path (image to baseline) it is minus
    ours. Several chunks of steps (internal batch 7 for 3 images: 2 steps a chunk) cross chunk borders."""
    from captum.attr import LayerConductance

    model = tiny_model(family).double()
    layers = find_unit_layers(model)
    torch.manual_seed(2)
    x = torch.randn(3, 1, 16, 16, dtype=torch.float64)
    targets = torch.tensor([0, 1, 1])
    crit = get_criterion("ig", n_steps=6, internal_batch_size=7)
    with no_inplace(model), frozen_params(model):
        ours = crit.conductance(model, x, targets, layers)
        for ly in layers:
            ref = LayerConductance(model, get_module(model, ly.hook)).attribute(
                torch.zeros_like(x), baselines=x, target=targets, n_steps=6, method="riemann_trapezoid",
                attribute_to_layer_input=ly.port == "input")
            assert ours[ly.name].shape == ref.shape
            # captum's alphas are float32 (1/6 -> 0.16666667163): agreement to ~1e-8 of the layer's largest value
            scale = float(ref.detach().abs().max())
            assert torch.allclose(ours[ly.name], -ref, rtol=0, atol=1e-6 * scale), ly.name
    assert any(ours[ly.name].abs().max() > 0 for ly in layers)


def test_unit_scores_do_not_depend_on_chunking():
    """Steps in one internal batch or in chunks of one step: the same unit scores (summation noise only)."""
    model = tiny_model("resnet")
    layers = find_unit_layers(model)
    torch.manual_seed(3)
    x = torch.randn(2, 1, 16, 16)
    whole = get_criterion("ig", n_steps=5)(model, x, None, layers)
    chunked = get_criterion("ig", n_steps=5, internal_batch_size=2)(model, x, None, layers)
    for ly in layers:
        assert torch.allclose(whole[ly.name], chunked[ly.name], rtol=1e-5, atol=1e-6 * float(whole[ly.name].abs().max()))


@pytest.mark.parametrize("baseline", ["zero", "mean"])
def test_baseline_in_the_first_chunk_equals_its_own_pass(baseline):
    """Given targets, the baseline rides in the first chunk's batch; without them it comes from the no-grad
    pass that finds the predicted classes: the same conductance either way (float summation noise only)."""
    model = tiny_model("vgg").double()
    layers = find_unit_layers(model)
    torch.manual_seed(6)
    x = torch.randn(3, 1, 16, 16, dtype=torch.float64)
    crit = get_criterion("ig", n_steps=5, internal_batch_size=8, baseline=baseline)
    with no_inplace(model), frozen_params(model):
        with torch.no_grad():
            predicted = model(x).argmax(1)
        riding = crit.conductance(model, x, predicted, layers)
        own = crit.conductance(model, x, None, layers)
    for ly in layers:
        torch.testing.assert_close(riding[ly.name], own[ly.name], rtol=1e-9, atol=1e-12)


def test_chunks_hold_at_most_the_internal_batch_with_the_baseline():
    crit = get_criterion("ig", n_steps=7, internal_batch_size=10)
    sizes = [len(steps) * 3 + (1 if i == 0 else 0) for i, steps in enumerate(crit._chunks(3, 1, torch.float32))]
    assert sizes == [10, 9, 3] and all(s <= 10 for s in sizes)
    steps = torch.cat(list(crit._chunks(3, 1, torch.float32)))
    assert steps.tolist() == list(range(1, 8))
    # a step that alone exceeds the batch still goes through, one step a chunk
    assert [len(s) for s in get_criterion("ig", n_steps=3, internal_batch_size=2)._chunks(3, 1, torch.float32)] == [1, 1, 1]


def test_conductance_at_a_batchnorm_before_an_in_place_residual_add():
    """timm's Bottleneck adds the shortcut in place to bn3's output (``x += shortcut``): the criterion must read
    bn3's own output, not the residual sum (it did before it captured copies). Reference: captum's
    LayerConductance with the module's output copied before the add (``_copied_output``)."""
    from captum.attr import LayerConductance

    from toolchain.importance.ig import _copied_output

    model = tiny_model("resnet").double()
    torch.manual_seed(7)
    for m in model.modules():  # timm zero-initialises bn3's weight: give every BN a non-trivial affine map
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.2)
    layers = find_unit_layers(model)
    assert any(ly.hook.endswith("bn3") for ly in layers)
    x = torch.randn(2, 1, 16, 16, dtype=torch.float64)
    targets = torch.tensor([1, 0])
    crit = get_criterion("ig", n_steps=5)
    with frozen_params(model):
        ours = crit.conductance(model, x, targets, layers)
        with no_inplace(model):
            for ly in layers:
                with _copied_output(model, ly) as module:
                    ref = LayerConductance(model, module).attribute(
                        torch.zeros_like(x), baselines=x, target=targets, n_steps=5, method="riemann_trapezoid")
                scale = float(ref.detach().abs().max())
                assert scale > 0, ly.name
                assert torch.allclose(ours[ly.name], -ref, rtol=0, atol=1e-6 * scale), ly.name
