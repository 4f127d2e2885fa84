"""Masks: ranking (global/layer/l1), never-empty layers, exact zeroing == deletion, persistence, errors."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from tests.conftest import tiny_model
from toolchain.errors import ConfigError
from toolchain.masking import MaskSet, apply_masks, build_masks, conv_followers, mask_report
from toolchain.units import UnitLayer, find_unit_layers, get_module, reduce_to_units


def _seq_net() -> nn.Sequential:
    """conv-bn-relu-conv-bn-relu-pool-linear with non-trivial BN statistics and affine parameters."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3),
    )
    for bn in (net[1], net[4]):
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.5, 0.5)
        bn.running_mean.uniform_(-0.3, 0.3)
        bn.running_var.uniform_(0.5, 2.0)
    return net.eval()


def _layers(size_a=4, size_b=6):
    return [UnitLayer("a", "conv", size_a, "a", "output", 1), UnitLayer("b", "conv", size_b, "b", "output", 1)]


def test_global_ranking_prunes_lowest():
    layers = _layers()
    scores = {"a": torch.tensor([0.1, 5.0, 0.2, 6.0]), "b": torch.tensor([1.0, 2.0, 3.0, 0.05, 7.0, 8.0])}
    m = build_masks(scores, layers, 0.4)  # 4 of 10 units
    assert m.keep["a"].tolist() == [False, True, False, True]
    assert m.keep["b"].tolist() == [False, True, True, False, True, True]
    assert m.units_pruned == 4 and m.meta["scope"] == "global"


def test_layer_scope_prunes_ratio_of_each_layer():
    layers = _layers()
    scores = {"a": torch.tensor([0.1, 5.0, 0.2, 6.0]), "b": torch.arange(6.0)}
    m = build_masks(scores, layers, 0.5, scope="layer")
    assert (~m.keep["a"]).sum() == 2 and (~m.keep["b"]).sum() == 3
    assert m.keep["b"].tolist() == [False, False, False, True, True, True]


def test_l1_normalisation_changes_global_ranking():
    layers = _layers(2, 2)
    scores = {"a": torch.tensor([100.0, 300.0]), "b": torch.tensor([1.0, 9.0])}
    plain = build_masks(scores, layers, 0.25)  # one unit: the globally smallest, b:0
    assert plain.keep["b"].tolist() == [False, True]
    norm = build_masks(scores, layers, 0.25, normalize="l1")  # a: .25,.75  b: .1,.9 -> still b:0
    assert norm.keep["b"].tolist() == [False, True]
    scores = {"a": torch.tensor([100.0, 100.5]), "b": torch.tensor([1.0, 1.0])}  # l1: a .499,.501  b .5,.5
    assert build_masks(scores, layers, 0.25).keep["b"].tolist() == [False, True]
    assert build_masks(scores, layers, 0.25, normalize="l1").keep["a"].tolist() == [False, True]


def test_never_empties_a_layer_and_meets_quota():
    layers = _layers()
    scores = {"a": torch.zeros(4), "b": torch.ones(6)}
    m = build_masks(scores, layers, 0.6)  # 6 units: a keeps one, so 3 come from b
    assert m.keep["a"].sum() == 1 and m.units_pruned == 6
    high = build_masks(scores, layers, 0.99)
    assert high.keep["a"].sum() == 1 and high.keep["b"].sum() == 1
    assert build_masks(scores, layers, 0.99, scope="layer").keep["a"].sum() == 1


def test_ties_are_deterministic():
    layers = _layers()
    scores = {"a": torch.ones(4), "b": torch.ones(6)}
    a = build_masks(scores, layers, 0.3)
    b = build_masks(scores, layers, 0.3)
    assert all(torch.equal(a.keep[k], b.keep[k]) for k in a.keep)


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, float("nan"), "x"])
def test_bad_ratio_names_value(ratio):
    with pytest.raises(ConfigError, match="ratio"):
        build_masks({"a": torch.ones(4), "b": torch.ones(6)}, _layers(), ratio)


def test_bad_scores_and_options():
    layers = _layers()
    with pytest.raises(ConfigError):
        build_masks({"a": torch.ones(4)}, layers, 0.3)
    with pytest.raises(ConfigError):
        build_masks({"a": torch.ones(3), "b": torch.ones(6)}, layers, 0.3)
    with pytest.raises(ConfigError):
        build_masks({"a": torch.tensor([1.0, float("nan"), 1, 1]), "b": torch.ones(6)}, layers, 0.3)
    with pytest.raises(ConfigError):
        build_masks({"a": torch.ones(4), "b": torch.ones(6)}, layers, 0.3, scope="block")
    with pytest.raises(ConfigError):
        build_masks({"a": torch.ones(4), "b": torch.ones(6)}, layers, 0.3, normalize="l2")


def test_masking_equals_deleting_units_by_hand():
    net = _seq_net()
    layers = find_unit_layers(net)
    assert [ly.name for ly in layers] == ["0", "3"]
    assert conv_followers(net, layers) == {"0": "1", "3": "4"}
    keep_a = torch.tensor([True, False, True, False])
    keep_b = torch.tensor([True, True, False, True, False, True])
    masks = MaskSet(keep={"0": keep_a, "3": keep_b}, layers=layers)
    masked = apply_masks(net, masks)
    # the original is untouched
    assert torch.count_nonzero(net[0].weight[1]) > 0

    small = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(),
        nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3),
    ).eval()
    with torch.no_grad():
        small[0].weight.copy_(net[0].weight[keep_a])
        small[0].bias.copy_(net[0].bias[keep_a])
        small[3].weight.copy_(net[3].weight[keep_b][:, keep_a])
        small[3].bias.copy_(net[3].bias[keep_b])
        for src, dst, k in ((net[1], small[1], keep_a), (net[4], small[4], keep_b)):
            for attr in ("weight", "bias", "running_mean", "running_var"):
                getattr(dst, attr).copy_(getattr(src, attr)[k])
        small[8].weight.copy_(net[8].weight[:, keep_b])
        small[8].bias.copy_(net[8].bias)
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(masked(x), small(x), rtol=1e-5, atol=1e-6)
        # and the masked units' BN outputs are exactly zero
        h = masked[1](masked[0](x))
    assert torch.count_nonzero(h[:, ~keep_a]) == 0


def test_masked_units_emit_exactly_zero(tiny_family):
    model = tiny_model(tiny_family)
    layers = find_unit_layers(model)
    torch.manual_seed(0)
    for m in model.modules():  # timm zero-initialises the last BN of each block: make every unit live
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    scores = {ly.name: torch.rand(ly.size) for ly in layers}
    masks = build_masks(scores, layers, 0.5)
    masked = apply_masks(model, masks)
    followers = conv_followers(masked, layers)
    seen, handles = {}, []
    for ly in layers:
        module = get_module(masked, followers.get(ly.name, ly.hook))
        if ly.port == "output":
            handles.append(module.register_forward_hook(lambda _m, _i, o, n=ly.name: seen.__setitem__(n, o.clone())))
        else:
            handles.append(module.register_forward_pre_hook(lambda _m, i, n=ly.name: seen.__setitem__(n, i[0].clone())))
    with torch.no_grad():
        masked(torch.randn(3, 1, 16, 16))
    for ly in layers:
        dropped = ~masks.keep[ly.name]
        assert dropped.any()
        assert torch.count_nonzero(reduce_to_units(seen[ly.name], ly)[:, dropped]) == 0, ly.name
        assert torch.count_nonzero(reduce_to_units(seen[ly.name], ly)[:, ~dropped]) > 0, ly.name


def test_mask_report_counts_zeroed_parameters():
    net = _seq_net()
    layers = find_unit_layers(net)
    masks = MaskSet(keep={"0": torch.tensor([True, False, True, False]), "3": torch.tensor([True] * 5 + [False])},
                    layers=layers)
    report = mask_report(net, masks)
    masked = apply_masks(net, masks)
    newly_zero = sum(int(((p == 0) & (q != 0)).sum()) for p, q in zip(masked.parameters(), net.parameters(), strict=True))
    assert report["params_zeroed"] == newly_zero
    assert report["units_pruned"] == 3 and report["units_pruned_pct"] == pytest.approx(30.0)
    assert 0 < report["params_zeroed_pct"] < 100


def test_save_load_round_trip(tmp_path, tiny_family):
    model = tiny_model(tiny_family)
    layers = find_unit_layers(model)
    masks = build_masks({ly.name: torch.rand(ly.size) for ly in layers}, layers, 0.3, meta={"criterion": "random"})
    sidecar = masks.save(tmp_path / "m")
    assert sidecar.name == "m.json" and (tmp_path / "m.safetensors").exists()
    assert b"pickle" not in (tmp_path / "m.safetensors").read_bytes()[:200]
    back = MaskSet.load(tmp_path / "m", model=model)
    assert back.layers == masks.layers
    assert all(torch.equal(back.keep[k], masks.keep[k]) for k in masks.keep)
    assert back.meta["criterion"] == "random" and back.meta["ratio"] == 0.3
    assert MaskSet.load(tmp_path / "m.json").units_pruned == masks.units_pruned


def test_load_rejects_mismatch_and_corruption(tmp_path):
    vgg, vit = tiny_model("vgg"), tiny_model("vit")
    layers = find_unit_layers(vgg)
    masks = build_masks({ly.name: torch.rand(ly.size) for ly in layers}, layers, 0.3)
    masks.save(tmp_path / "m")
    with pytest.raises(ConfigError, match="do not match"):
        MaskSet.load(tmp_path / "m", model=vit)
    with pytest.raises(ConfigError, match="do not match"):
        apply_masks(vit, masks)
    narrower = tiny_model("vgg")
    narrower.features[0] = nn.Conv2d(1, 6, 3, padding=1)
    with pytest.raises(ConfigError, match="6"):
        MaskSet.load(tmp_path / "m", model=narrower)
    with pytest.raises(ConfigError, match="not found"):
        MaskSet.load(tmp_path / "absent")
    doc = json.loads((tmp_path / "m.json").read_text())
    (tmp_path / "m.json").write_text(json.dumps({**doc, "sha256": "0" * 64}))
    with pytest.raises(ConfigError, match="sha256"):
        MaskSet.load(tmp_path / "m")
    (tmp_path / "m.json").write_text("{not json")
    with pytest.raises(ConfigError):
        MaskSet.load(tmp_path / "m")
