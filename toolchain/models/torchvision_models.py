"""torchvision classifiers by ``torchvision:<name>`` (``torchvision:resnet50``, ``torchvision:vgg19_bn``, ...).

Built from scratch (``weights=None``), like every medprune model; a checkpoint's weights are loaded
afterwards. torchvision fixes 3 input channels: for ``in_chans != 3`` the first convolution is
replaced by one with ``in_chans`` inputs (same kernel, stride, padding), so a grey model's stored
``conv1.weight`` of shape ``(64, 1, 7, 7)`` loads as it was trained. ViTs take ``image_size``.

What the rest of medprune does with them (see tests/toolchain/test_import_torchvision.py):
ResNets and VGGs go through unit discovery (conv channels), LRP (BatchNorm merge, explicit residual
sums via zennit's torchvision canonizers) and Torch-Pruning removal. torchvision's ViT uses
``nn.MultiheadAttention`` and an ``MLPBlock``, which medprune's unit discovery does not read: a
``torchvision:vit_b_*`` model offers no prunable units; ``medprune import`` converts torchvision ViT
weights to the equivalent timm ViT instead (``to_timm_vit``), where heads and MLP units are prunable.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from ..errors import ModelError

PREFIX = "torchvision:"


def is_torchvision(name: str) -> bool:
    return name.strip().startswith(PREFIX)


def resolve(name: str) -> str:
    """``torchvision:<name>`` after checking torchvision has that classifier; ModelError otherwise."""
    import torchvision.models as tvm

    short = name.strip()[len(PREFIX):]
    known = tvm.list_models(module=tvm)
    if short not in known:
        close = [k for k in known if short and short.split("_")[0] in k][:8]
        raise ModelError(f"unknown torchvision model {short!r}"
                         + (f": did you mean {', '.join(close)}?" if close else " (torchvision.models.list_models())"))
    return PREFIX + short


def build(name: str, num_classes: int, in_chans: int, img_size: int, **build_args: Any) -> tuple[nn.Module, dict]:
    """``(model, build_args as recorded)`` for ``torchvision:<name>``."""
    import torchvision.models as tvm

    short = resolve(name)[len(PREFIX):]
    args = dict(build_args)
    if short.startswith("vit_"):
        args.setdefault("image_size", img_size)
    try:
        model = tvm.get_model(short, weights=None, num_classes=num_classes, **args)
    except (TypeError, ValueError, AssertionError) as exc:
        raise ModelError(f"cannot build torchvision {short} with {args}: {exc}") from exc
    if in_chans != 3:
        _replace_first_conv(model, in_chans)
    return model, args


def _replace_first_conv(model: nn.Module, in_chans: int) -> None:
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            conv = nn.Conv2d(in_chans, module.out_channels, module.kernel_size, module.stride, module.padding,
                             module.dilation, module.groups, module.bias is not None, module.padding_mode)
            parent_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, attr, conv)
            return
    raise ModelError(f"{type(model).__name__} has no convolution to adapt to {in_chans} input channels")


# torchvision ViT → timm VisionTransformer: same computation (pre-norm blocks, fused q/k/v in the
# order q,k,v with heads split the same way, LayerNorm eps 1e-6, exact GELU, class token first,
# position embedding including the class token, head on the class token), only the names differ.
_VIT_RULES = [
    (r"^conv_proj\.", "patch_embed.proj."),
    (r"^class_token$", "cls_token"),
    (r"^encoder\.pos_embedding$", "pos_embed"),
    (r"^encoder\.ln\.", "norm."),
    (r"^heads\.head\.", "head."),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.ln_1\.", r"blocks.\1.norm1."),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.ln_2\.", r"blocks.\1.norm2."),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.self_attention\.in_proj_", r"blocks.\1.attn.qkv."),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.self_attention\.out_proj\.", r"blocks.\1.attn.proj."),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.mlp\.0\.", r"blocks.\1.mlp.fc1."),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.mlp\.3\.", r"blocks.\1.mlp.fc2."),
]
# torchvision ViT name → (timm name, patch size); timm's other defaults (width, depth, heads) match.
TIMM_VIT = {"vit_b_16": ("vit_base_patch16_224", 16), "vit_b_32": ("vit_base_patch32_224", 32),
            "vit_l_16": ("vit_large_patch16_224", 16), "vit_l_32": ("vit_large_patch32_224", 32),
            "vit_h_14": ("vit_huge_patch14_224", 14)}


def timm_equivalent(name: str) -> tuple[str, dict[str, Any]] | None:
    """``(timm arch, build_args)`` computing exactly what ``torchvision:<name>`` computes, or None."""
    short = name.strip().removeprefix(PREFIX)
    if short in TIMM_VIT:
        arch, patch = TIMM_VIT[short]
        return arch, {"patch_size": patch}
    return None


def to_timm_vit(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """torchvision ViT tensors renamed for timm; also the keys no rule matched (reported, not dropped)."""
    out, unmatched = {}, []
    for key, value in state.items():
        for pattern, repl in _VIT_RULES:
            new, n = re.subn(pattern, repl, key)
            if n:
                out[new] = value
                break
        else:
            unmatched.append(key)
            out[key] = value
    return out, unmatched
