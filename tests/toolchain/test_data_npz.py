"""MedMNIST .npz loading, locating by name, and its one-line errors."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import write_tiny_npz
from toolchain.data import load_dataset
from toolchain.errors import DataError


def test_grey_npz_loads_official_splits(tiny_npz):
    ds = load_dataset(tiny_npz)
    assert ds.name == "tinymnist" and ds.channels == 1
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 24, "val": 8, "test": 8}
    train = ds.split("train")
    assert train.images.shape == (24, 16, 16, 1) and train.images.dtype == np.uint8
    assert train.labels.dtype == np.int64 and train.labels.shape == (24,)
    assert ds.class_names == ["class_0", "class_1"]
    assert len(ds.fingerprint) == 64


def test_rgb_npz_any_resolution(tmp_path):
    path = write_tiny_npz(tmp_path / "colour.npz", size=20, channels=3, classes=3)
    ds = load_dataset(path)
    assert ds.channels == 3 and ds.num_classes == 3
    assert ds.split("test").images.shape == (8, 20, 20, 3)


def test_load_size_resizes_npz(tiny_npz):
    ds = load_dataset(tiny_npz, load_size=8)
    assert ds.split("train").images.shape == (24, 8, 8, 1)
    assert ds.fingerprint != load_dataset(tiny_npz).fingerprint


def test_missing_val_is_cut_stratified_from_train(tmp_path):
    path = write_tiny_npz(tmp_path / "noval.npz", n=(40, 8, 8))
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files if not k.startswith("val")}
    np.savez(path, **arrays)
    a = load_dataset(path, val_fraction=0.25, seed=1)
    b = load_dataset(path, val_fraction=0.25, seed=1)
    assert len(a.split("val")) == 10 and len(a.split("train")) == 30
    assert np.bincount(a.split("val").labels).tolist() == [5, 5]
    assert np.array_equal(a.split("val").images, b.split("val").images) and a.fingerprint == b.fingerprint
    assert load_dataset(path, val_fraction=0.25, seed=2).fingerprint != a.fingerprint


def test_name_resolves_in_data_dir_and_medmnist_subdir(tmp_path, monkeypatch):
    (tmp_path / "medmnist").mkdir()
    write_tiny_npz(tmp_path / "medmnist" / "breastmnist_64.npz")
    write_tiny_npz(tmp_path / "pneumoniamnist.npz")
    ds = load_dataset("breastmnist_64", tmp_path)
    assert ds.class_names == ["malignant", "normal_benign"]
    monkeypatch.setenv("MEDPRUNE_DATA", str(tmp_path))
    assert load_dataset("pneumoniamnist").class_names == ["normal", "pneumonia"]


def test_unknown_name_says_where_it_looked_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDPRUNE_DATA", str(tmp_path))
    with pytest.raises(DataError) as err:
        load_dataset("pneumoniamnist")
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path / "medmnist" / "pneumoniamnist.npz") in msg
    assert "pip install medmnist" in msg and "PneumoniaMNIST(split='train', download=True" in msg
    monkeypatch.delenv("MEDPRUNE_DATA")
    with pytest.raises(DataError, match="MEDPRUNE_DATA is unset"):
        load_dataset("breastmnist_64")


def test_missing_file_and_corrupt_npz(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(tmp_path / "nope.npz")
    bad = tmp_path / "broken.npz"
    bad.write_bytes(b"definitely not a zip archive")
    with pytest.raises(DataError, match="corrupt npz file .*broken.npz"):
        load_dataset(bad)


def test_npz_missing_arrays_named(tmp_path):
    path = tmp_path / "partial.npz"
    np.savez(path, train_images=np.zeros((4, 8, 8), np.uint8), train_labels=np.zeros((4, 1), np.uint8))
    with pytest.raises(DataError, match="lacks arrays test_images, test_labels"):
        load_dataset(path)


def test_unknown_split(tiny_npz):
    with pytest.raises(DataError, match="unknown split 'validation'"):
        load_dataset(tiny_npz).split("validation")


def test_shared_pneumoniamnist(shared_data):
    ds = load_dataset("pneumoniamnist", shared_data)
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 4708, "val": 524, "test": 624}
    assert ds.class_names == ["normal", "pneumonia"] and ds.channels == 1 and ds.image_size == (28, 28)
    assert load_dataset(shared_data / "medmnist" / "pneumoniamnist.npz").fingerprint == ds.fingerprint
    assert load_dataset("breastmnist_64", shared_data).image_size == (64, 64)
