"""Physical removal: masked == removed on tiny VGG/ResNet/ViT, coupling, heads, rounding, save/load, errors."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import tiny_model
from toolchain.errors import ConfigError, ModelError
from toolchain.units import find_unit_layers


def masked_model(model, keep):
    from toolchain.masking import MaskSet, apply_masks

    layers = [layer for layer in find_unit_layers(model) if layer.name in keep]
    return apply_masks(model, MaskSet(keep=keep, layers=layers, meta={}))


def _model(family):
    model = tiny_model(family)
    gen = torch.Generator().manual_seed(3)
    for mod in model.modules():  # non-trivial BN so a forgotten BN shift would show
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-1, 1, generator=gen)
            mod.running_var.uniform_(0.5, 2, generator=gen)
            mod.weight.data.uniform_(0.5, 1.5, generator=gen)
            mod.bias.data.uniform_(-1, 1, generator=gen)
    return model


def _random_keep(model, p=0.5, seed=1):
    gen = torch.Generator().manual_seed(seed)
    keep = {}
    for layer in find_unit_layers(model):
        k = torch.rand(layer.size, generator=gen) > p
        k[0] = True
        keep[layer.name] = k
    return keep


def _x(n=4, seed=0):
    return torch.randn(n, 1, 16, 16, generator=torch.Generator().manual_seed(seed))


def _max_diff(a, b, x):
    with torch.no_grad():
        return float((a(x) - b(x)).abs().max())


def test_neuron_parity(tiny_family):
    from toolchain.removal import remove_units

    model = _model(tiny_family)
    keep = _random_keep(model)
    pruned, report = remove_units(model, keep, _x())
    assert report["params_after"] < report["params_before"]
    assert report["parity_max_abs"] <= 1e-4
    assert _max_diff(masked_model(model, keep), pruned, _x(6, seed=9)) <= 1e-4  # unseen inputs too
    assert report["units"]["removed"] > 0
    assert 0 < report["removable_fraction"] <= 1


def test_group_parity_and_consistency(tiny_family):
    from toolchain.removal import group_masks, remove_units

    model = _model(tiny_family)
    layers = find_unit_layers(model)
    scores = {layer.name: torch.rand(layer.size, generator=torch.Generator().manual_seed(i))
              for i, layer in enumerate(layers)}
    masks = group_masks(model, scores, layers, 0.5, _x())
    assert abs(masks.meta["achieved_ratio"] - 0.5) < 0.1
    pruned, report = remove_units(model, masks, _x(), granularity="group")
    assert report["units"]["kept_masked"] == 0  # masking and removal agree exactly
    assert report["units"]["removed"] == report["units"]["masked"] > 0
    assert _max_diff(masked_model(model, masks.keep), pruned, _x(6, seed=9)) <= 1e-4


def test_group_masker_analyses_once_and_matches_group_masks(monkeypatch):
    from toolchain.removal import GroupMasker, group, group_masks

    model = _model("resnet")
    layers = find_unit_layers(model)
    scores = {layer.name: torch.rand(layer.size, generator=torch.Generator().manual_seed(i))
              for i, layer in enumerate(layers)}
    calls = []
    real = group.analyse
    monkeypatch.setattr(group, "analyse", lambda *a, **k: calls.append(1) or real(*a, **k))
    masker = GroupMasker(model, scores, layers, _x(), round_to=4)
    many = {r: masker.masks(r) for r in (0.0, 0.2, 0.5, 0.8)}
    assert len(calls) == 1  # one graph analysis for every ratio
    for r, m in many.items():
        ref = group_masks(model, scores, layers, r, _x(), round_to=4)
        assert all(torch.equal(m.keep[k], ref.keep[k]) for k in ref.keep)
        assert m.meta == ref.meta
    assert many[0.0].meta["achieved_ratio"] == 0.0 < many[0.2].meta["achieved_ratio"] < many[0.5].meta[
        "achieved_ratio"] < many[0.8].meta["achieved_ratio"]
    with pytest.raises(ConfigError, match="ratio"):
        masker.masks(1.0)


def test_resnet_residual_coupling_neuron():
    from toolchain.removal import remove_units

    model = _model("resnet")
    keep = _random_keep(model)
    pruned, report = remove_units(model, keep, _x())
    rows = report["layers"]
    # residual-coupled channels stay masked, bottleneck-internal ones are all removed
    assert rows["layer1.0.conv1"]["kept_masked"] == 0 and rows["layer1.0.conv1"]["removed"] > 0
    assert rows["layer2.0.conv3"]["kept_masked"] > 0 and rows["layer2.0.conv3"]["reason"]
    for blk in ("layer1.0", "layer2.0", "layer3.0", "layer4.0"):
        b = pruned.get_submodule(blk)
        assert b.conv3.out_channels == b.downsample[0].out_channels == b.bn3.num_features
        assert b.conv1.out_channels == b.bn1.num_features == b.conv2.in_channels
    with torch.no_grad():
        assert pruned(_x()).shape == (4, 2)


def test_group_granularity_refuses_split_masks():
    from toolchain.removal import remove_units

    model = _model("resnet")
    keep = {"layer1.0.conv3": torch.ones(32, dtype=torch.bool)}
    keep["layer1.0.conv3"][3] = False  # downsample.0 keeps channel 3
    with pytest.raises(ConfigError, match="split the coupled group"):
        remove_units(model, keep, _x(), granularity="group")


def test_head_removal_changes_num_heads_and_runs():
    from toolchain.removal import remove_units

    model = _model("vit")
    keep = {"blocks.0.attn": torch.tensor([True, False, True, False])}
    pruned, report = remove_units(model, keep, _x())
    attn = pruned.blocks[0].attn
    assert attn.num_heads == 2 and attn.head_dim == 8
    assert attn.qkv.out_features == 48 and attn.proj.in_features == 16
    assert attn.num_heads * attn.head_dim != pruned.embed_dim  # the case old timm reshapes got wrong
    assert report["module_attrs"] == {"blocks.0.attn": {"num_heads": 2, "attn_dim": 16}}
    assert _max_diff(masked_model(model, keep), pruned, _x()) <= 1e-5


def test_head_rows_follow_torch_pruning_mapping():
    """q, k and v rows of a head map to exactly that head's proj input columns."""
    import torch_pruning as tp

    from toolchain.removal.graph import build_graph
    from toolchain.removal.heads import head_rows

    model = _model("vit")
    attn = model.blocks[1].attn
    dg = build_graph(model, _x())
    group = dg.get_pruning_group(attn.qkv, tp.prune_linear_out_channels, head_rows(attn.qkv, [2], 8))
    proj_items = [it for it in group if it.dep.target.module is attn.proj]
    assert sorted(proj_items[0].idxs) == list(range(16, 24))


def test_mlp_unit_removal():
    from toolchain.removal import remove_units

    model = _model("vit")
    keep = {"blocks.1.mlp.fc1": torch.arange(64) % 4 != 0}
    pruned, report = remove_units(model, keep, _x())
    assert pruned.blocks[1].mlp.fc1.out_features == 48 == pruned.blocks[1].mlp.fc2.in_features
    assert report["layers"]["blocks.1.mlp.fc1"]["removed"] == 16
    assert _max_diff(masked_model(model, keep), pruned, _x()) <= 1e-5


def test_constants_are_folded_not_dropped(monkeypatch):
    """A masking that leaves biases alone makes masked units emit constants; removal must keep them."""
    import toolchain.removal.remove as remove_mod
    from toolchain.removal import remove_units

    def weights_only(model, keep, layers, example_input=None):
        m = copy.deepcopy(model).eval()
        kinds = {layer.name: layer for layer in layers}
        with torch.no_grad():
            for name, k in keep.items():
                mod, drop = m.get_submodule(name), (~k).nonzero().flatten()
                if kinds[name].kind == "head":
                    hd, d = kinds[name].width, kinds[name].size * kinds[name].width
                    mod.qkv.weight[[c * d + h * hd + i for c in range(3) for h in drop.tolist()
                                    for i in range(hd)]] = 0
                else:
                    mod.weight[drop] = 0
        return m

    monkeypatch.setattr(remove_mod, "masked_copy", weights_only)
    for family in ("vit", "resnet"):
        model = _model(family)
        for mod in model.modules():
            if isinstance(mod, (nn.Linear, nn.Conv2d)) and mod.bias is not None:
                nn.init.uniform_(mod.bias, -0.5, 0.5)
        keep = _random_keep(model)
        pruned, report = remove_units(model, keep, _x())
        assert report["folded_constants"] > 0
        assert _max_diff(weights_only(model, keep, find_unit_layers(model)), pruned, _x(6, 9)) <= 1e-4


def test_round_to_group_masks_and_neuron_padding():
    from toolchain.removal import group_masks, remove_units

    model = _model("resnet")
    layers = find_unit_layers(model)
    scores = {layer.name: torch.rand(layer.size) for layer in layers}
    masks = group_masks(model, scores, layers, 0.5, _x(), round_to=8)
    for name, k in masks.keep.items():
        assert int(k.sum()) % 8 == 0 or int(k.sum()) == k.numel(), name
    pruned, report = remove_units(model, masks, _x(), granularity="group")
    for name, row in report["layers"].items():
        assert row["after"] % 8 == 0 or row["after"] == row["size"], name

    keep = _random_keep(model)
    pruned, report = remove_units(model, keep, _x(), round_to=8)
    assert pruned.layer4[0].conv1.out_channels % 8 == 0
    assert report["units"]["padding"] >= 0
    assert _max_diff(masked_model(model, keep), pruned, _x()) <= 1e-4
    # with scores, the padding units are restored (unmasked) instead of kept zeroed
    pruned2, report2 = remove_units(model, keep, _x(), round_to=8, scores=scores)
    assert report2["units"]["masked"] <= report["units"]["masked"]
    assert _max_diff(masked_model(model, report2["keep"]), pruned2, _x()) <= 1e-4


def test_adapter_matches_group_scores():
    from toolchain.removal.adapter import UnitScoreImportance
    from toolchain.removal.graph import analyse
    from toolchain.removal.group import _scores_per_unit
    from toolchain.removal.remove import group_unit_scores

    for family in ("resnet", "vit"):
        model = _model(family)
        layers = find_unit_layers(model)
        scores = {layer.name: torch.rand(layer.size) for layer in layers}
        an = analyse(model, layers, _x())
        imp = UnitScoreImportance(scores, layers, model)
        for ug in an.groups:
            if ug.blockers:
                continue
            assert torch.allclose(_scores_per_unit(ug, imp, an.dg), group_unit_scores(ug, scores))


@pytest.mark.parametrize("case", ["unknown", "size", "empty"])
def test_bad_masks(case):
    from toolchain.removal import remove_units

    model = _model("vgg")
    keep = {"unknown": {"nope.conv": torch.ones(3, dtype=torch.bool)},
            "size": {"features.0": torch.ones(5, dtype=torch.bool)},
            "empty": {"features.0": torch.zeros(8, dtype=torch.bool)}}[case]
    with pytest.raises(ConfigError, match="nope.conv|5 units|removes all") as exc:
        remove_units(model, keep, _x())
    assert "\n" not in str(exc.value)


def test_bad_options():
    from toolchain.removal import group_masks, remove_units

    model = _model("vgg")
    with pytest.raises(ConfigError, match="granularity"):
        remove_units(model, {}, _x(), granularity="channel")
    with pytest.raises(ConfigError, match="ratio"):
        group_masks(model, {}, None, 1.5, _x())


class _F(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.flip(1)  # mixes channels: Torch-Pruning would wrongly call it element-wise

    @staticmethod
    def backward(ctx, g):
        return g.flip(1)


class _Custom(nn.Module):
    def __init__(self, groups=1):
        super().__init__()
        self.a = nn.Conv2d(1, 8, 3)
        self.b = nn.Conv2d(8, 8, 3, groups=groups)
        self.c = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        h = self.a(x)
        if self.b.groups == 1:
            h = _F.apply(h)
        return self.c(self.b(h)).mean((2, 3))


@pytest.mark.parametrize("groups,match", [(1, "FBackward"), (2, "grouped conv 'b'")])
def test_unsupported_ops_in_group(groups, match):
    from toolchain.removal import remove_units

    model = _Custom(groups).eval()
    keep = {"a": torch.tensor([True, False] * 4)}
    with pytest.raises(ModelError, match=match) as exc:
        remove_units(model, keep, torch.randn(2, 1, 12, 12))
    assert "\n" not in str(exc.value)


def test_save_and_reload_pruned(tmp_path):
    from toolchain.models import load_checkpoint
    from toolchain.models.registry import build_model
    from toolchain.removal import remove_units, save_pruned

    model = build_model("vit_b16", 2, in_chans=1, img_size=16, embed_dim=32, depth=2, num_heads=4,
                        patch_size=4).eval()
    keep = {"blocks.0.attn": torch.tensor([True, False, True, True]),
            "blocks.1.mlp.fc1": torch.arange(128) % 3 != 0}
    pruned, report = remove_units(model, keep, _x())
    path = save_pruned(tmp_path / "pruned.safetensors", pruned, {"class_names": ["a", "b"]}, report,
                       {"criterion": "magnitude", "ratio": 0.3, "granularity": "neuron", "round_to": None})
    loaded, meta = load_checkpoint(path)
    assert meta["pruning"]["module_attrs"]["blocks.0.attn"]["num_heads"] == 3
    assert loaded.blocks[0].attn.num_heads == 3
    assert _max_diff(pruned, loaded, _x()) == 0.0
    assert not list(tmp_path.glob("*.pt*"))


def test_compare_models_reports_ratios():
    from toolchain.removal import compare_models, remove_units

    model = _model("vgg")
    pruned, _ = remove_units(model, _random_keep(model), _x())
    res = compare_models(model, pruned, _x(1), batch_sizes=(1, 2), repeats=3, warmup=1)
    assert res["params"]["ratio"] > 1 and res["macs"]["ratio"] > 1 and res["size_bytes"]["ratio"] > 1
    assert set(res["latency"]) == {"batch1", "batch2"}
    assert res["latency"]["batch1"]["speedup"] > 0


def test_parity_on_real_images(shared_data, tiny_family):
    """Real PneumoniaMNIST test images (centre 16x16 crop for the tiny models)."""
    from toolchain.removal import remove_units

    data = np.load(shared_data / "medmnist" / "pneumoniamnist.npz")
    imgs = torch.from_numpy(data["test_images"][:16, 6:22, 6:22]).float().div(255).sub(0.5).div(0.25)
    x = imgs[:, None]
    model = _model(tiny_family)
    keep = _random_keep(model, p=0.6)
    pruned, report = remove_units(model, keep, x)
    assert _max_diff(masked_model(model, keep), pruned, x) <= 1e-4


def test_unsupported_op_left_masked_when_not_strict():
    """Neuron granularity may keep such units zeroed in place; remove_units checks parity itself."""
    from toolchain.removal import remove_units

    model = _Custom(1).eval()
    keep = {"a": torch.tensor([True, False] * 4)}
    pruned, report = remove_units(model, keep, torch.randn(2, 1, 12, 12), strict=False)
    assert pruned.a.out_channels == 8
    assert "FBackward" in json.dumps(report, default=str)
