"""Inference over a dataset split and the clinical metrics of the result."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import DataError


@torch.no_grad()
def predict_logits(model: nn.Module, ds, split: str, preprocess, batch_size: int = 128, device: str = "cpu",
                   indices: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Raw float32 logits ``(N, K)`` and labels ``(N,)`` of ``split`` (in order, or of ``indices``)."""
    from .data import make_loader

    was_training = model.training
    model.eval()
    logits, labels = [], []
    try:
        for x, y in make_loader(ds, split, preprocess, batch_size, train=False, indices=indices):
            logits.append(model(x.to(device)).float().cpu().numpy())
            labels.append(y.numpy())
    finally:
        model.train(was_training)
    if not logits:
        k = len(ds.class_names)
        return np.zeros((0, k), dtype=np.float32), np.zeros((0,), dtype=np.int64)
    return np.concatenate(logits), np.concatenate(labels)


def predict(model: nn.Module, ds, split: str, preprocess, batch_size: int = 128, device: str = "cpu",
            indices: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities ``(N, K)`` and labels ``(N,)`` of ``split`` (in order, or of ``indices``)."""
    logits, labels = predict_logits(model, ds, split, preprocess, batch_size, device, indices)
    return torch.softmax(torch.from_numpy(logits), dim=1).numpy(), labels


def evaluate(model: nn.Module, ds, split: str, preprocess, batch_size: int = 128, device: str = "cpu",
             indices: np.ndarray | None = None, *, intervals: bool = True) -> dict[str, Any]:
    """``compute_metrics`` of ``model`` on ``split`` (accuracy, balanced accuracy, AUC, ECE, per class,
    with 95 % intervals and per-class n unless ``intervals=False``)."""
    from .metrics import compute_metrics
    from .ordinal import is_ordinal

    probs, labels = predict(model, ds, split, preprocess, batch_size, device, indices)
    return compute_metrics(labels, probs, list(ds.class_names), intervals=intervals, ordinal=is_ordinal(ds))


def dataset_for_checkpoint(meta: dict[str, Any], data: str | None = None, data_dir: str | None = None,
                           allow_missing_class: bool | None = None, ordinal: bool | None = None):
    """``(dataset, preprocess)`` a checkpoint expects: ``data`` or the dataset it was trained on, loaded
    with the training run's split settings, and the preprocessing stored with the model."""
    from .data import Preprocess, load_dataset
    from .data.class_names import apply_recorded_names
    from .data.splits import check_split, split_kwargs, split_kwargs_for

    # imported models record how their evaluation data is loaded as data_config (they were not trained here)
    cfg = meta.get("train_config") or meta.get("data_config") or {}
    spec = data or cfg.get("data") or (meta.get("dataset") or {}).get("name")
    if not spec:
        raise DataError("checkpoint does not record its dataset: pass --data")
    if allow_missing_class is None:  # as the model was trained
        allow_missing_class = bool(cfg.get("allow_missing_class", False))
    split = split_kwargs_for(cfg, spec)  # val as trained: with the train images moved there, if any
    ds = load_dataset(spec, data_dir, load_size=cfg.get("load_size"), allow_missing_class=allow_missing_class,
                      **split)
    if split == split_kwargs(cfg):  # its own dataset: never judged on another split than it was trained with
        check_split(cfg, ds)
    apply_recorded_names(ds, meta)
    from .ordinal import ORDINAL_KEY, mark_ordinal

    mark_ordinal(ds, bool(meta.get(ORDINAL_KEY)) if ordinal is None else ordinal)  # None: as trained
    if ds.num_classes != int(meta["num_classes"]):
        raise DataError(f"dataset {ds.name} has {ds.num_classes} classes but the checkpoint predicts "
                        f"{meta['num_classes']}")
    preprocess = (Preprocess.from_dict(meta["preprocess"]) if meta.get("preprocess")
                  else Preprocess.for_dataset(ds, int(meta["img_size"]), int(meta["in_chans"])))
    return ds, preprocess


def evaluate_checkpoint(checkpoint: str | os.PathLike, data: str | None = None, split: str = "test", *,
                        data_dir: str | None = None, batch_size: int = 128, device: str = "cpu",
                        allow_missing_class: bool | None = None,
                        ordinal: bool | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(metrics, meta)`` of a saved checkpoint on ``data`` (default: the dataset it was trained on)."""
    from .models import load_checkpoint

    model, meta = load_checkpoint(checkpoint, device=device)
    ds, preprocess = dataset_for_checkpoint(meta, data, data_dir, allow_missing_class, ordinal)
    return evaluate(model, ds, split, preprocess, batch_size, device), meta
