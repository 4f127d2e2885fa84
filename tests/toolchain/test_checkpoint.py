"""Checkpoints: exact round trip, sidecar validation, no unpickling, NaN refusal, pruned-shape reload."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from toolchain.errors import CheckpointError
from toolchain.models import build_model, load_checkpoint, resize_to_state, save_checkpoint
from toolchain.models.checkpoint import sha256_file

TINY = {
    "vgg": ("vgg19", {"cfg": [8, "M", 16, 16, "M"], "mlp_ratio": 0.01}),
    "resnet": ("resnet50", {"layers": [1, 1, 1, 1], "channels": [8, 16, 16, 32], "stem_width": 8}),
    "vit": ("vit_b16", {"embed_dim": 32, "depth": 2, "num_heads": 4, "patch_size": 4}),
}
META = {"class_names": ["normal", "pneumonia"], "dataset": {"name": "tiny", "fingerprint": "0" * 64},
        "metrics": {"test": {"accuracy": 0.5}}}


def _tiny(family: str) -> nn.Module:
    torch.manual_seed(0)
    name, args = TINY[family]
    model = build_model(name, 2, in_chans=1, img_size=16, **args).eval()
    # non-trivial BN statistics, so a lost buffer would show
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model


def _x() -> torch.Tensor:
    return torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(1))


def _rewrite(weights, mutate, fix_sidecar=True):
    """Change the stored tensors; optionally keep the sidecar consistent (manifest + sha256)."""
    state = load_file(str(weights))
    mutate(state)
    save_file(state, str(weights))
    if fix_sidecar:
        side = weights.with_suffix(".json")
        doc = json.loads(side.read_text())
        doc["tensors"] = {k: {"shape": list(v.shape), "dtype": str(v.dtype)[6:]} for k, v in state.items()}
        doc["weights_sha256"] = sha256_file(weights)
        side.write_text(json.dumps(doc))


def test_round_trip_is_exact(tmp_path, tiny_family):
    model = _tiny(tiny_family)
    path = save_checkpoint(tmp_path / "m.safetensors", model, META)
    assert path.exists() and path.with_suffix(".json").exists()
    side = json.loads(path.with_suffix(".json").read_text())
    assert side["weights_sha256"] == sha256_file(path) and side["tensors"]
    for key in ("arch", "build_args", "num_classes", "in_chans", "img_size", "medprune_version"):
        assert key in side["meta"]
    for ref in (path, path.with_suffix(".json"), tmp_path):
        loaded, meta = load_checkpoint(ref)
        assert not loaded.training
        assert meta["class_names"] == META["class_names"] and meta["metrics"] == META["metrics"]
        with torch.no_grad():
            assert torch.equal(model(_x()), loaded(_x()))
        for k, v in model.state_dict().items():
            assert torch.equal(v, loaded.state_dict()[k]), k
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_missing_sidecar(tmp_path):
    path = save_checkpoint(tmp_path / "m.safetensors", _tiny("vit"), META)
    path.with_suffix(".json").unlink()
    with pytest.raises(CheckpointError, match="sidecar missing"):
        load_checkpoint(path)


def test_weights_swapped_under_sidecar(tmp_path):
    path = save_checkpoint(tmp_path / "m.safetensors", _tiny("vit"), META)
    _rewrite(path, lambda s: s["head.bias"].add_(1.0), fix_sidecar=False)
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(path)


def test_missing_and_extra_keys_are_named(tmp_path):
    path = save_checkpoint(tmp_path / "m.safetensors", _tiny("vit"), META)
    _rewrite(path, lambda s: s.pop("head.bias"))
    with pytest.raises(CheckpointError, match="head.bias"):
        load_checkpoint(path)
    path = save_checkpoint(tmp_path / "m.safetensors", _tiny("vit"), META)
    _rewrite(path, lambda s: s.__setitem__("stowaway.weight", torch.zeros(2)))
    with pytest.raises(CheckpointError, match="stowaway.weight"):
        load_checkpoint(path)


def test_sidecar_manifest_mismatch_is_named(tmp_path):
    path = save_checkpoint(tmp_path / "m.safetensors", _tiny("vit"), META)
    side = path.with_suffix(".json")
    doc = json.loads(side.read_text())
    doc["tensors"]["head.weight"]["shape"] = [7, 7]
    side.write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="head.weight"):
        load_checkpoint(path)


def test_misshaped_without_pruning_meta(tmp_path):
    path = save_checkpoint(tmp_path / "m.safetensors", _tiny("vit"), META)
    _rewrite(path, lambda s: s.__setitem__("head.weight", torch.zeros(2, 16)))
    with pytest.raises(CheckpointError, match="head.weight.*no 'pruning'|no 'pruning'.*head.weight"):
        load_checkpoint(path)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_pickle_is_refused_without_unpickling(tmp_path, suffix):
    target = tmp_path / f"model{suffix}"
    torch.save(_tiny("vit").state_dict(), target)
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(target)
    raw = tmp_path / f"raw{suffix}"
    raw.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(raw)


def test_nan_weights_refused(tmp_path):
    model = _tiny("resnet")
    with torch.no_grad():
        model.fc.weight[0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="NaN"):
        save_checkpoint(tmp_path / "m.safetensors", model, META)
    path = save_checkpoint(tmp_path / "m.safetensors", _tiny("resnet"), META)
    _rewrite(path, lambda s: s["fc.bias"].fill_(float("inf")))
    with pytest.raises(CheckpointError, match="fc.bias"):
        load_checkpoint(path)


def test_not_found_and_not_safetensors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
    junk.with_suffix(".json").write_text(json.dumps({"meta": {}, "tensors": {}}))
    with pytest.raises(CheckpointError):
        load_checkpoint(junk)


# --- pruned models: stored shapes are the truth ---------------------------------------------------

def _keep_rows(lin_or_conv: nn.Module, idx: torch.Tensor) -> None:
    lin_or_conv.weight = nn.Parameter(lin_or_conv.weight.detach()[idx].clone())
    if lin_or_conv.bias is not None:
        lin_or_conv.bias = nn.Parameter(lin_or_conv.bias.detach()[idx].clone())


def _keep_cols(lin_or_conv: nn.Module, idx: torch.Tensor) -> None:
    lin_or_conv.weight = nn.Parameter(lin_or_conv.weight.detach()[:, idx].clone())


def _keep_bn(bn: nn.BatchNorm2d, idx: torch.Tensor) -> None:
    bn.weight = nn.Parameter(bn.weight.detach()[idx].clone())
    bn.bias = nn.Parameter(bn.bias.detach()[idx].clone())
    bn.running_mean = bn.running_mean[idx].clone()
    bn.running_var = bn.running_var[idx].clone()
    bn.num_features = len(idx)


def _shrink(model: nn.Module, family: str) -> tuple[nn.Module, dict]:
    """Hand-prune a tiny model (what Torch-Pruning would do), returning it and its module_attrs."""
    if family == "vgg":
        keep = torch.tensor([0, 2, 3, 6, 7])
        conv_a, conv_b = model.features[0], model.features[3]
        _keep_rows(conv_a, keep)
        conv_a.out_channels = len(keep)
        _keep_cols(conv_b, keep)
        conv_b.in_channels = len(keep)
        return model, {}
    if family == "resnet":
        block = model.layer1[0]
        keep = torch.tensor([1, 2, 5])
        _keep_rows(block.conv1, keep)
        block.conv1.out_channels = len(keep)
        _keep_bn(block.bn1, keep)
        _keep_cols(block.conv2, keep)
        block.conv2.in_channels = len(keep)
        return model, {}
    attn, mlp = model.blocks[0].attn, model.blocks[1].mlp
    head_dim = attn.head_dim
    heads = [0, 2, 3]
    cols = torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in heads])
    qkv_rows = torch.cat([cols + i * attn.attn_dim for i in range(3)])
    _keep_rows(attn.qkv, qkv_rows)
    attn.qkv.out_features = len(qkv_rows)
    _keep_cols(attn.proj, cols)
    attn.proj.in_features = len(cols)
    attn.num_heads, attn.attn_dim = len(heads), len(cols)
    units = torch.arange(0, mlp.fc1.out_features, 3)
    _keep_rows(mlp.fc1, units)
    mlp.fc1.out_features = len(units)
    _keep_cols(mlp.fc2, units)
    mlp.fc2.in_features = len(units)
    return model, {"blocks.0.attn": {"num_heads": len(heads)}}


def test_pruned_shapes_reload_exactly(tmp_path, tiny_family):
    pruned, attrs = _shrink(_tiny(tiny_family), tiny_family)
    with torch.no_grad():
        expected = pruned(_x())
    meta = {**META, "pruning": {"recipe": {"criterion": "hand"}, "module_attrs": attrs}}
    path = save_checkpoint(tmp_path / "pruned.safetensors", pruned, meta)
    loaded, meta_back = load_checkpoint(path)
    assert meta_back["pruning"]["recipe"] == {"criterion": "hand"}
    with torch.no_grad():
        assert torch.equal(loaded(_x()), expected)
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in pruned.parameters())
    if tiny_family == "vit":
        assert loaded.blocks[0].attn.num_heads == 3 and loaded.blocks[0].attn.attn_dim == 24


def test_unknown_module_attr_is_refused(tmp_path):
    meta = {**META, "pruning": {"recipe": {}, "module_attrs": {"blocks.9.attn": {"num_heads": 1}}}}
    path = save_checkpoint(tmp_path / "p.safetensors", _tiny("vit"), meta)
    with pytest.raises(CheckpointError, match="blocks.9.attn"):
        load_checkpoint(path)


def test_resize_to_state_updates_module_attributes():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8, 6), nn.LayerNorm(6))
    state = {"0.weight": torch.zeros(5, 3, 3, 3), "0.bias": torch.zeros(5), "1.weight": torch.ones(5),
             "1.bias": torch.zeros(5), "1.running_mean": torch.zeros(5), "1.running_var": torch.ones(5),
             "3.weight": torch.zeros(4, 5), "3.bias": torch.zeros(4), "4.weight": torch.ones(4),
             "4.bias": torch.zeros(4)}
    resized = resize_to_state(model, state)
    assert "0.weight" in resized and "4.weight" in resized
    assert model[0].out_channels == 5 and model[1].num_features == 5
    assert (model[3].in_features, model[3].out_features) == (5, 4)
    assert model[4].normalized_shape == (4,)
