"""Image-folder datasets: both layouts, PNG/JPEG, grey/RGB, load-time resize, cache and errors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from toolchain.data import load_dataset
from toolchain.errors import DataError


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDPRUNE_CACHE", str(tmp_path / "cache"))


def _image(rng, cls: int, size: int, colour: bool) -> Image.Image:
    grey = np.clip(rng.integers(0, 80, (size, size)) + 150 * cls, 0, 255).astype(np.uint8)
    if not colour:
        return Image.fromarray(grey)
    rgb = np.stack([grey, grey, grey], -1)
    rgb[..., 0] = 255 - rgb[..., 0]  # make it truly colour
    return Image.fromarray(rgb)


def write_folder(root: Path, counts: dict[str, dict[str, int]] | dict[str, int], *, fmt="png", size=12,
                 colour=False, rgb_grey=False) -> Path:
    """counts: {split: {class: n}} (split layout) or {class: n} (flat layout)."""
    rng = np.random.default_rng(0)
    layout = {None: counts} if all(isinstance(v, int) for v in counts.values()) else counts
    for split, per_class in layout.items():
        for ci, (cls, n) in enumerate(sorted(per_class.items())):
            d = root / split / cls if split else root / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = _image(rng, ci, size, colour)
                if rgb_grey:
                    img = img.convert("RGB")  # 3 identical channels, like chest_xray_224
                img.save(d / f"img{i:03d}.{fmt}")
    return root


def test_split_layout_png_with_val_cut(tmp_path):
    root = write_folder(tmp_path / "xr", {"train": {"a": 10, "b": 10}, "test": {"a": 3, "b": 2}})
    ds = load_dataset(root, val_fraction=0.2, seed=0)
    assert ds.class_names == ["a", "b"] and ds.channels == 1
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 16, "val": 4, "test": 5}
    assert np.bincount(ds.split("val").labels).tolist() == [2, 2]
    assert ds.split("train").images.shape == (16, 12, 12, 1)
    assert ds.params["val_cut_from_train"] == {"fraction": 0.2, "seed": 0}


def test_flat_layout_jpeg_rgb_grey_is_one_channel(tmp_path):
    root = write_folder(tmp_path / "flat", {"neg": 10, "pos": 10}, fmt="jpeg", rgb_grey=True, size=16)
    ds = load_dataset(root, load_size=8)
    assert ds.channels == 1
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 14, "val": 2, "test": 4}
    assert ds.split("test").images.shape == (4, 8, 8, 1)
    # the brightness difference between the classes survives decoding and resizing
    tr = ds.split("train")
    assert tr.images[tr.labels == 1].mean() > tr.images[tr.labels == 0].mean() + 100


def test_colour_images_keep_three_channels(tmp_path):
    root = write_folder(tmp_path / "c", {"x": 4, "y": 4}, colour=True)
    ds = load_dataset(root)
    assert ds.channels == 3 and ds.split("train").images.shape[-1] == 3


def test_full_split_layout_uses_given_val(tmp_path):
    counts = {"train": {"a": 4, "b": 4}, "val": {"a": 2, "b": 1}, "test": {"a": 2, "b": 2}}
    ds = load_dataset(write_folder(tmp_path / "s", counts))
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 8, "val": 3, "test": 4}
    assert "val_cut_from_train" not in ds.params


def test_second_load_comes_from_cache_and_matches(tmp_path):
    root = write_folder(tmp_path / "xr", {"train": {"a": 6, "b": 6}, "test": {"a": 2, "b": 2}})
    first = load_dataset(root, load_size=8)
    cached = list((tmp_path / "cache" / "datasets").glob(f"{first.fingerprint}*.npz"))
    assert len(cached) == 1
    second = load_dataset(root, load_size=8)
    assert second.fingerprint == first.fingerprint
    for s in first.splits:
        assert np.array_equal(first.split(s).images, second.split(s).images)
        assert np.array_equal(first.split(s).labels, second.split(s).labels)
    assert load_dataset(root, load_size=6).fingerprint != first.fingerprint


def test_fingerprint_changes_when_a_file_changes(tmp_path):
    root = write_folder(tmp_path / "xr", {"a": 5, "b": 5})
    before = load_dataset(root).fingerprint
    assert load_dataset(root).fingerprint == before
    Image.fromarray(np.full((12, 12), 7, np.uint8)).save(root / "a" / "img000.png")
    assert load_dataset(root).fingerprint != before


def test_mixed_sizes_need_load_size(tmp_path):
    root = write_folder(tmp_path / "m", {"a": 3, "b": 3})
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(root / "a" / "big.png")
    with pytest.raises(DataError, match="different sizes.*load_size"):
        load_dataset(root)
    assert load_dataset(root, load_size=10).image_size == (10, 10)


def test_corrupt_image_is_named(tmp_path):
    root = write_folder(tmp_path / "bad", {"a": 3, "b": 3})
    (root / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(DataError, match="corrupt or unreadable image .*broken.png"):
        load_dataset(root)


def test_single_class_and_empty_folder(tmp_path):
    with pytest.raises(DataError, match="single class"):
        load_dataset(write_folder(tmp_path / "one", {"only": 4}))
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="no images found"):
        load_dataset(tmp_path / "empty")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(tmp_path / "missing_dir/")


def test_hidden_files_and_non_images_are_ignored(tmp_path):
    root = write_folder(tmp_path / "h", {"a": 3, "b": 3})
    (root / "a" / "notes.txt").write_text("x")
    (root / "a" / ".DS_Store").write_bytes(b"junk")
    (root / ".hidden").mkdir()
    assert sum(len(s) for s in load_dataset(root).splits.values()) == 6


def test_shared_chest_xray_sample(shared_data, tmp_path):
    """A few real JPEGs per class (linked, not copied) through the same folder loader."""
    src = shared_data / "chest_xray_224"
    if not src.is_dir():
        pytest.skip("chest_xray_224 not in the shared data")
    for split in ("train", "test"):
        for cls in ("NORMAL", "PNEUMONIA"):
            d = tmp_path / "cx" / split / cls
            d.mkdir(parents=True)
            for f in sorted((src / split / cls).iterdir())[:4]:
                os.symlink(f, d / f.name)
    ds = load_dataset(tmp_path / "cx", load_size=32)
    assert ds.class_names == ["NORMAL", "PNEUMONIA"] and ds.channels == 1
    assert ds.split("train").images.shape[1:] == (32, 32, 1)
    assert sum(len(s) for s in ds.splits.values()) == 16


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("MEDPRUNE_SLOW") != "1", reason="loads 5.8k JPEGs; set MEDPRUNE_SLOW=1")
def test_shared_chest_xray_full(shared_data):
    ds = load_dataset("chest_xray_224", shared_data, load_size=64)
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 4694, "val": 522, "test": 624}
    assert ds.channels == 1 and ds.image_size == (64, 64)
