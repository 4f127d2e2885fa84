"""Model construction: the three paper architectures by alias, any timm model by name, or a torchvision
classifier as ``torchvision:<name>`` (see ``torchvision_models``).

Models are always built from scratch (``pretrained=False``): medprune never reaches the network.
Every argument that shapes the architecture is resolved here and recorded in the checkpoint
(``build_args``), so a checkpoint rebuilds exactly the model that was trained.

Small-input defaults (CPU-friendly runs at 28-64 px):

* ``vit_b16``: ViT-B keeps its width/depth/heads, but a 16 px patch at 32 px leaves a 2x2 token grid.
  Below 224 px the patch size defaults to ``img_size // 4`` (a 4x4 grid, 16 patch tokens + CLS), e.g.
  patch 8 at 32 px. At >= 224 px it is the canonical 16. Override with ``patch_size=``.
* ``vgg19``: timm's VGG head is a 7x7 "fc6" conv that sees an average-pooled-up 1x1 map at small inputs
  and alone holds ~103M of the 140M parameters. Below 224 px ``mlp_ratio`` defaults to 0.125 (fc6 with
  512 hidden channels, ~35M parameters in all); at 224 px it is the canonical 1.0.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ..errors import ModelError
from . import torchvision_models

ALIASES: dict[str, str] = {
    "vgg19": "vgg19",
    "resnet50": "resnet50",
    "vit_b16": "vit_base_patch16_224",
}

CANONICAL_SIZE = 224


def resolve_arch(name: str) -> str:
    """The timm model name behind ``name`` (an alias or a timm name); ModelError when unknown."""
    import timm

    key = name.strip()
    if torchvision_models.is_torchvision(key):
        return torchvision_models.resolve(key)
    if key in ALIASES:
        return ALIASES[key]
    if timm.is_model(key):
        return key
    raise ModelError(
        f"unknown model {name!r}: use one of {', '.join(ALIASES)}, a timm model name (timm.list_models()) "
        "or torchvision:<name>"
    )


def default_build_args(arch: str, img_size: int) -> dict[str, Any]:
    """Architecture arguments medprune chooses for ``arch`` at ``img_size`` (see module docstring)."""
    args: dict[str, Any] = {}
    if arch.startswith("vit_"):
        args["img_size"] = img_size
        if img_size < CANONICAL_SIZE:
            args["patch_size"] = max(1, img_size // 4)
    elif arch.startswith("vgg"):
        args["mlp_ratio"] = 1.0 if img_size >= CANONICAL_SIZE else 0.125
    return args


def parse_build_args(pairs: list[str] | None) -> dict[str, Any]:
    """``["mlp_ratio=1.0", "patch_size=8"]`` → ``{"mlp_ratio": 1.0, "patch_size": 8}`` (JSON-ish values)."""
    import json

    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ModelError(f"--build-arg expects key=value, got {pair!r}")
        raw = raw.strip()
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = {"true": True, "false": False, "none": None}.get(raw.lower(), raw)
        out[key.strip()] = value
    return out


def build_model(
    name: str, num_classes: int, in_chans: int = 3, img_size: int = 224, **build_args: Any
) -> nn.Module:
    """A freshly initialised model; ``model.medprune_spec`` records how to rebuild it.

    ``build_args`` override the defaults of :func:`default_build_args` and are passed to timm.
    """
    import timm

    arch = resolve_arch(name)
    if num_classes < 1:
        raise ModelError(f"num_classes must be >= 1, got {num_classes}")
    if in_chans < 1:
        raise ModelError(f"in_chans must be >= 1, got {in_chans}")
    if torchvision_models.is_torchvision(arch):
        model, args = torchvision_models.build(arch, num_classes, in_chans, img_size, **build_args)
        model.medprune_spec = {"arch": arch, "build_args": args, "num_classes": num_classes,
                               "in_chans": in_chans, "img_size": img_size}
        return model
    args = {**default_build_args(arch, img_size), **build_args}
    kwargs = dict(pretrained=False, num_classes=num_classes, in_chans=in_chans, **args)
    try:
        model = _create_vgg_with_cfg(kwargs) if arch.startswith("vgg") and "cfg" in args \
            else timm.create_model(arch, **kwargs)
    except TypeError as exc:
        # Generic timm names: CNNs do not take img_size; retry only if that was the offending arg.
        if "img_size" in kwargs and "img_size" in str(exc) and "img_size" not in build_args:
            args.pop("img_size")
            kwargs.pop("img_size")
            try:
                model = timm.create_model(arch, **kwargs)
            except (TypeError, ValueError, AssertionError) as exc2:
                raise ModelError(f"cannot build {arch} with {args}: {exc2}") from exc2
        else:
            raise ModelError(f"cannot build {arch} with {args}: {exc}") from exc
    except (ValueError, AssertionError, RuntimeError) as exc:
        raise ModelError(f"cannot build {arch} with {args}: {exc}") from exc
    model.medprune_spec = {
        "arch": arch,
        "build_args": args,
        "num_classes": num_classes,
        "in_chans": in_chans,
        "img_size": img_size,
    }
    return model


def _create_vgg_with_cfg(kwargs: dict[str, Any]) -> nn.Module:
    """timm's VGG entry points fix the layer list; ``cfg=[64, "M", ...]`` builds the same class with
    another one (tests and narrow variants), still recorded in build_args so it reloads."""
    from timm.models.vgg import VGG

    kwargs = {k: v for k, v in kwargs.items() if k != "pretrained"}
    return VGG(**kwargs)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@contextlib.contextmanager
def inference_pass(model: nn.Module, handles: list | None = None) -> Iterator[nn.Module]:
    """Eval mode and no_grad for a tracing forward pass; restores the caller's mode and removes ``handles``."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)
        for h in handles or ():
            h.remove()


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass (conv, linear, matmul, attention) via FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    with inference_pass(model), FlopCounterMode(display=False) as counter:
        model(example)
    return int(counter.get_total_flops() // 2 // max(1, example.shape[0]))


def layer_summary(model: nn.Module, example: torch.Tensor) -> list[dict[str, Any]]:
    """Leaf modules in call order with their output shape and own parameter count."""
    rows: list[dict[str, Any]] = []
    handles = []
    for name, module in model.named_modules():
        if any(True for _ in module.children()) or not name or isinstance(module, nn.Identity):
            continue

        def hook(mod, _inp, out, name=name):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else None
            params = sum(p.numel() for p in mod.parameters(recurse=False))
            rows.append({"name": name, "type": type(mod).__name__, "output_shape": shape, "params": params})

        handles.append(module.register_forward_hook(hook))
    with inference_pass(model, handles):
        model(example)
    return rows
