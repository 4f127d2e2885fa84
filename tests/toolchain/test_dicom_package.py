"""DICOM the same in training, `medprune predict -c` and the package's predict.py (`medprune predict --package`).

The package template cannot import medprune, so it carries its own copy of the DICOM display
pipeline: these tests keep the two equal, pixel for pixel on every file pydicom ships that decodes
here, and in probabilities (<= 1e-4) through an exported package.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.toolchain._byom_data import one_error_line, run_cli
from toolchain.errors import DataError

pydicom = pytest.importorskip("pydicom")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _shipped() -> list[str]:
    from pydicom.data import get_testdata_files

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sorted(get_testdata_files("*.dcm"))


def test_template_decodes_every_shipped_file_like_the_toolchain():
    from export.package_verify import image_input_template
    from toolchain.data.folder import read_image

    tpl = image_input_template()
    compared = 0
    for f in _shipped():
        try:
            ours = read_image(Path(f))
        except DataError:
            continue  # refused by the toolchain (no pixels, multi-frame, undecodable, not DICOM)
        for spec, load_size in (({}, None), ({"load_size": 32}, 32)):
            theirs = tpl.read_image(Path(f), spec)
            expected = ours if load_size is None else read_image(Path(f), load_size)
            np.testing.assert_array_equal(theirs, expected, err_msg=Path(f).name)
        compared += 1
    assert compared >= 20  # grey with and without windows, RLE, big endian, JPEG, RGB, YBR, palette


PROFILE = {"image_size": [64, 64], "channels": 1, "load_size": None, "image_mean_p01": 0.2,
           "image_mean_p50": 0.3, "image_mean_p99": 0.5, "n": 10}


def _package(tmp_path: Path) -> tuple[Path, Path]:
    """A random test_resnet checkpoint (1 channel, 16 px) and a bedside package of its ONNX export."""
    import timm

    from export.onnx import export_onnx
    from export.package import PackageSpec, build_package, package_preprocess
    from toolchain.models import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=2, in_chans=1).eval()
    pre = {"img_size": 16, "in_chans": 1, "mean": [0.4], "std": [0.3]}
    meta = {"arch": "test_resnet", "build_args": {}, "num_classes": 2, "in_chans": 1, "img_size": 16,
            "class_names": ["normal", "abnormal"], "preprocess": pre}
    weights = save_checkpoint(tmp_path / "ckpt" / "model.safetensors", model, meta)
    model, _ = load_checkpoint(weights)
    export_onnx(model, tmp_path / "model.onnx", (1, 16, 16))
    spec = PackageSpec(name="dicom-pkg", runtime="onnxruntime", model_files={"onnx": tmp_path / "model.onnx"},
                       class_names=meta["class_names"], preprocess=package_preprocess(pre),
                       manifest={"input_profile": PROFILE})
    root, _ = build_package(spec, tmp_path / "dist")
    return weights, root


def test_predict_checkpoint_and_package_agree_on_dicom(tmp_path, capsys):
    from pydicom.data import get_testdata_file

    weights, root = _package(tmp_path)
    mono1 = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    mono1.PhotometricInterpretation = "MONOCHROME1"
    mono1.save_as(tmp_path / "mono1.dcm")
    images = [get_testdata_file(n) for n in ("MR_small.dcm", "CT_small.dcm", "MR_small_RLE.dcm",
                                             "SC_rgb_small_odd.dcm")] + [tmp_path / "mono1.dcm"]
    results = {}
    for flag, source in (("-c", weights), ("--package", root)):
        code, out, err = run_cli(["predict", *images, flag, source, "--device", "cpu"], capsys)
        assert code == 0, err
        results[flag] = json.loads(out)
    a, b = (np.array([list(r["probabilities"].values()) for r in results[f]["predictions"]])
            for f in ("-c", "--package"))
    assert np.abs(a - b).max() <= 1e-4
    assert np.ptp(a[:, 0]) > 1e-3  # different images, different answers: agreement is not trivial
    colour = [r["warnings"] for r in results["--package"]["predictions"] if r["file"].endswith("SC_rgb_small_odd.dcm")]
    assert any("colour image" in w for w in colour[0])  # the manifest's input profile is used
    assert results["--package"]["name"] == "dicom-pkg" and results["--package"]["class_names"] == ["normal",
                                                                                                    "abnormal"]


def test_package_predict_refuses_a_modified_package(tmp_path, capsys):
    from pydicom.data import get_testdata_file

    _, root = _package(tmp_path)
    (root / "MODEL_CARD.md").write_text("edited")
    code, _, err = run_cli(["predict", get_testdata_file("MR_small.dcm"), "--package", root], capsys)
    assert code == 2 and "MODEL_CARD.md" in one_error_line(err)
    code, _, err = run_cli(["predict", get_testdata_file("MR_small.dcm"), "--package", root, "-c", root], capsys)
    assert code == 2 and "exactly one of --checkpoint and --package" in one_error_line(err)
