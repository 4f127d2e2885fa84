"""Model registry: aliases, small-input defaults, build-arg overrides, real architectures at 32 px."""

from __future__ import annotations

import pytest
import torch

from toolchain.errors import ModelError
from toolchain.models import (
    ALIASES,
    build_model,
    count_macs,
    count_params,
    default_build_args,
    layer_summary,
    parse_build_args,
    resolve_arch,
)

TINY = {
    "vgg": ("vgg19", {"cfg": [8, "M", 16, 16, "M"], "mlp_ratio": 0.01}),
    "resnet": ("resnet50", {"layers": [1, 1, 1, 1], "channels": [8, 16, 16, 32], "stem_width": 8}),
    "vit": ("vit_b16", {"embed_dim": 32, "depth": 2, "num_heads": 4, "patch_size": 4}),
}


def test_aliases_resolve_to_timm_names():
    assert resolve_arch("vgg19") == "vgg19"
    assert resolve_arch("resnet50") == "resnet50"
    assert resolve_arch("vit_b16") == "vit_base_patch16_224"
    assert resolve_arch("resnet18") == "resnet18"  # any timm name


def test_unknown_model_lists_aliases():
    with pytest.raises(ModelError) as exc:
        build_model("not_a_model", 2)
    msg = str(exc.value)
    assert "\n" not in msg and all(alias in msg for alias in ALIASES)


def test_small_input_defaults_and_canonical_224():
    assert default_build_args("vgg19", 32) == {"mlp_ratio": 0.125}
    assert default_build_args("vgg19", 224) == {"mlp_ratio": 1.0}
    assert default_build_args("vit_base_patch16_224", 32) == {"img_size": 32, "patch_size": 8}
    assert default_build_args("vit_base_patch16_224", 224) == {"img_size": 224}
    assert default_build_args("resnet50", 32) == {}


def test_parse_build_args():
    assert parse_build_args(["mlp_ratio=1.0", "patch_size=8", "cfg=[8, \"M\"]", "act=gelu", "flag=true"]) == {
        "mlp_ratio": 1.0, "patch_size": 8, "cfg": [8, "M"], "act": "gelu", "flag": True}
    with pytest.raises(ModelError):
        parse_build_args(["novalue"])


def test_bad_build_arg_is_a_model_error():
    with pytest.raises(ModelError, match="cannot build"):
        build_model("vit_b16", 2, 1, 16, embed_dim=30, num_heads=4, depth=1, patch_size=4)


@pytest.mark.parametrize("family", sorted(TINY))
def test_tiny_builds_record_spec_and_count(family):
    name, args = TINY[family]
    model = build_model(name, 3, in_chans=1, img_size=16, **args).eval()
    x = torch.randn(2, 1, 16, 16)
    assert model(x).shape == (2, 3)
    spec = model.medprune_spec
    assert spec["arch"] == resolve_arch(name) and spec["num_classes"] == 3 and spec["in_chans"] == 1
    for key, value in args.items():
        assert spec["build_args"][key] == value
    assert count_params(model) > 0 and count_macs(model, x[:1]) > 0
    rows = layer_summary(model, x[:1])
    assert rows and all(r["name"] for r in rows)


@pytest.mark.slow
@pytest.mark.parametrize("name,in_chans", [("vgg19", 1), ("vgg19", 3), ("resnet50", 1), ("resnet50", 3),
                                           ("vit_b16", 1), ("vit_b16", 3)])
def test_real_architectures_at_32px(name, in_chans):
    model = build_model(name, 2, in_chans=in_chans, img_size=32).eval()
    with torch.no_grad():
        out = model(torch.randn(2, in_chans, 32, 32))
    assert out.shape == (2, 2)
    params = count_params(model)
    if name == "vgg19":
        assert 30e6 < params < 40e6  # mlp_ratio 0.125 below 224 px, not timm's 140M head
    if name == "vit_b16":
        assert model.patch_embed.patch_size == (8, 8) and model.patch_embed.num_patches == 16
        assert len(model.blocks) == 12 and model.blocks[0].attn.num_heads == 12


def test_vgg_mlp_ratio_override_is_recorded():
    model = build_model("vgg19", 2, 1, 16, cfg=[8, "M"], mlp_ratio=1.0)
    assert model.medprune_spec["build_args"]["mlp_ratio"] == 1.0
    assert model.pre_logits.fc1.out_channels == 4096
