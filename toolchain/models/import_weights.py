"""Bring your own trained model: weights from ``.safetensors`` or a PyTorch state dict into a medprune model.

``.pt``/``.pth``/``.bin`` files are read only with ``torch.load(weights_only=True)``, which unpickles
tensors and plain containers and nothing else: a whole pickled ``nn.Module`` is refused (it would run
arbitrary code on load) with the one-line fix, ``torch.save(model.state_dict(), path)``.

Common wrappings are undone and said so in the report: a ``{"state_dict": ...}``/``{"model": ...}``
training checkpoint, the ``module.`` prefix of DataParallel/DDP, and one prefix shared by every key
when only the keys without it fit (a Lightning module's ``model.``). Keys are then matched against the
architecture by name; every missing, unexpected or differently shaped tensor is reported by name.

timm architectures are built with timm's own defaults for the arguments medprune chooses for small
inputs (patch size, VGG head width): imported weights were trained with those. torchvision ViTs are
imported as the timm ViT that computes the same function (``torchvision_models.to_timm_vit``,
checked by comparing both models' logits), so head and MLP pruning and AttnLRP apply to them.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ModelError
from . import torchvision_models
from .registry import build_model, default_build_args, resolve_arch

STATE_DICT_SUFFIXES = (".pt", ".pth", ".bin")
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net")
# keys a model may hold that older state dicts lack; filled from the freshly built model
OPTIONAL_KEYS = ("num_batches_tracked",)
PARITY_TOL = 1e-4
_SAVE_HINT = "save a state dict instead: torch.save(model.state_dict(), path) (or safetensors.torch.save_file)"


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``(tensors by name, notes on unwrapping)`` of a ``.safetensors`` file or a state-dict ``.pt/.pth/.bin``."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ModelError(f"weights file not found: {p}")
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(p)), []
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelError(f"cannot read {p.name} as safetensors: {exc}") from exc
    if suffix not in STATE_DICT_SUFFIXES:
        raise ModelError(f"unsupported weights file {p.name}: use .safetensors or a state dict .pt/.pth/.bin")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f" ({found.group(1)})" if found else ""
        raise ModelError(f"{p.name} holds pickled Python objects{what}, e.g. a whole nn.Module, which medprune "
                         f"will not unpickle; {_SAVE_HINT}") from None
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise ModelError(f"cannot read {p.name} with torch.load(weights_only=True): "
                         f"{str(exc).splitlines()[0]}") from None
    return _unwrap(obj, p.name)


def _unwrap(obj: Any, name: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    notes = []
    if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            raise ModelError(f"{name} is a dict without tensors and without a state_dict/model entry "
                             f"(keys: {', '.join(map(str, list(obj)[:8]))}); {_SAVE_HINT}")
        obj = obj[inner]
        notes.append(f"used the {inner!r} entry of the checkpoint dict")
    if not isinstance(obj, dict):
        raise ModelError(f"{name} holds a {type(obj).__name__}, not a state dict; {_SAVE_HINT}")
    bad = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelError(f"{name}: entries that are not tensors: {_names(bad)}; {_SAVE_HINT}")
    for prefix in ("module.", "_orig_mod."):  # DataParallel/DDP, torch.compile
        if obj and all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix):]: v for k, v in obj.items()}
            notes.append(f"stripped the {prefix!r} prefix")
    return dict(obj), notes


def _strip_wrapper_prefix(state: dict[str, torch.Tensor], expected: dict, notes: list[str]) -> dict[str, torch.Tensor]:
    """Keys saved from a wrapper (a Lightning module's ``model.``, a ``backbone.``) lose that one prefix
    when no key matches as saved and every key matches without it."""
    if not state or set(state) & set(expected):
        return state
    prefixes = {k.split(".", 1)[0] for k in state}
    if len(prefixes) != 1 or not all("." in k for k in state):
        return state
    prefix = prefixes.pop() + "."
    stripped = {k[len(prefix):]: v for k, v in state.items()}
    if not set(stripped) <= set(expected):
        return state
    notes.append(f"stripped the {prefix!r} prefix")
    return stripped


def _names(keys: list[str], limit: int = 6) -> str:
    return ", ".join(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def native_build_args(arch: str, img_size: int, state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Build arguments reproducing timm's own model at ``img_size``, overriding medprune's small-input defaults."""
    args = default_build_args(arch, img_size)
    if "patch_size" in args:
        proj = state.get("patch_embed.proj.weight")
        args["patch_size"] = int(proj.shape[-1]) if proj is not None and proj.ndim == 4 else 16
    if "mlp_ratio" in args:
        args["mlp_ratio"] = 1.0
    return args


def check_keys(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], arch: str) -> dict[str, torch.Tensor]:
    """``state`` completed with optional buffers; ModelError naming missing, unexpected and misshaped keys."""
    missing = [k for k in expected if k not in state and not k.endswith(OPTIONAL_KEYS)]
    unexpected = [k for k in state if k not in expected]
    misshaped = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
                 for k in expected if k in state and state[k].shape != expected[k].shape]
    problems = []
    if missing:
        problems.append(f"missing {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected {_names(unexpected)}")
    if misshaped:
        problems.append(f"shape (weights vs {arch}) {_names(misshaped, 4)}")
    if problems:
        hint = _hint(misshaped)
        raise ModelError(f"weights do not fit {arch}: {'; '.join(problems)}" + (f" ({hint})" if hint else ""))
    return {**{k: v for k, v in expected.items() if k not in state}, **state}


def _hint(misshaped: list[str]) -> str:
    if not misshaped:
        return "check --arch"
    first = misshaped[0]
    if any(s in first for s in ("head", "fc.", "classifier")):
        return "the classifier has another number of classes: check --num-classes/--class-names"
    if any(s in first for s in ("conv1", "stem", "features.0", "patch_embed", "conv_proj")):
        return "the first layer differs: check --in-chans and --img-size"
    if "pos_embed" in first:
        return "the position embedding fixes the input size: check --img-size"
    return "check --arch, --img-size and --build-arg"


def import_model(arch: str, weights: str | Path, num_classes: int, in_chans: int = 3, img_size: int = 224,
                 build_args: dict[str, Any] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """``(model.eval(), report)``: ``arch`` built from scratch with ``weights`` loaded and checked.

    ``arch`` is a timm name, a medprune alias or ``torchvision:<name>``; the report says what was
    done (unwrapping, conversion) and carries the source file's sha256.
    """
    from .checkpoint import sha256_file

    if num_classes < 1 or in_chans < 1 or img_size < 1:
        raise ModelError(f"num_classes, in_chans and img_size must be positive, got {num_classes}, "
                         f"{in_chans}, {img_size}")
    state, notes = read_weights(weights)
    resolved = resolve_arch(arch)
    report: dict[str, Any] = {"source_arch": resolved, "weights_file": Path(weights).name,
                              "weights_sha256": sha256_file(Path(weights)), "notes": notes}
    source_state = state
    equivalent = torchvision_models.timm_equivalent(resolved) if torchvision_models.is_torchvision(resolved) else None
    if equivalent:
        resolved, args = equivalent[0], {**equivalent[1], **(build_args or {})}
        state, unmatched = torchvision_models.to_timm_vit(state)
        notes.append(f"converted torchvision ViT weights to timm {resolved}"
                     + (f" (unrenamed: {_names(unmatched)})" if unmatched else ""))
    elif torchvision_models.is_torchvision(resolved):
        args = dict(build_args or {})
    else:
        args = {**native_build_args(resolved, img_size, state), **(build_args or {})}
    model = build_model(resolved, num_classes, in_chans, img_size, **args)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    state = _strip_wrapper_prefix(state, model.state_dict(), notes)
    full = check_keys(state, model.state_dict(), resolved)
    bad = [k for k, v in full.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ModelError(f"weights hold NaN/Inf in {_names(bad)}")
    model.load_state_dict(full, strict=True)
    model.eval()
    report["output_check"] = _check_forward(model, num_classes, in_chans, img_size)
    if equivalent:
        report["conversion_max_abs"] = _conversion_parity(report["source_arch"], source_state, model,
                                                          num_classes, in_chans, img_size)
    return model, report


@torch.no_grad()
def _check_forward(model: nn.Module, num_classes: int, in_chans: int, img_size: int) -> str:
    x = torch.randn(2, in_chans, img_size, img_size, generator=torch.Generator().manual_seed(0))
    try:
        out = model(x)
    except RuntimeError as exc:
        raise ModelError(f"the imported model fails on a {in_chans}x{img_size}x{img_size} input: "
                         f"{str(exc).splitlines()[0]} (check --img-size/--in-chans)") from None
    if tuple(out.shape) != (2, num_classes):
        raise ModelError(f"the imported model outputs {tuple(out.shape[1:])} per image, expected ({num_classes},)")
    if not torch.isfinite(out).all():
        raise ModelError("the imported model outputs NaN/Inf on a random input")
    return f"logits (2, {num_classes}) finite"


@torch.no_grad()
def _conversion_parity(source_arch: str, source_state: dict, converted: nn.Module, num_classes: int,
                       in_chans: int, img_size: int) -> float:
    original = build_model(source_arch, num_classes, in_chans, img_size)
    original.load_state_dict({k: v.float() for k, v in source_state.items()}, strict=True)
    x = torch.randn(2, in_chans, img_size, img_size, generator=torch.Generator().manual_seed(1))
    # compare the classifier's inputs too: torchvision initialises the ViT head to zeros, so logits alone
    # could agree while the features differ
    (a_feat, a_out), (b_feat, b_out) = (_head_input(m.eval(), head, x) for m, head in
                                        ((original, original.heads.head), (converted, converted.get_classifier())))
    diff = max(float((a_feat - b_feat).abs().max()), float((a_out - b_out).abs().max()))
    if not diff <= PARITY_TOL:
        raise ModelError(f"converting {source_arch} to timm changed the logits by {diff:.2e} (> {PARITY_TOL})")
    return diff


def _head_input(model: nn.Module, head: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    seen = []
    handle = head.register_forward_pre_hook(lambda _m, inp: seen.append(inp[0]))
    try:
        out = model(x)
    finally:
        handle.remove()
    return seen[0], out
