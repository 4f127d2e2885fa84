"""MedMNIST-format .npz files: ``{train,val,test}_images`` (N,H,W[,3]) and ``*_labels`` (N,1) uint8."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from ..errors import DataError
from .dataset import Dataset, Split, stratified_cut
from .fingerprint import fingerprint_arrays
from .labels import npz_num_classes
from .locate import medmnist_class_names
from .resize import resize_batch
from .splits import move_to_val, no_val_to_enlarge


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            names = list(npz.files)
            required = ["train_images", "train_labels", "test_images", "test_labels"]
            missing = [k for k in required if k not in names]
            if "val_images" in names and "val_labels" not in names:
                missing.append("val_labels")
            if missing:
                raise DataError(
                    f"npz file {path} lacks arrays {', '.join(missing)} (has: {', '.join(names) or 'none'}); "
                    "expected MedMNIST layout train/val/test _images and _labels"
                )
            keys = [k for k in names if k.endswith(("_images", "_labels")) and k.split("_")[0] in
                    ("train", "val", "test")]
            return {k: npz[k] for k in keys}
    except DataError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise DataError(f"corrupt npz file {path}: {type(exc).__name__}: {exc}".replace("\n", " ")) from None


def _as_nhwc(images: np.ndarray, key: str, path: Path) -> np.ndarray:
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise DataError(f"npz file {path}: {key} has shape {images.shape}, expected (N,H,W) or (N,H,W,1|3)")
    if images.dtype != np.uint8:
        if not np.issubdtype(images.dtype, np.integer) or images.size and (images.min() < 0 or images.max() > 255):
            raise DataError(f"npz file {path}: {key} is {images.dtype}, expected uint8 pixels 0..255")
        images = images.astype(np.uint8)
    return np.ascontiguousarray(images)


def _as_labels(labels: np.ndarray, key: str, n: int, path: Path) -> np.ndarray:
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim == 2 and labels.shape[1] > 1:
        raise DataError(f"npz file {path}: {key} is multi-label ({labels.shape[1]} columns); only single-label "
                        "classification is supported")
    if labels.ndim != 1 or len(labels) != n:
        raise DataError(f"npz file {path}: {key} has shape {labels.shape}, expected ({n},) or ({n},1)")
    if not np.issubdtype(labels.dtype, np.integer) or (labels.size and labels.min() < 0):
        raise DataError(f"npz file {path}: {key} must hold non-negative integer class ids")
    return labels.astype(np.int64)


def load_npz(path: Path, *, name: str | None = None, load_size: int | None = None, val_fraction: float = 0.1,
             val_from_train: float = 0.0, seed: int = 0, allow_missing_class: bool = False) -> Dataset:
    arrays = _read_arrays(path)
    name = name or path.stem
    splits: dict[str, Split] = {}
    for split in ("train", "val", "test"):
        if f"{split}_images" not in arrays:
            continue
        images = _as_nhwc(arrays[f"{split}_images"], f"{split}_images", path)
        labels = _as_labels(arrays[f"{split}_labels"], f"{split}_labels", len(images), path)
        if len(images) == 0:
            raise DataError(f"npz file {path}: split {split} is empty")
        splits[split] = Split(images, labels)

    shapes = {s.images.shape[1:] for s in splits.values()}
    if len(shapes) > 1:
        raise DataError(f"npz file {path}: splits have different image shapes {sorted(shapes)}")

    num_classes, missing = npz_num_classes({k: sp.labels for k, sp in splits.items()}, str(path),
                                           allow_missing_class)
    # The fingerprint covers the arrays as stored plus every choice made while loading them.
    params: dict = {"classes_without_train_images": missing} if missing else {}
    if "val" not in splits:
        if val_from_train:
            raise no_val_to_enlarge(f"npz file {path}", val_fraction)
        keep, cut = stratified_cut(splits["train"].labels, val_fraction, seed)
        train = splits["train"]
        splits = {"train": train.subset(keep), "val": train.subset(cut), "test": splits["test"]}
        params.update(val_cut_from_train={"fraction": val_fraction, "seed": seed})
    elif val_from_train:  # recorded only when set, so every fingerprint from before the option is unchanged
        train, val, moved = move_to_val(splits["train"], splits["val"], val_from_train, seed)
        splits = {"train": train, "val": val, "test": splits["test"]}
        params.update(moved)
    if load_size:
        params["load_size"] = int(load_size)
        splits = {k: Split(resize_batch(s.images, int(load_size)), s.labels) for k, s in splits.items()}
    fingerprint = fingerprint_arrays(arrays, params)

    channels = int(splits["train"].images.shape[-1])
    return Dataset(
        name=name, source=str(path), class_names=medmnist_class_names(name, num_classes), channels=channels,
        splits={k: splits[k] for k in ("train", "val", "test")}, fingerprint=fingerprint, params=params,
    )
