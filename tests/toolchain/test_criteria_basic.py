"""magnitude, random, taylor, ig: one finite score per unit on every family; IG completeness; options."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import tiny_model
from toolchain.errors import ConfigError
from toolchain.importance import available, get_criterion
from toolchain.units import find_unit_layers, get_module

FAST = {"magnitude": {}, "random": {}, "taylor": {}, "ig": {"n_steps": 2}, "ig_input": {"n_steps": 2, "path": "input"}}


def _inputs(n=2, size=16):
    torch.manual_seed(1)
    return torch.randn(n, 1, size, size)


def test_registered():
    assert {"magnitude", "random", "taylor", "ig"} <= set(available())


@pytest.mark.parametrize("key", list(FAST))
def test_one_finite_score_per_unit(tiny_family, key):
    model = tiny_model(tiny_family)
    layers = find_unit_layers(model)
    name = key.split("_")[0]
    crit = get_criterion(name, batch_size=2, **FAST[key])
    n = 1 if name == "ig" else 2  # IG costs layers x steps passes per image: keep it to one image
    x = _inputs(n) if crit.needs_data else None
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scores = crit(model, x, torch.tensor([0, 1])[:n], layers)
    assert set(scores) == {ly.name for ly in layers}
    for ly in layers:
        assert scores[ly.name].shape == (ly.size,)
        assert torch.isfinite(scores[ly.name]).all()
        assert (scores[ly.name] >= 0).all()
    # attribution must leave the model untouched (weights, grad flags, in-place activations)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())


def test_magnitude_is_l1_of_unit_weights():
    model = tiny_model("vit")
    layers = find_unit_layers(model)
    s = get_criterion("magnitude")(model, None, None, layers)
    fc1 = get_module(model, "blocks.0.mlp.fc1")
    assert torch.allclose(s["blocks.0.mlp.fc1"], fc1.weight.abs().sum(1))
    attn = get_module(model, "blocks.0.attn")
    hd, dim = attn.head_dim, attn.qkv.out_features // 3
    rows = [attn.qkv.weight[p * dim + hd : p * dim + 2 * hd] for p in range(3)]  # head 1
    expected = (sum(r.abs().sum() for r in rows) + attn.proj.weight[:, hd : 2 * hd].abs().sum()) / (4 * hd)
    assert torch.allclose(s["blocks.0.attn"][1], expected)


def test_random_is_seeded():
    model = tiny_model("vgg")
    layers = find_unit_layers(model)
    a = get_criterion("random", seed=3)(model, None, None, layers)
    b = get_criterion("random", seed=3)(model, None, None, layers)
    c = get_criterion("random", seed=4)(model, None, None, layers)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_taylor_matches_hand_computed_a_times_g():
    model = tiny_model("vgg")
    layer = find_unit_layers(model)[1]  # features.3
    x, y = _inputs(), torch.tensor([1, 0])
    conv = get_module(model, layer.hook)
    store = {}
    handle = conv.register_forward_hook(lambda _m, _i, o: store.setdefault("a", o))
    # hand computation with in-place ReLUs off, as the criterion does
    for m in model.modules():
        if hasattr(m, "inplace"):
            m.inplace = False
    logits = model(x)
    handle.remove()
    g = torch.autograd.grad(logits.gather(1, y[:, None]).sum(), store["a"])[0]
    expected = (store["a"] * g).abs().sum((0, 2, 3)).detach()
    for m in model.modules():
        if hasattr(m, "inplace"):
            m.inplace = True
    got = get_criterion("taylor", batch_size=1)(model, x, y, [layer])[layer.name]
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-6)


def test_targets_none_uses_predicted_class():
    model = tiny_model("vit")
    layers = find_unit_layers(model)
    x = _inputs()
    pred = model(x).argmax(1)
    a = get_criterion("taylor")(model, x, None, layers)
    b = get_criterion("taylor")(model, x, pred, layers)
    assert all(torch.allclose(a[k], b[k]) for k in a)


@pytest.mark.parametrize("family", ["vgg", "vit"])
def test_ig_completeness(family):
    """At a layer every path goes through (a cut), IG's attributions sum to f(x) - f(baseline)."""
    model = tiny_model(family)
    layers = find_unit_layers(model)
    layer = layers[0] if family == "vgg" else next(ly for ly in layers if ly.kind == "mlp")
    crit = get_criterion("ig", n_steps=32)
    x, y = _inputs(), torch.tensor([0, 1])
    _, delta = crit.layer_attribution(model, x, y, layer, return_convergence_delta=True)
    out = model(x).gather(1, y[:, None]).squeeze(1)
    if family == "vgg":  # features.0 is a cut: the delta is only the quadrature error
        assert delta.abs().max() < 1e-3 * max(1.0, float(out.detach().abs().max()))
    else:  # fc1 is not a cut (residual stream); the delta is finite but need not vanish
        assert torch.isfinite(delta).all()


def test_ig_input_path_close_to_layer_path():
    model = tiny_model("vgg")
    layers = find_unit_layers(model)
    x = _inputs()
    a = get_criterion("ig", n_steps=8)(model, x, None, layers)
    b = get_criterion("ig", n_steps=16, path="input")(model, x, None, layers)
    for ly in layers:
        corr = torch.corrcoef(torch.stack([a[ly.name], b[ly.name]]))[0, 1]
        assert corr > 0.95


@pytest.mark.parametrize(
    "name,options",
    [("ig", {"n_steps": 1}), ("ig", {"baseline": "blurry"}), ("ig", {"method": "simpson"}), ("ig", {"path": "x"}),
     ("taylor", {"foo": 1}), ("random", {"seed": "a"}), ("nope", {})],
)
def test_bad_options_fail_early(name, options):
    with pytest.raises(ConfigError):
        get_criterion(name, **options)


def test_data_criteria_refuse_missing_inputs():
    model = tiny_model("vgg")
    with pytest.raises(ConfigError):
        get_criterion("taylor")(model, None, None, find_unit_layers(model))


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["vgg19", "resnet50", "vit_b16"])
def test_real_architectures(arch):
    """The paper models (at 32 px, the CPU configuration) get one finite score per unit."""
    from toolchain.models import build_model

    model = build_model(arch, 2, in_chans=1, img_size=32).eval()
    layers = find_unit_layers(model)
    x = torch.randn(1, 1, 32, 32)
    for name, opts in (("magnitude", {}), ("random", {}), ("taylor", {}), ("ig", {"n_steps": 2, "path": "input"})):
        scores = get_criterion(name, batch_size=1, **opts)(model, x, None, layers)
        for ly in layers:
            assert scores[ly.name].shape == (ly.size,) and torch.isfinite(scores[ly.name]).all()


def test_ig_without_targets_explains_the_predicted_class():
    model = tiny_model("vgg")
    layers = find_unit_layers(model)
    x = _inputs(3)
    pred = model(x).argmax(1)
    crit = get_criterion("ig", n_steps=4, internal_batch_size=5)  # several chunks of steps
    a, b = crit(model, x, None, layers), crit(model, x, pred, layers)
    assert all(torch.allclose(a[k], b[k]) for k in a)
    assert not all(torch.allclose(a[k], crit(model, x, 1 - pred, layers)[k]) for k in a)
