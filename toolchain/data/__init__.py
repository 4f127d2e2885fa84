"""Datasets for medprune: MedMNIST .npz files and image folders, preprocessing and batch loaders.

``load_dataset("pneumoniamnist")`` finds the file under ``MEDPRUNE_DATA`` (or ``data_dir``);
a path to an ``.npz`` file or an image folder works as well.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from .dataset import SPLITS, Dataset, Split, check_split_fraction, stratified_cut
from .folder import load_folder
from .loader import Loader, make_loader
from .locate import locate
from .npz import load_npz
from .transforms import Augment, Preprocess

__all__ = ["SPLITS", "Augment", "Dataset", "Loader", "Preprocess", "Split", "load_dataset", "make_loader",
           "stratified_cut"]


def load_dataset(spec: str | Path, data_dir: str | Path | None = None, *, load_size: int | None = None,
                 val_fraction: float = 0.1, val_from_train: float = 0.0, seed: int = 0, cache: bool = True,
                 progress: bool | None = None, allow_missing_class: bool = False) -> Dataset:
    """Load a dataset by MedMNIST name (``pneumoniamnist``, ``breastmnist_64``), .npz path or image folder.

    ``load_size`` resizes every image to a square of that side while loading; ``val_fraction``/``seed``
    cut a stratified validation split from train when the data has none; ``val_from_train`` moves a stratified
    fraction of train into an official val split (a larger selection split, ``toolchain.data.splits``); both
    are recorded in the fingerprint (``val_from_train`` only when set, so earlier fingerprints stay valid).
    Train's labels are the classes: a val/test label train lacks is a DataError, and so is a class
    without images unless ``allow_missing_class`` (``labels``).
    """
    if load_size is not None and int(load_size) < 1:
        raise DataError(f"load_size must be a positive number of pixels, got {load_size}")
    val_fraction = check_split_fraction("val_fraction", val_fraction)
    val_from_train = check_split_fraction("val_from_train", val_from_train)
    path = locate(spec, data_dir)
    if path.is_dir():
        return load_folder(path, load_size=load_size, val_fraction=val_fraction, val_from_train=val_from_train,
                           seed=seed, cache=cache, progress=progress, allow_missing_class=allow_missing_class)
    if path.suffix.lower() != ".npz":
        raise DataError(f"unsupported dataset file {path}: expected a MedMNIST .npz file or an image folder")
    return load_npz(path, load_size=load_size, val_fraction=val_fraction, val_from_train=val_from_train, seed=seed,
                    allow_missing_class=allow_missing_class)
