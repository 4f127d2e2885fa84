"""Datasets for medprune: MedMNIST .npz files and image folders, preprocessing and batch loaders.

``load_dataset("pneumoniamnist")`` finds the file under ``MEDPRUNE_DATA`` (or ``data_dir``);
a path to an ``.npz`` file or an image folder works as well.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from .dataset import SPLITS, Dataset, Split, stratified_cut
from .folder import load_folder
from .loader import Loader, make_loader
from .locate import locate
from .npz import load_npz
from .transforms import Augment, Preprocess

__all__ = ["SPLITS", "Augment", "Dataset", "Loader", "Preprocess", "Split", "load_dataset", "make_loader",
           "stratified_cut"]


def load_dataset(spec: str | Path, data_dir: str | Path | None = None, *, load_size: int | None = None,
                 val_fraction: float = 0.1, seed: int = 0, cache: bool = True,
                 progress: bool | None = None, allow_missing_class: bool = False) -> Dataset:
    """Load a dataset by MedMNIST name (``pneumoniamnist``, ``breastmnist_64``), .npz path or image folder.

    ``load_size`` resizes every image to a square of that side while loading; ``val_fraction``/``seed``
    cut a stratified validation split from train when the data has none (recorded in the fingerprint).
    Train's labels are the classes: a val/test label train lacks is a DataError, and so is a class
    without images unless ``allow_missing_class`` (``labels``).
    """
    if load_size is not None and int(load_size) < 1:
        raise DataError(f"load_size must be a positive number of pixels, got {load_size}")
    path = locate(spec, data_dir)
    if path.is_dir():
        return load_folder(path, load_size=load_size, val_fraction=val_fraction, seed=seed, cache=cache,
                           progress=progress, allow_missing_class=allow_missing_class)
    if path.suffix.lower() != ".npz":
        raise DataError(f"unsupported dataset file {path}: expected a MedMNIST .npz file or an image folder")
    return load_npz(path, load_size=load_size, val_fraction=val_fraction, seed=seed,
                    allow_missing_class=allow_missing_class)
