"""Does a checkpoint's sidecar tell the truth about its weights?

The sha256 in the sidecar only ties the weights file to the sidecar's record of it; the facts the
rest of medprune reads from the sidecar (class names, input size) must also fit the weights, or
``export`` would write swapped or mismatched names into ONNX metadata and a package would label
images wrongly. Three checks at load:

* the bound facts: ``save_checkpoint`` copies class names, class count and input size into the
  safetensors header, which the sha256 covers, so a sidecar edited on its own is caught by name;
* the class names: unique non-empty strings, as many as the classifier has outputs;
* a forward pass at the recorded input size, whose output must have ``num_classes`` columns, so a
  wrong size is a one-line error at load, not a crash deep inside export or deploy.

Checkpoints saved before the facts were bound have no header entry; they still get the other two.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError

# ONE header key: safetensors writes several metadata keys in an order that varies between saves,
# which would make the bytes (and the sha256) of a seeded training run irreproducible
BOUND_KEY = "medprune"
BOUND_FIELDS = ("class_names", "num_classes", "in_chans", "img_size")


def bound_meta(meta: dict[str, Any], fmt: str) -> str:
    """The header entry ``save_checkpoint`` writes: the format and the bound fields of ``meta`` as JSON."""
    bound = {k: meta[k] for k in BOUND_FIELDS if k in meta}
    return json.dumps({"format": fmt, **bound}, sort_keys=True, default=_plain)


def _plain(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def check_bound_meta(weights: Path, meta: dict[str, Any]) -> None:
    """CheckpointError naming the first sidecar field that differs from the copy in the weights header."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weights), framework="pt") as fh:
            header = fh.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"cannot read {weights}: {exc}") from exc
    if BOUND_KEY not in header:
        return  # saved before the facts were bound: the class-name and forward checks still run
    try:
        bound = json.loads(header[BOUND_KEY])
    except ValueError as exc:
        raise CheckpointError(f"{weights.name}: its {BOUND_KEY} header entry is not JSON") from exc
    for field in BOUND_FIELDS:
        if field not in bound:
            continue
        stated = json.loads(json.dumps(meta.get(field), default=_plain))
        if stated != bound[field]:
            raise CheckpointError(
                f"sidecar of {weights.name} states {field} {stated!r} but the weights were saved with "
                f"{bound[field]!r}; the sidecar was edited, re-save the checkpoint with medprune")


def check_class_names(meta: dict[str, Any], name: str) -> None:
    names = meta.get("class_names")
    if names is None:
        return
    if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
        raise CheckpointError(f"{name}: class_names in its sidecar must be a list of non-empty strings")
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise CheckpointError(f"{name}: class_names in its sidecar repeat {', '.join(dup)}")
    if len(names) != int(meta["num_classes"]):
        raise CheckpointError(f"{name}: its sidecar names {len(names)} classes but the model has "
                              f"{meta['num_classes']} outputs")


def input_chw(meta: dict[str, Any], name: str) -> tuple[int, int, int]:
    try:
        chw = (int(meta["in_chans"]), int(meta["img_size"]), int(meta["img_size"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{name}: sidecar in_chans/img_size missing or not integers ({exc})") from exc
    if min(chw) < 1:
        raise CheckpointError(f"{name}: sidecar input size {chw} is not positive")
    return chw


def _shape_on_meta(model: nn.Module, chw: tuple[int, int, int]) -> tuple[int, ...] | None:
    """The output shape of one image, propagated on the meta device: shapes only, no arithmetic
    (a real pass of a 224 px VGG19 costs seconds on a small CPU, at every load)."""
    from torch.func import functional_call

    from .registry import inference_pass

    state = {k: torch.empty_like(v, device="meta") for k, v in
             [*model.named_parameters(), *model.named_buffers()]}
    with inference_pass(model):
        out = functional_call(model, state, (torch.zeros((1, *chw), device="meta"),), strict=False)
    return tuple(out.shape) if isinstance(out, torch.Tensor) else None


def check_forward(model: nn.Module, meta: dict[str, Any], name: str) -> None:
    """Class names fit the classifier, and one image of the recorded size runs to ``num_classes`` logits."""
    from .registry import inference_pass

    check_class_names(meta, name)
    chw = input_chw(meta, name)
    try:
        shape = _shape_on_meta(model, chw)
    except Exception:  # an op without a meta kernel, or a real shape error: the real pass decides
        shape = None
    if shape is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        try:
            with inference_pass(model):
                out = model(torch.zeros((1, *chw), device=device))
        except (RuntimeError, ValueError, AssertionError, IndexError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise CheckpointError(f"{name} cannot run an image of its recorded input size {chw}: {first}") from exc
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else None
    if shape != (1, int(meta["num_classes"])):
        raise CheckpointError(f"{name}: the model outputs {shape} for one image but its sidecar states "
                              f"{meta['num_classes']} classes")
