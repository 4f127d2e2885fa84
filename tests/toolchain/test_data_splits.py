"""A larger selection split carved from train (``val_from_train``, ``--val-fraction``) and its guard downstream."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest

from tests.conftest import write_tiny_npz
from tests.toolchain.test_data_folder import write_folder
from toolchain.data import load_dataset
from toolchain.data.splits import check_split, split_kwargs, split_kwargs_for
from toolchain.errors import DataError


def _no_val(path):
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files if not k.startswith("val")}
    np.savez(path, **arrays)
    return path


def _rows(split) -> set[bytes]:
    return {img.tobytes() for img in split.images}


def test_val_from_train_moves_a_stratified_seeded_fraction(tmp_path):
    path = write_tiny_npz(tmp_path / "tinymnist.npz", n=(40, 8, 8))
    base = load_dataset(path)
    ds = load_dataset(path, val_from_train=0.25)
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 30, "val": 18, "test": 8}
    moved = ds.split("val").subset(np.arange(8, 18))
    assert np.bincount(moved.labels).tolist() == [5, 5]  # stratified: 25 % of each class of 20
    # official val first, unchanged; the moved images came from train and left it; test untouched
    assert np.array_equal(ds.split("val").images[:8], base.split("val").images)
    assert _rows(moved) <= _rows(base.split("train")) and not _rows(moved) & _rows(ds.split("train"))
    assert np.array_equal(ds.split("test").images, base.split("test").images)
    again = load_dataset(path, val_from_train=0.25)
    assert np.array_equal(again.split("val").images, ds.split("val").images) and again.fingerprint == ds.fingerprint
    other_seed = load_dataset(path, val_from_train=0.25, seed=1)
    assert not np.array_equal(other_seed.split("val").images, ds.split("val").images)
    assert ds.params["val_from_train"] == {"fraction": 0.25, "seed": 0}


def test_fingerprint_changes_only_when_the_option_is_set(tmp_path):
    path = write_tiny_npz(tmp_path / "tinymnist.npz", n=(40, 8, 8))
    base = load_dataset(path)
    assert load_dataset(path, val_from_train=0.0).fingerprint == base.fingerprint and base.params == {}
    assert len({base.fingerprint, load_dataset(path, val_from_train=0.2).fingerprint,
                load_dataset(path, val_from_train=0.25).fingerprint}) == 3


def test_pneumoniamnist_fingerprint_is_unchanged_and_val_grows(shared_data):
    # d9ee07aa9e88 is the dataset fingerprint recorded in every existing PneumoniaMNIST checkpoint
    assert load_dataset("pneumoniamnist", shared_data).fingerprint.startswith("d9ee07aa9e88")
    ds = load_dataset("pneumoniamnist", shared_data, val_from_train=0.2)
    assert len(ds.split("val")) + len(ds.split("train")) == 524 + 4708 and len(ds.split("test")) == 624


def test_folder_with_val_is_enlarged_and_without_val_refuses(tmp_path):
    counts = {"train": {"a": 8, "b": 8}, "val": {"a": 2, "b": 1}, "test": {"a": 2, "b": 2}}
    ds = load_dataset(write_folder(tmp_path / "s", counts), val_from_train=0.25)
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 12, "val": 7, "test": 4}
    assert np.bincount(ds.split("val").labels).tolist() == [4, 3]
    flat = write_folder(tmp_path / "flat", {"a": 10, "b": 10})
    with pytest.raises(DataError, match="no official val split to enlarge.*--val-fraction"):
        load_dataset(flat, val_from_train=0.2)


def test_no_val_npz_refuses_val_from_train_and_takes_val_fraction(tmp_path):
    path = _no_val(write_tiny_npz(tmp_path / "noval.npz", n=(40, 8, 8)))
    with pytest.raises(DataError, match="no official val split to enlarge"):
        load_dataset(path, val_from_train=0.2)
    assert len(load_dataset(path, val_fraction=0.25).split("val")) == 10


@pytest.mark.parametrize("kw", [{"val_from_train": 0.9}, {"val_from_train": -0.1}, {"val_fraction": 0.95}])
def test_fractions_outside_range_are_one_line_errors(tiny_npz, kw):
    with pytest.raises(DataError, match=r"must be in \[0, 0.9\)"):
        load_dataset(tiny_npz, **kw)


def test_train_cache_key_unchanged_unless_set():
    import toolchain.train as train_mod
    from toolchain.train import TrainConfig

    with mock.patch.object(train_mod, "training_code_version", return_value="v"):
        key = TrainConfig(model="vgg19", epochs=3, lr=1e-4, device="cpu").cache_key("f" * 64)
        # the key this config had before val_from_train existed (same code-version stand-in)
        assert key == "0ba509e15fd0"
        assert TrainConfig(model="vgg19", epochs=3, lr=1e-4, device="cpu",
                           val_from_train=0.2).cache_key("f" * 64) != key


def test_train_cli_rejects_bad_fractions_in_one_line(cli_env, capsys):
    from toolchain.cli import main

    for flag, value in (("--val-from-train", "0.95"), ("--val-fraction", "-1")):
        with pytest.raises(SystemExit) as exit_:
            main(["train", flag, value])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.count("\n") == 1, err
        assert f"{flag} must be in [0, 0.9)" in err and "Traceback" not in err


def test_guard_refuses_a_split_other_than_the_trained_one(tmp_path):
    path = write_tiny_npz(tmp_path / "tinymnist.npz", n=(40, 8, 8))
    enlarged = load_dataset(path, val_from_train=0.2)
    official = load_dataset(path)
    check_split({"val_from_train": 0.2}, enlarged)
    check_split({}, official)  # a checkpoint from before the option
    with pytest.raises(DataError, match="val_from_train=0.2.*loaded with 0: its val would miss"):
        check_split({"val_from_train": 0.2}, official)
    with pytest.raises(DataError, match="val_from_train=0 .*with 0.2: its val would hold images it trained on"):
        check_split({}, enlarged)
    with pytest.raises(DataError, match="seed"):
        check_split({"val_from_train": 0.2, "seed": 1}, enlarged)
    noval = _no_val(write_tiny_npz(tmp_path / "noval.npz", n=(40, 8, 8)))
    with pytest.raises(DataError, match="val_fraction=0.25"):
        check_split({"val_fraction": 0.25}, load_dataset(noval))
    assert split_kwargs({}) == {"val_fraction": 0.1, "val_from_train": 0.0, "seed": 0}
    trained = {"data": "pneumoniamnist", "val_from_train": 0.2}
    assert split_kwargs_for(trained, "/data/medmnist/pneumoniamnist.npz")["val_from_train"] == 0.2  # same data
    assert split_kwargs_for(trained, "breastmnist")["val_from_train"] == 0.0


def test_checkpoint_consumers_load_the_trained_split(tmp_path, monkeypatch):
    from benchmarks.studies.recovery_grid import train_command
    from toolchain.evaluate import evaluate_checkpoint
    from toolchain.models import checkpoint_meta
    from toolchain.prune_eval import load_context
    from toolchain.train import TrainConfig, train

    npz = write_tiny_npz(tmp_path / "tinymnist.npz", n=(40, 8, 8))
    monkeypatch.setenv("MEDPRUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MEDPRUNE_THREADS", "1")
    weights = train(TrainConfig(model="test_resnet", data=str(npz), img_size=16, epochs=1, batch_size=16,
                                augment=False, patience=0, device="cpu", quiet=True, val_from_train=0.25))
    meta = checkpoint_meta(weights)
    assert meta["metrics"]["val"]["n"] == 18 and meta["train"]["train_images"] == 30
    ctx = load_context(weights)  # what the recovery study, prune and deploy load
    assert len(ctx.ds.split("val")) == 18 and ctx.ds.fingerprint == meta["dataset"]["fingerprint"]
    metrics, _ = evaluate_checkpoint(weights, split="val")
    assert metrics["n"] == 18
    # another dataset (an external set without val) keeps its own split: nothing of it was moved
    other = _no_val(write_tiny_npz(tmp_path / "external.npz", n=(40, 8, 8), seed=3))
    assert evaluate_checkpoint(weights, data=str(other), split="val")[0]["n"] == 4
    assert "--val-from-train 0.25" in train_command(meta["train_config"], "")
    assert "--val-" not in train_command({**meta["train_config"], "val_from_train": 0.0}, "")
