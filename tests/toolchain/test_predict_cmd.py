"""`medprune predict`: same preprocessing as training, JSON/CSV output, input warnings, one-line errors."""

from __future__ import annotations

import csv
import io
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from tests.toolchain._byom_data import one_error_line, run_cli, write_png_folder

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """A random-init test_resnet imported with --data (so its sidecar holds an input profile)."""
    import timm

    from toolchain.cli import main

    root = tmp_path_factory.mktemp("predict")
    folder = write_png_folder(root / "xray", per_class=10, size=32)
    torch.manual_seed(0)
    weights = root / "w.pt"
    torch.save(timm.create_model("test_resnet", num_classes=2, in_chans=1).state_dict(), weights)
    with pytest.MonkeyPatch.context() as mp, pytest.raises(SystemExit) as exc:
        mp.setenv("MEDPRUNE_CACHE", str(root / "cache"))
        main(["import", "--arch", "test_resnet", "--weights", str(weights), "--class-names", "normal,pneumonia",
              "--img-size", "32", "--in-chans", "1", "--mean", "0.4", "--std", "0.25", "--data", str(folder),
              "--out", str(root / "model"), "--device", "cpu"])
    assert exc.value.code in (0, None)
    return root / "model" / "model.safetensors", folder


def test_predictions_match_the_training_pipeline(imported, tmp_path, capsys, monkeypatch):
    from toolchain.evaluate import dataset_for_checkpoint, predict
    from toolchain.models import load_checkpoint

    monkeypatch.setenv("MEDPRUNE_CACHE", str(tmp_path / "cache"))
    weights, folder = imported
    code, out, err = run_cli(["predict", folder, "-c", weights, "--device", "cpu", "--batch-size", 7], capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["class_names"] == ["normal", "pneumonia"] and len(doc["predictions"]) == 20
    got = np.array([[r["probabilities"]["normal"], r["probabilities"]["pneumonia"]] for r in doc["predictions"]])
    assert np.ptp(got[:, 0]) > 1e-3  # the images get different answers, so the comparison below can fail
    assert all(not r["warnings"] for r in doc["predictions"])
    assert all(r["prediction"] == max(r["probabilities"], key=r["probabilities"].get) for r in doc["predictions"])
    model, meta = load_checkpoint(weights)
    ds, preprocess = dataset_for_checkpoint(meta)  # the data as training/evaluation loads it
    for split in ("train", "test"):
        expected, _ = predict(model, ds, split, preprocess)
        nearest = np.abs(expected[:, None, :] - got[None]).max(-1).min(1)
        assert nearest.max() <= 1e-5, split  # every image's probabilities appear among predict's


def test_csv_and_warnings_for_inputs_unlike_training(imported, tmp_path, capsys):
    weights, folder = imported
    odd = tmp_path / "odd"
    odd.mkdir()
    shutil.copy(folder / "0" / "img00.png", odd / "normal.png")
    Image.fromarray(np.full((8, 8), 60, np.uint8)).save(odd / "tiny.png")
    rgb = np.stack([np.full((32, 32), v, np.uint8) for v in (200, 40, 40)], -1)
    Image.fromarray(rgb).save(odd / "colour.png")
    Image.fromarray(np.full((32, 32), 255, np.uint8)).save(odd / "white.png")
    (odd / "notes.txt").write_text("ignored: not an image")
    out_csv = tmp_path / "p.csv"
    code, out, err = run_cli(["predict", odd, "-c", weights, "-o", out_csv, "--device", "cpu"], capsys)
    assert code == 0, err
    assert "4 files, 3 with input warnings" in out
    rows = {r["file"].split("/")[-1]: r for r in csv.DictReader(io.StringIO(out_csv.read_text()))}
    assert list(next(iter(rows.values()))) == ["file", "prediction", "probability", "p_normal", "p_pneumonia",
                                               "warnings"]
    assert rows["normal.png"]["warnings"] == ""
    assert "under half the training side" in rows["tiny.png"]["warnings"]
    assert "colour image" in rows["colour.png"]["warnings"]
    assert "mean intensity 1.00" in rows["white.png"]["warnings"]
    assert err.count("medprune: warning:") == 3
    for r in rows.values():
        assert abs(float(r["p_normal"]) + float(r["p_pneumonia"]) - 1) < 1e-5


def _compressed_dicom():
    from pydicom.data import get_testdata_file

    from toolchain.data.dicom import read_dicom
    from toolchain.errors import DataError

    path = get_testdata_file("JPEGLSNearLossless_08.dcm")
    try:
        read_dicom(path)
    except DataError:
        return path
    pytest.skip("a JPEG-LS decoder is installed: no undecodable DICOM to test with")


@pytest.mark.parametrize("case, message", [
    ("missing", "input not found"), ("txt", "not an image file"), ("format", "json or csv"),
    ("dicom", "cannot decode its compressed transfer syntax"),
])
def test_errors_are_one_line(imported, tmp_path, capsys, case, message):
    weights, folder = imported
    img = folder / "0" / "img00.png"
    argv = {"missing": [tmp_path / "nope.png"], "txt": [tmp_path / "a.txt"], "format": [img, "--format", "xml"],
            "dicom": [] if case != "dicom" else [_compressed_dicom()]}[case]
    (tmp_path / "a.txt").write_text("x")
    code, _, err = run_cli(["predict", *argv, "-c", weights], capsys)
    assert code == 2 and message in one_error_line(err)
