"""`--class-names` on `medprune train`: names reach the sidecar and every later command reloads the data renamed."""

from __future__ import annotations

import json

import pytest

from tests.conftest import write_tiny_npz
from tests.toolchain._byom_data import one_error_line, run_cli

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_train_with_class_names_then_evaluate(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MEDPRUNE_CACHE", str(tmp_path / "cache"))
    npz = write_tiny_npz(tmp_path / "gradesmnist.npz", n=(24, 8, 8), classes=3)
    code, out, err = run_cli(["train", "-m", "test_resnet", "-d", npz, "--img-size", 16, "--epochs", 1,
                           "--batch-size", 8, "--no-augment", "--device", "cpu", "-q",
                           "--class-names", "none, mild,severe"], capsys)
    assert code == 0, err
    weights = out.strip().splitlines()[-1].removeprefix("checkpoint: ")
    meta = json.loads(open(weights.replace(".safetensors", ".json")).read())["meta"]
    assert meta["class_names"] == ["none", "mild", "severe"]
    assert meta["dataset"]["source_class_names"] == ["class_0", "class_1", "class_2"]
    assert meta["input_profile"]["channels"] == 1 and meta["input_profile"]["image_size"] == [16, 16]
    js = tmp_path / "m.json"
    code, out, err = run_cli(["evaluate", "-c", weights, "--json", js, "--device", "cpu"], capsys)
    assert code == 0, err
    assert set(json.loads(js.read_text())["metrics"]["per_class"]) >= {"none", "mild", "severe"}


def test_wrong_number_of_class_names_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MEDPRUNE_CACHE", str(tmp_path / "cache"))
    npz = write_tiny_npz(tmp_path / "tiny.npz")
    code, _, err = run_cli(["train", "-m", "test_resnet", "-d", npz, "--epochs", 1, "-q", "--class-names", "a,b,c"],
                        capsys)
    assert code == 2 and "gives 3 names but dataset tiny has 2 classes" in one_error_line(err)


def test_class_names_in_another_order_are_refused(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    for cls in ("normal", "pneumonia"):
        (tmp_path / "xray" / cls).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(tmp_path / "xray" / cls / f"{i}.png")
    code, _, err = run_cli(["train", "-m", "test_resnet", "-d", tmp_path / "xray", "--epochs", 1, "-q",
                            "--class-names", "pneumonia,normal"], capsys)
    assert code == 2 and "label order is normal, pneumonia" in one_error_line(err)
