"""Which train images a checkpoint's val split holds, and the guard that keeps it that way downstream.

A selection split can be enlarged before training (``val_from_train``: a stratified, seeded fraction of train
moved into an official val split; ``val_fraction``: the cut that makes val when the data has none). A model is
then only ever judged on the split it was trained with: loading its data with another split would either
shrink val or, worse, put images it trained on into val. ``check_split`` refuses both.

    ds = load_dataset(cfg["data"], **split_kwargs(cfg))
    check_split(cfg, ds)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..errors import DataError
from .dataset import Split, stratified_cut

VAL_FROM_TRAIN = "val_from_train"  # dataset params key (absent when nothing was moved)
VAL_CUT = "val_cut_from_train"  # dataset params key of the cut made when the data has no val split
DEFAULT_VAL_FRACTION = 0.1


def split_kwargs(config: Mapping) -> dict:
    """The ``load_dataset`` split arguments a train config (or an imported model's data config) records;
    configs older than ``val_from_train`` moved nothing."""
    return {"val_fraction": float(config.get("val_fraction", DEFAULT_VAL_FRACTION)),
            "val_from_train": float(config.get("val_from_train") or 0.0), "seed": int(config.get("seed", 0))}


def split_kwargs_for(config: Mapping, spec) -> dict:
    """``split_kwargs(config)`` for the dataset ``config`` trained on; another dataset (``spec`` named otherwise,
    e.g. an external test set) keeps its own val: the images moved into val came from the training data only."""
    kwargs = split_kwargs(config)
    if spec is not None and _name(spec) != _name(config.get("data") or spec):
        kwargs["val_from_train"] = 0.0
    return kwargs


def _name(spec) -> str:
    name = Path(str(spec)).name
    return name[:-4] if name.lower().endswith(".npz") else name


def move_to_val(train: Split, val: Split, fraction: float, seed: int) -> tuple[Split, Split, dict]:
    """``(train, val, params)`` with a stratified ``fraction`` of ``train`` appended to ``val`` (official val first)."""
    keep, cut = stratified_cut(train.labels, fraction, seed)
    moved = train.subset(cut)
    val = Split(np.concatenate([val.images, moved.images]), np.concatenate([val.labels, moved.labels]))
    return train.subset(keep), val, {VAL_FROM_TRAIN: {"fraction": fraction, "seed": seed}}


def no_val_to_enlarge(source: str, val_fraction: float) -> DataError:
    return DataError(f"{source} has no official val split to enlarge (its val is cut from train by --val-fraction, "
                     f"now {val_fraction:g}): set --val-fraction instead of --val-from-train")


def _loaded_split(ds) -> dict:
    moved = ds.params.get(VAL_FROM_TRAIN) or {}
    cut = ds.params.get(VAL_CUT) or {}
    return {VAL_FROM_TRAIN: float(moved.get("fraction", 0.0)), "val_fraction": cut.get("fraction"),
            "seed": moved.get("seed", cut.get("seed"))}


def check_split(config: Mapping, ds, source: str = "checkpoint") -> None:
    """DataError when ``ds`` was not split the way ``config`` (a checkpoint's train/data config) was trained:
    another fraction of train moved into val, another val cut, or another split seed."""
    want = split_kwargs(config)
    got = _loaded_split(ds)
    if got[VAL_FROM_TRAIN] != want[VAL_FROM_TRAIN]:
        effect = ("its val would hold images it trained on" if got[VAL_FROM_TRAIN] > want[VAL_FROM_TRAIN]
                  else "its val would miss the selection images it was trained without")
        raise DataError(f"{source} was trained with val_from_train={want[VAL_FROM_TRAIN]:g} but {ds.name} was loaded "
                        f"with {got[VAL_FROM_TRAIN]:g}: {effect}; load it with the checkpoint's split")
    if got["val_fraction"] is not None and float(got["val_fraction"]) != want["val_fraction"]:
        raise DataError(f"{source} was trained with val_fraction={want['val_fraction']:g} but {ds.name}'s val was cut "
                        f"with {float(got['val_fraction']):g}: its val would not be the one it was selected on")
    if got["seed"] is not None and int(got["seed"]) != want["seed"]:
        raise DataError(f"{source}'s split seed is {want['seed']} but {ds.name} was split with seed {got['seed']}: "
                        "its val would hold other images")
