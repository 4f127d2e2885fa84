"""Reference sampling: every class covered, deterministic, confidence/clustering semantics, errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import tiny_model
from toolchain.data import Dataset, Preprocess, Split, load_dataset
from toolchain.errors import ConfigError
from toolchain.sampling import STRATEGIES, SamplingWarning, model_outputs, select_reference

# untrained tiny models misclassify whole classes: the confidence fallback warning is expected noise here
pytestmark = pytest.mark.filterwarnings("ignore::toolchain.sampling.SamplingWarning")


@pytest.fixture
def ds(tiny_npz):
    return load_dataset(tiny_npz)


@pytest.fixture
def pre(ds):
    return Preprocess.for_dataset(ds, 16, 1)


def _imbalanced(counts=(9, 2)) -> Dataset:
    rng = np.random.default_rng(0)
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(counts)]).astype(np.int64)
    images = np.clip(rng.integers(0, 100, (len(labels), 16, 16, 1)) + 150 * labels[:, None, None, None], 0, 255)
    split = Split(images.astype(np.uint8), labels)
    return Dataset("imb", "mem", ["a", "b"], 1, {"train": split, "val": split, "test": split}, "0" * 64)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_covers_every_class_and_is_deterministic(ds, pre, strategy):
    model = tiny_model("vgg")
    a = select_reference(model, ds, pre, n_per_class=3, strategy=strategy, seed=0)
    b = select_reference(model, ds, pre, n_per_class=3, strategy=strategy, seed=0)
    labels = ds.split("train").labels
    assert a.dtype == np.int64 and np.array_equal(a, b)
    assert len(np.unique(a)) == len(a) == 6
    assert np.bincount(labels[a], minlength=2).tolist() == [3, 3]


def test_random_depends_on_seed(ds, pre):
    model = tiny_model("vgg")
    picks = {tuple(select_reference(model, ds, pre, 3, "random", seed=s)) for s in range(4)}
    assert len(picks) > 1


def test_confidence_picks_most_confident_correct(ds, pre):
    model = tiny_model("resnet")
    idx = select_reference(model, ds, pre, 2, "confidence")
    split = ds.split("train")
    probs, _ = model_outputs(model, split.images, pre, features=False)
    for c in range(2):
        members = np.flatnonzero(split.labels == c)
        correct = members[probs[members].argmax(1) == c]
        chosen = idx[split.labels[idx] == c]
        if len(correct) >= 2:
            best = correct[np.argsort(-probs[correct, c], kind="stable")[:2]]
            assert sorted(chosen.tolist()) == sorted(best.tolist())


class _AlwaysZero(nn.Module):
    def forward(self, x):
        return torch.stack([torch.ones(len(x)), torch.zeros(len(x))], 1) + 0 * x.mean()


def test_confidence_falls_back_with_warning(ds, pre):
    with pytest.warns(SamplingWarning, match="correctly classified"):
        idx = select_reference(_AlwaysZero(), ds, pre, 2, "confidence")
    assert np.bincount(ds.split("train").labels[idx]).tolist() == [2, 2]


def test_clustering_uses_penultimate_features_and_fallback(ds, pre):
    a = select_reference(tiny_model("vit"), ds, pre, 4, "clustering", seed=1)
    assert len(a) == 8
    # a model without timm's forward_features: the last Linear's input stands in
    plain = nn.Sequential(nn.Flatten(), nn.Linear(256, 8), nn.ReLU(), nn.Linear(8, 2))
    b = select_reference(plain, ds, pre, 4, "clustering", seed=1)
    assert np.array_equal(b, select_reference(plain, ds, pre, 4, "clustering", seed=1))


def test_small_class_uses_all_with_warning():
    data = _imbalanced((9, 2))
    pre = Preprocess(16, 1, (0.5,), (0.3,))
    for strategy in STRATEGIES:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            idx = select_reference(tiny_model("vgg"), data, pre, 4, strategy)
        assert any("only 2 images" in str(w.message) for w in caught)
        assert np.bincount(data.split("train").labels[idx]).tolist() == [4, 2]


def test_pool_limits_scored_images(ds, pre):
    idx = select_reference(tiny_model("vgg"), ds, pre, 2, "confidence", pool_per_class=5)
    assert len(idx) == 4
    with pytest.raises(ConfigError):
        select_reference(tiny_model("vgg"), ds, pre, 3, "confidence", pool_per_class=2)


def test_errors(ds, pre):
    model = tiny_model("vgg")
    with pytest.raises(ConfigError, match="larger than every class"):
        select_reference(model, ds, pre, 100, "random")
    with pytest.raises(ConfigError, match="unknown sampling"):
        select_reference(model, ds, pre, 2, "kmeans")
    with pytest.raises(ConfigError):
        select_reference(model, ds, pre, 0, "random")
