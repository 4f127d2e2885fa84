"""LRP criterion: conservation, canonizers, ViT patching, one finite score per unit, caller untouched."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tests.conftest import tiny_model
from toolchain.errors import ConfigError
from toolchain.importance import get_criterion
from toolchain.importance._lrp_canonizers import canonizers_for, find_conv_bn_pairs
from toolchain.importance._lrp_vit import patch_transformer
from toolchain.importance.lrp import LRPExplainer
from toolchain.units import find_unit_layers


def _small_convnet() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 3, bias=False),
    ).eval()


def _randomise_batchnorms(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(n, generator=g))
            m.bias.data.copy_(torch.randn(n, generator=g))
    return model


@pytest.mark.parametrize("composite", ["epsilon", "epsilon_plus_flat"])
def test_relevance_is_conserved_layer_by_layer(composite):
    model = _small_convnet()
    x = torch.rand(4, 1, 8, 8)
    layers = find_unit_layers(model)
    with LRPExplainer(model, x[:1], composite=composite) as ex:
        units, input_rel, logits = ex.relevance(x, None, layers, absolute=False)
    target_logit = logits.max(1).values
    for name, per_sample in units.items():
        torch.testing.assert_close(per_sample.sum(1), target_logit, rtol=1e-3, atol=1e-5, msg=name)
    torch.testing.assert_close(input_rel.flatten(1).sum(1), target_logit, rtol=1e-3, atol=1e-5)


def test_batchnorm_merge_keeps_outputs():
    torch.manual_seed(0)
    seq = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4), nn.ReLU()
    ).eval()
    resnet = tiny_model("resnet")
    for model in (seq, _randomise_batchnorms(seq), _randomise_batchnorms(resnet)):
        x = torch.randn(2, 1, 16, 16)
        expected = model(x)
        canon = copy.deepcopy(model)
        instances = []
        for canonizer in canonizers_for(find_conv_bn_pairs(canon, x[:1])[0]):
            instances += canonizer.apply(canon)
        merged = [bn for bn in canon.modules() if isinstance(bn, nn.BatchNorm2d) and bool((bn.weight == 1).all())]
        assert merged, "no BatchNorm was merged"
        torch.testing.assert_close(canon(x), expected, rtol=1e-4, atol=1e-5)
        for inst in instances:
            inst.remove()
        torch.testing.assert_close(canon(x), expected, rtol=1e-5, atol=1e-6)


def test_resnet_residual_sum_is_explicit():
    model = _randomise_batchnorms(tiny_model("resnet"))
    with LRPExplainer(model, torch.randn(1, 1, 16, 16)) as ex:
        sums = [n for n, _ in ex.model.named_modules() if n.endswith("canonizer_sum")]
    assert len(sums) == 4  # one per block


def test_vit_patched_copy_keeps_logits_and_conserves_relevance():
    model = tiny_model("vit")
    with torch.no_grad():  # additive constants absorb relevance: remove them for exact conservation
        model.pos_embed.zero_()
        model.cls_token.zero_()
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
    x = torch.randn(3, 1, 16, 16)
    patched = patch_transformer(copy.deepcopy(model))
    torch.testing.assert_close(patched(x), model(x), rtol=1e-4, atol=1e-5)
    layers = find_unit_layers(model)
    with LRPExplainer(model, x[:1]) as ex:
        units, input_rel, logits = ex.relevance(x, torch.tensor([0, 1, 0]), layers, absolute=False)
    target_logit = logits.gather(1, torch.tensor([[0], [1], [0]])).squeeze(1)
    torch.testing.assert_close(input_rel.flatten(1).sum(1), target_logit, rtol=1e-3, atol=1e-5)
    assert set(units) == {layer.name for layer in layers}


def _assert_one_finite_score_per_unit(model, x, composite="epsilon_plus_flat"):
    layers = find_unit_layers(model)
    scores = get_criterion("lrp", composite=composite)(model, x, None, layers)
    assert set(scores) == {layer.name for layer in layers}
    for layer in layers:
        assert scores[layer.name].shape == (layer.size,)
        assert torch.isfinite(scores[layer.name]).all()
        assert (scores[layer.name] >= 0).all()
    assert sum(float(s.sum()) for s in scores.values()) > 0


def test_one_finite_score_per_unit_tiny(tiny_family):
    _assert_one_finite_score_per_unit(tiny_model(tiny_family), torch.randn(2, 1, 16, 16))


@pytest.mark.parametrize("composite", ["epsilon_gamma_box", "epsilon_alpha2_beta1", "epsilon"])
def test_other_composites_score_every_unit(composite):
    model = _randomise_batchnorms(tiny_model("resnet"))  # residual sums + merged BatchNorms
    _assert_one_finite_score_per_unit(model, torch.randn(2, 1, 16, 16), composite)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["vgg19", "resnet50", "vit_b16"])
def test_one_finite_score_per_unit_real_size(arch):
    from toolchain.models import build_model

    torch.manual_seed(0)
    model = build_model(arch, num_classes=2, in_chans=1, img_size=32).eval()
    _assert_one_finite_score_per_unit(model, torch.randn(1, 1, 32, 32))


def test_caller_model_is_untouched(tiny_family):
    model = tiny_model(tiny_family)
    if tiny_family == "resnet":
        _randomise_batchnorms(model)
    model.train()  # the criterion must not leave it in eval either
    state = {k: v.clone() for k, v in model.state_dict().items()}
    inplace = {n: m.inplace for n, m in model.named_modules() if hasattr(m, "inplace")}
    x = torch.randn(2, 1, 16, 16)
    get_criterion("lrp")(model, x, torch.tensor([0, 1]), find_unit_layers(model))
    assert model.training
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert inplace == {n: m.inplace for n, m in model.named_modules() if hasattr(m, "inplace")}
    for m in model.modules():
        assert "forward" not in m.__dict__
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
    assert all(p.requires_grad for p in model.parameters())


def test_targets_choose_the_explained_class():
    model = tiny_model("vgg")
    x = torch.randn(2, 1, 16, 16)
    layers = find_unit_layers(model)
    crit = get_criterion("lrp", composite="epsilon")
    a = crit(model, x, torch.tensor([0, 0]), layers)
    b = crit(model, x, torch.tensor([1, 1]), layers)
    assert any(not torch.allclose(a[k], b[k]) for k in a)


def test_bad_options_fail_early():
    with pytest.raises(ConfigError):
        get_criterion("lrp", composite="nope")
    with pytest.raises(ConfigError):
        get_criterion("lrp", epsilon=-1.0)
    with pytest.raises(ConfigError):
        get_criterion("lrp", colour="red")
    with pytest.raises(ConfigError):
        get_criterion("lrp").attribute(tiny_model("vgg"), None, None, [])


@pytest.mark.parametrize("shift", [0.0, -0.5])  # non-negative input (fast path) and mixed-sign input
def test_nonnegative_zplus_matches_zennit_zplus(shift):
    from zennit.composites import LayerMapComposite
    from zennit.rules import ZPlus

    from toolchain.importance._lrp_canonizers import NonNegativeZPlus

    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(3, 5, 3), nn.Flatten()).eval()
    x = torch.rand(2, 3, 6, 6) + shift
    relevances = []
    for rule in (ZPlus(), NonNegativeZPlus()):
        composite = LayerMapComposite([(nn.Conv2d, rule)])
        with composite.context(conv) as hooked:
            xg = x.clone().requires_grad_(True)
            out = hooked(xg)
            (rel,) = torch.autograd.grad(out, xg, out.detach())
        relevances.append(rel)
    torch.testing.assert_close(relevances[1], relevances[0])


def test_resnet_relevance_is_conserved_through_residual_sums():
    model = tiny_model("resnet")  # fresh BatchNorms merge into bias-free convs: no bias anywhere
    with torch.no_grad():
        model.fc.bias.zero_()
    x = torch.randn(2, 1, 16, 16)
    with LRPExplainer(model, x[:1], composite="epsilon") as ex:
        units, input_rel, logits = ex.relevance(x, None, find_unit_layers(model), absolute=False)
    target_logit = logits.max(1).values
    # without the explicit sums every block would hand its full relevance to both branches
    torch.testing.assert_close(input_rel.flatten(1).sum(1), target_logit, rtol=1e-2, atol=1e-4)
    torch.testing.assert_close(units["conv1"].sum(1), target_logit, rtol=1e-2, atol=1e-4)


@pytest.mark.parametrize("family", ["vgg", "resnet"])
@pytest.mark.parametrize("shift", [0.0, -0.5])  # -0.5: the first conv's bias can make later inputs mixed-sign
def test_fast_rules_match_zennit_hooks(family, shift):
    """``_lrp_rules`` (the default path) gives zennit's EpsilonPlusFlat relevance at every unit and the input."""
    model = _randomise_batchnorms(tiny_model(family))
    torch.manual_seed(2)
    x = torch.rand(3, 1, 16, 16) + shift
    layers = find_unit_layers(model)
    results = []
    for zennit_hooks in (False, True):
        with LRPExplainer(model, x[:1], zennit_hooks=zennit_hooks) as ex:
            assert (ex.composite is not None) == zennit_hooks
            results.append(ex.relevance(x, torch.tensor([0, 1, 1]), layers, absolute=False))
    (fast_units, fast_in, fast_logits), (ref_units, ref_in, ref_logits) = results
    torch.testing.assert_close(fast_logits, ref_logits)
    torch.testing.assert_close(fast_in, ref_in)
    for layer in layers:
        torch.testing.assert_close(fast_units[layer.name], ref_units[layer.name], msg=layer.name)


def test_fast_rules_handle_mixed_sign_conv_inputs():
    """A conv fed by a BatchNorm without ReLU sees negative inputs: the full ZPlus rule, as zennit."""
    torch.manual_seed(0)
    model = _randomise_batchnorms(nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 5, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(5, 2)).eval())
    x = torch.randn(2, 1, 10, 10)
    layers = find_unit_layers(model)
    out = []
    for zennit_hooks in (False, True):
        with LRPExplainer(model, x[:1], zennit_hooks=zennit_hooks) as ex:
            out.append(ex.relevance(x, None, layers, absolute=False))
    for layer in layers:
        torch.testing.assert_close(out[0][0][layer.name], out[1][0][layer.name], msg=layer.name)
    torch.testing.assert_close(out[0][1], out[1][1])


@pytest.mark.parametrize("family", ["vgg", "resnet", "vit"])
def test_unit_relevance_without_input_relevance_is_the_same(family):
    """The criterion's backward stops at the first unit layer (no input relevance): same unit relevance."""
    model = tiny_model(family)
    if family == "resnet":
        _randomise_batchnorms(model)
    x = torch.randn(3, 1, 16, 16)
    layers = find_unit_layers(model)
    with LRPExplainer(model, x[:1]) as ex:
        full, input_rel, _ = ex.relevance(x, None, layers, absolute=False)
        lean, none, _ = ex.relevance(x, None, layers, absolute=False, input_relevance=False)
    assert input_rel is not None and none is None
    for layer in layers:
        torch.testing.assert_close(lean[layer.name], full[layer.name], rtol=0, atol=0, msg=layer.name)
