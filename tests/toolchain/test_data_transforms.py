"""Preprocess (channel match, resize, normalisation, serialisation), augmentation and loaders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import write_tiny_npz
from toolchain.data import Preprocess, load_dataset, make_loader
from toolchain.errors import ConfigError, DataError


@pytest.fixture
def grey(tiny_npz):
    return load_dataset(tiny_npz)


@pytest.fixture
def rgb(tmp_path):
    return load_dataset(write_tiny_npz(tmp_path / "rgb.npz", channels=3))


@pytest.mark.parametrize("in_chans", [1, 3])
@pytest.mark.parametrize("which", ["grey", "rgb"])
def test_shapes_for_both_channel_counts(which, in_chans, request):
    ds = request.getfixturevalue(which)
    pre = Preprocess.for_dataset(ds, img_size=24, in_chans=in_chans)
    x = pre(ds.split("val").images)
    assert x.shape == (8, in_chans, 24, 24) and x.dtype == torch.float32
    assert len(pre.mean) == len(pre.std) == in_chans


def test_grey_is_repeated_and_rgb_averaged(grey, rgb):
    x = Preprocess(16, 3, 0.0, 1.0)(grey.split("val").images)
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])
    img = rgb.split("val").images
    y = Preprocess(16, 1, 0.0, 1.0)(img)
    expected = torch.from_numpy(img.astype(np.float32).mean(-1) / 255.0)
    assert torch.allclose(y[:, 0], expected, atol=1e-6)


def test_normalisation_uses_train_statistics(grey):
    pre = Preprocess.for_dataset(grey, 16, 1)
    train = grey.split("train").images / 255.0
    assert pre.mean[0] == pytest.approx(train.mean()) and pre.std[0] == pytest.approx(train.std())
    x = pre(grey.split("train").images)
    assert float(x.mean()) == pytest.approx(0.0, abs=1e-5) and float(x.std()) == pytest.approx(1.0, abs=1e-2)


def test_resize_is_antialiased():
    stripes = np.zeros((1, 32, 32, 1), np.uint8)
    stripes[:, :, ::2] = 255  # one-pixel stripes must average to grey, not alias to black or white
    x = Preprocess(8, 1, 0.0, 1.0)(stripes)
    assert torch.allclose(x, torch.full_like(x, 0.5), atol=0.05)  # edges: ~0.04


def test_to_dict_round_trip_and_bad_in_chans(grey):
    pre = Preprocess.for_dataset(grey, 20, 3)
    d = pre.to_dict()
    assert d == {"img_size": 20, "in_chans": 3, "mean": list(pre.mean), "std": list(pre.std)}
    assert Preprocess.from_dict(d) == pre
    with pytest.raises(ConfigError):
        Preprocess(16, 2, 0.5, 0.2)


def test_augmentation_is_seeded_and_changes_pixels(grey):
    pre = Preprocess.for_dataset(grey, 16, 1)
    imgs = grey.split("train").images[:6]
    a = pre(imgs, augment=True, generator=torch.Generator().manual_seed(3))
    b = pre(imgs, augment=True, generator=torch.Generator().manual_seed(3))
    c = pre(imgs, augment=True, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a, pre(imgs)) and a.shape == pre(imgs).shape


def test_train_loader_is_reproducible_and_eval_loader_is_plain(grey):
    pre = Preprocess.for_dataset(grey, 16, 3)
    runs = [[(x.clone(), y.clone()) for x, y in make_loader(grey, "train", pre, 10, train=True, seed=5)]
            for _ in range(2)]
    assert len(runs[0]) == 2  # 24 images, batch 10: the ragged tail is dropped for training
    for (xa, ya), (xb, yb) in zip(*runs, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    loader = make_loader(grey, "train", pre, 10, train=True, seed=5)
    first, second = [torch.cat([y for _, y in loader]) for _ in range(2)]
    assert not torch.equal(first, second)  # a new order every epoch

    ev = make_loader(grey, "test", pre, 3)
    xs, ys = zip(*ev, strict=True)
    assert len(ev) == 3 and sum(len(y) for y in ys) == 8 and ys[0].dtype == torch.int64
    assert torch.equal(torch.cat(xs), pre(grey.split("test").images))


def test_loader_indices(grey):
    pre = Preprocess.for_dataset(grey, 16, 1)
    idx = np.array([5, 1, 7])
    (x, y), = list(make_loader(grey, "val", pre, 8, indices=idx))
    assert torch.equal(y, torch.from_numpy(grey.split("val").labels[idx]))
    with pytest.raises(DataError, match="out of range"):
        make_loader(grey, "val", pre, indices=np.array([99]))
    with pytest.raises(DataError, match="unknown split"):
        make_loader(grey, "holdout", pre)


def test_npz_fingerprint_stable_and_sensitive(tmp_path):
    a = write_tiny_npz(tmp_path / "a.npz")
    b = write_tiny_npz(tmp_path / "b.npz")
    c = write_tiny_npz(tmp_path / "c.npz", seed=1)
    fa = load_dataset(a).fingerprint
    assert fa == load_dataset(a).fingerprint == load_dataset(b).fingerprint  # content, not file name
    assert fa != load_dataset(c).fingerprint
