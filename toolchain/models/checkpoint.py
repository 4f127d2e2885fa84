"""Checkpoints: ``X.safetensors`` (weights) + ``X.json`` (sidecar: meta, tensor manifest, sha256).

Nothing is ever unpickled. The sidecar records every tensor's shape and dtype and the sha256 of the
weights file, so a mismatched or edited pair is refused with the offending keys named.

Pruned models: the stored tensor shapes are the truth. ``load_checkpoint`` builds the dense
architecture, resizes every module to the stored shapes (Conv2d/Linear/BatchNorm/LayerNorm attributes,
any other parameter or buffer by shape) and applies ``meta["pruning"]["module_attrs"]`` with setattr
(e.g. ``{"blocks.0.attn": {"num_heads": 10}}``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..atomic import atomic_path
from ..errors import CheckpointError, ModelError
from ..pickle_guard import refuse_pickle
from .consistency import BOUND_KEY, bound_meta, check_bound_meta, check_forward
from .registry import build_model

FORMAT = "medprune-checkpoint/1"
WEIGHTS_NAME = "model.safetensors"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sidecar_path(weights: Path) -> Path:
    return weights.with_suffix(".json")


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """The weights file for ``path``: a ``.safetensors`` file, its ``.json`` sidecar, or a directory."""
    p = Path(path).expanduser()
    if p.is_dir():
        candidates = sorted(p.glob("*.safetensors"))
        if (p / WEIGHTS_NAME).exists():
            return p / WEIGHTS_NAME
        if len(candidates) == 1:
            return candidates[0]
        raise CheckpointError(f"{p} is a directory without a single .safetensors checkpoint in it")
    if p.suffix == ".json":
        p = p.with_suffix(".safetensors")
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {p}")
    refuse_pickle(p, CheckpointError)
    if p.suffix != ".safetensors":
        raise CheckpointError(f"{p} is not a .safetensors checkpoint")
    return p


def _state_for_saving(model: nn.Module) -> dict[str, torch.Tensor]:
    # safetensors refuses shared storage (e.g. tied weights); each tensor gets its own contiguous copy.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def save_checkpoint(path: str | os.PathLike, model: nn.Module, meta: dict[str, Any]) -> Path:
    """Write ``path`` (.safetensors) and its ``.json`` sidecar atomically; returns the weights path.

    Missing architecture keys of ``meta`` are filled from ``model.medprune_spec`` (set by build_model).
    """
    from safetensors.torch import save_file

    from .. import __version__

    weights = Path(path)
    if weights.suffix != ".safetensors":
        weights = weights.with_suffix(".safetensors") if weights.suffix else weights / WEIGHTS_NAME
    meta = dict(meta)
    for key, value in (getattr(model, "medprune_spec", None) or {}).items():
        meta.setdefault(key, value)
    missing = [k for k in ("arch", "build_args", "num_classes", "in_chans", "img_size") if k not in meta]
    if missing:
        raise CheckpointError(f"checkpoint meta lacks {', '.join(missing)} (build the model with build_model)")
    meta.setdefault("medprune_version", __version__)
    state = _state_for_saving(model)
    _check_finite(state, f"model being saved to {weights}")
    with atomic_path(weights) as tmp:
        # the facts the sidecar states about the model also live in the hashed weights file, so a sidecar
        # edited alone (swapped class names, another input size) no longer matches
        save_file(state, str(tmp), metadata={BOUND_KEY: bound_meta(meta, FORMAT)})
        digest = sha256_file(tmp)
        sidecar = {
            "format": FORMAT,
            "weights_file": weights.name,
            "weights_sha256": digest,
            "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
                        for k, v in state.items()},
            "meta": meta,
        }
        with atomic_path(sidecar_path(weights)) as side_tmp:
            side_tmp.write_text(json.dumps(sidecar, indent=1, sort_keys=False, default=_json_default))
    return weights


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _check_finite(state: dict[str, torch.Tensor], what: str) -> None:
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{what} has NaN/Inf values in {_names(bad)}")


def _names(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def read_sidecar(path: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    """``(weights path, sidecar dict)`` after checking the sidecar exists, parses and matches the sha256."""
    weights = resolve_checkpoint(path)
    side = sidecar_path(weights)
    if not side.exists():
        raise CheckpointError(f"checkpoint sidecar missing: {side} (every .safetensors needs its .json)")
    try:
        sidecar = json.loads(side.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint sidecar {side} is not valid JSON: {exc}") from exc
    if not isinstance(sidecar, dict) or "meta" not in sidecar or "tensors" not in sidecar:
        raise CheckpointError(f"{side} is not a medprune checkpoint sidecar (no meta/tensors)")
    digest = sidecar.get("weights_sha256")
    if not isinstance(digest, str) or len(digest) != 64:
        raise CheckpointError(f"{side} records no weights_sha256, so {weights.name} cannot be verified; "
                              "re-save the checkpoint with medprune")
    if sha256_file(weights) != digest:
        raise CheckpointError(f"weights {weights.name} do not match their sidecar {side.name} (sha256 differs)")
    return weights, sidecar


def _same_keys(state: dict, expected, lacks: str, extra: str) -> None:
    """CheckpointError ``"<lacks>: names"`` / ``"<extra>: names"`` unless ``state`` has exactly ``expected``'s keys."""
    missing = sorted(set(expected) - set(state))
    if missing:
        raise CheckpointError(f"{lacks}: {_names(missing)}")
    surplus = sorted(set(state) - set(expected))
    if surplus:
        raise CheckpointError(f"{extra}: {_names(surplus)}")


def load_state(weights: Path, sidecar: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors of ``weights``, validated against the sidecar manifest and for finiteness."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {weights}: {exc}") from exc
    manifest = sidecar["tensors"]
    _same_keys(state, manifest, f"{weights.name} lacks tensors listed in its sidecar",
               f"{weights.name} has tensors not listed in its sidecar")
    misshaped = [k for k, v in state.items() if list(v.shape) != list(manifest[k]["shape"])]
    if misshaped:
        raise CheckpointError(f"{weights.name} tensor shapes differ from its sidecar: {_names(misshaped)}")
    _check_finite(state, str(weights))
    return state


def _replace_tensor(module: nn.Module, attr: str, shape: torch.Size) -> None:
    old = getattr(module, attr)
    new = torch.empty(shape, dtype=old.dtype, device=old.device)
    if isinstance(old, nn.Parameter):
        setattr(module, attr, nn.Parameter(new, requires_grad=old.requires_grad))
    else:
        module._buffers[attr] = new


def resize_to_state(model: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Give every parameter/buffer of ``model`` the shape stored in ``state``; returns resized keys.

    Module attributes that forward() reads (channel/feature counts) follow the new tensor shapes.
    """
    resized: list[str] = []
    for mod_name, module in model.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        local = {**dict(module.named_parameters(recurse=False)), **dict(module.named_buffers(recurse=False))}
        changed = False
        for attr, tensor in local.items():
            if tensor is None:
                continue
            key = prefix + attr
            if key in state and state[key].shape != tensor.shape:
                _replace_tensor(module, attr, state[key].shape)
                resized.append(key)
                changed = True
        if changed:
            _sync_module_attrs(module)
    return resized


def _sync_module_attrs(module: nn.Module) -> None:
    if isinstance(module, nn.modules.conv._ConvNd):
        out_c, in_per_group = module.weight.shape[:2]
        depthwise = module.groups > 1 and module.groups == module.in_channels
        module.out_channels = out_c
        if depthwise:
            module.groups = out_c
            module.in_channels = out_c
        else:
            module.in_channels = in_per_group * module.groups
    elif isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif isinstance(module, nn.modules.batchnorm._NormBase):
        ref = module.weight if module.weight is not None else module.running_mean
        module.num_features = ref.shape[0]
    elif isinstance(module, nn.GroupNorm):
        module.num_channels = module.weight.shape[0]
    elif isinstance(module, nn.LayerNorm) and module.weight is not None:
        module.normalized_shape = tuple(module.weight.shape)


def _sync_attention(model: nn.Module, explicit: dict[str, dict[str, Any]]) -> None:
    """timm attention reshapes with num_heads/head_dim/attn_dim: keep them consistent with qkv.

    The softmax ``scale`` is left alone (pruning heads keeps head_dim; anything else must say so in
    module_attrs). Attributes set explicitly in module_attrs win.
    """
    from ..units import is_attention

    for name, module in model.named_modules():
        if not is_attention(module):
            continue
        given = explicit.get(name, {})
        attn_dim = module.qkv.out_features // 3
        if hasattr(module, "attn_dim") and "attn_dim" not in given:
            module.attn_dim = attn_dim
        if "head_dim" not in given and module.num_heads and attn_dim % module.num_heads == 0:
            module.head_dim = attn_dim // module.num_heads


def apply_module_attrs(model: nn.Module, module_attrs: dict[str, dict[str, Any]]) -> None:
    modules = dict(model.named_modules())
    for name, attrs in (module_attrs or {}).items():
        if name not in modules:
            raise CheckpointError(f"pruning.module_attrs names unknown module {name!r}")
        for attr, value in attrs.items():
            setattr(modules[name], attr, value)


def model_from_meta(meta: dict[str, Any]) -> nn.Module:
    try:
        # build_args of a ViT record img_size too; pass it once (positionally)
        build_args = dict(meta.get("build_args") or {})
        img_size = int(meta.get("img_size", build_args.pop("img_size", 224)))
        build_args.pop("img_size", None)
        return build_model(
            meta["arch"], int(meta["num_classes"]), int(meta.get("in_chans", 3)), img_size, **build_args,
        )
    except KeyError as exc:
        raise CheckpointError(f"checkpoint meta lacks {exc.args[0]!r}") from exc
    except (TypeError, ValueError) as exc:  # e.g. "img_size": "large" in an edited sidecar
        raise CheckpointError(f"checkpoint meta num_classes/in_chans/img_size must be integers ({exc})") from exc
    except ModelError as exc:
        raise CheckpointError(f"checkpoint architecture cannot be rebuilt: {exc}") from exc


def load_checkpoint(path: str | os.PathLike, device: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """``(model.eval(), meta)``; CheckpointError naming the problem for any mismatch."""
    weights, sidecar = read_sidecar(path)
    state = load_state(weights, sidecar)
    meta = sidecar["meta"]
    model = model_from_meta(meta)
    expected = model.state_dict()
    _same_keys(state, expected, f"{weights.name} lacks weights of {meta['arch']}",
               f"{weights.name} has weights {meta['arch']} does not have")
    pruning = meta.get("pruning")
    misshaped = [k for k, v in state.items() if expected[k].shape != v.shape]
    if misshaped and not pruning:
        k = misshaped[0]
        raise CheckpointError(
            f"{weights.name} shapes differ from {meta['arch']} and meta has no 'pruning' entry: "
            f"{_names(misshaped)} (e.g. {k}: stored {tuple(state[k].shape)}, arch {tuple(expected[k].shape)})"
        )
    if misshaped:
        resize_to_state(model, state)
    module_attrs = (pruning or {}).get("module_attrs") or {}
    apply_module_attrs(model, module_attrs)
    _sync_attention(model, module_attrs)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{weights.name} does not fit {meta['arch']}: {str(exc).splitlines()[0]}") from exc
    check_bound_meta(weights, meta)
    check_forward(model, meta, weights.name)
    model.medprune_spec = {k: meta[k] for k in ("arch", "build_args", "num_classes", "in_chans", "img_size")}
    return model.to(device).eval(), meta


def recorded_sha256(path: str | os.PathLike) -> str:
    """The weights' sha256 as recorded in the sidecar, without re-hashing (load_checkpoint and
    read_sidecar already verified it)."""
    weights = resolve_checkpoint(path)
    try:
        return json.loads(sidecar_path(weights).read_text())["weights_sha256"]
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{sidecar_path(weights)}: no recorded weights sha256 ({exc})") from exc


def checkpoint_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The meta of a checkpoint without loading its weights (sha256 still checked)."""
    return read_sidecar(path)[1]["meta"]
