"""Labels: train decides the classes; a val/test label train never had and an empty class are errors
(the latter unless --allow-missing-class), for image folders, .npz files and through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import write_tiny_npz
from tests.toolchain.test_cli_foundation import assert_one_line_error, run
from tests.toolchain.test_data_folder import write_folder
from toolchain.data import load_dataset
from toolchain.errors import DataError


@pytest.fixture(autouse=True)
def _env(cli_env):
    pass


def test_val_label_train_never_had_is_named_with_its_split(tmp_path):
    root = write_folder(tmp_path / "xr", {"train": {"normal": 4, "pneumonia": 4},
                                          "val": {"normal": 2, "covid": 2, "pneumonia": 2}})
    with pytest.raises(DataError, match=r"val label 'covid' .*never occurs in train"):
        load_dataset(root)
    with pytest.raises(DataError, match="val label 'covid'"):  # the flag is for empty classes, not new ones
        load_dataset(root, allow_missing_class=True)


def test_test_label_train_never_had(tmp_path):
    root = write_folder(tmp_path / "xr", {"train": {"a": 4, "b": 4}, "test": {"a": 2, "c": 1}})
    with pytest.raises(DataError, match=r"test label 'c'"):
        load_dataset(root)


@pytest.mark.parametrize("counts, empty", [
    ({"train": {"a": 4, "b": 4, "c": 0}}, "train/c"),
    ({"train": {"a": 4, "b": 4}, "test": {"a": 2, "b": 0}}, "test/b"),
    ({"a": 5, "b": 5, "c": 0}, "/c"),
])
def test_empty_class_folder_needs_the_flag(tmp_path, counts, empty):
    root = write_folder(tmp_path / "xr", counts)
    with pytest.raises(DataError, match=f"class folder .*{empty} is empty.*--allow-missing-class"):
        load_dataset(root)
    ds = load_dataset(root, allow_missing_class=True)
    train_classes = counts.get("train", counts)
    assert ds.class_names == sorted(train_classes)  # the empty class keeps its output and index
    assert ds.params["empty_class_folders"]


def test_allowed_empty_class_changes_the_fingerprint(tmp_path):
    without = write_folder(tmp_path / "a", {"train": {"a": 4, "b": 4}})
    with_empty = write_folder(tmp_path / "b", {"train": {"a": 4, "b": 4, "c": 0}})
    fp1 = load_dataset(without).fingerprint
    ds = load_dataset(with_empty, allow_missing_class=True)
    assert ds.num_classes == 3 and ds.fingerprint != fp1


def _npz(path, labels: dict[str, list[int]]):
    arrays = {}
    for split, y in labels.items():
        arrays[f"{split}_images"] = np.zeros((len(y), 8, 8), dtype=np.uint8)
        arrays[f"{split}_labels"] = np.array(y, dtype=np.uint8).reshape(-1, 1)
    np.savez(path, **arrays)
    return path


def test_npz_unknown_test_label(tmp_path):
    path = _npz(tmp_path / "x.npz", {"train": [0, 1, 0, 1], "val": [0, 1], "test": [0, 2]})
    with pytest.raises(DataError, match="test label 2 never occurs in train"):
        load_dataset(path)
    with pytest.raises(DataError, match="test label 2"):
        load_dataset(path, allow_missing_class=True)


def test_npz_class_without_train_images(tmp_path):
    path = _npz(tmp_path / "x.npz", {"train": [0, 2, 0, 2], "val": [0, 1], "test": [0, 2]})
    with pytest.raises(DataError, match=r"class 1 has no train images \(it occurs in val\).*--allow-missing-class"):
        load_dataset(path)
    ds = load_dataset(path, allow_missing_class=True)
    assert ds.num_classes == 3 and ds.params["classes_without_train_images"] == [1]


def test_cli_reports_unknown_label_and_empty_class_in_one_line(tmp_path, capsys):
    root = write_folder(tmp_path / "xr", {"train": {"a": 4, "b": 4}, "val": {"a": 2, "zebra": 2}})
    code, _, err = run(["train", "--model", "resnet50", "--data", str(root), "--quiet"], capsys)
    assert code == 2
    assert_one_line_error(code, err, "val label 'zebra'")
    root = write_folder(tmp_path / "xr2", {"train": {"a": 4, "b": 4, "c": 0}})
    code, _, err = run(["train", "--model", "resnet50", "--data", str(root), "--quiet"], capsys)
    assert code == 2
    assert_one_line_error(code, err, "train/c is empty", "--allow-missing-class")


def test_allow_missing_class_is_recorded_and_inherited(tmp_path, capsys):
    root = write_folder(tmp_path / "xr", {"train": {"a": 6, "b": 6, "c": 0}, "test": {"a": 2, "b": 2}})
    out = tmp_path / "m.safetensors"
    code, _, err = run(["train", "--model", "vgg19", "--data", str(root), "--img-size", "12", "--epochs", "1",
                        "--batch-size", "4", "--device", "cpu", "--quiet", "--allow-missing-class",
                        "--build-arg", 'cfg=[4, "M"]', "--build-arg", "mlp_ratio=0.01", "--out", str(out)], capsys)
    assert code == 0, err
    meta = json.loads(out.with_suffix(".json").read_text())["meta"]
    assert meta["class_names"] == ["a", "b", "c"] and meta["train_config"]["allow_missing_class"] is True
    # evaluate loads the data as the model was trained: no flag needed, no error
    code, _, err = run(["evaluate", "--checkpoint", str(out)], capsys)
    assert code == 0, err


def test_medmnist_layout_unchanged(tmp_path):
    ds = load_dataset(write_tiny_npz(tmp_path / "tinymnist.npz"))
    assert ds.num_classes == 2 and "classes_without_train_images" not in ds.params
