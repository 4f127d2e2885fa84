"""DICOM decoding on the real files pydicom ships (what is present offline), and training on a DICOM folder.

pydicom's locally shipped test files (78 .dcm, scanned) hold no MONOCHROME1 image and no VOI LUT
Sequence: those two cases use a real file (MR_small.dcm) with that one attribute changed.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from toolchain.data.dicom import read_dicom, window
from toolchain.errors import DataError

pydicom = pytest.importorskip("pydicom")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _file(name: str):
    from pydicom.data import get_testdata_file

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns that it cannot download its optional extra files
        path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom does not ship {name} in this installation")
    return path


def _linear_window(values, centre, width):
    # DICOM PS3.3 C.11.2.1.2.1, written out independently of the implementation
    lo, hi = centre - 0.5 - (width - 1) / 2, centre - 0.5 + (width - 1) / 2
    out = np.where(values <= lo, 0.0, np.where(values > hi, 1.0, ((values - (centre - 0.5)) / (width - 1) + 0.5)))
    return np.rint(out * 255).astype(np.uint8)


def test_mr_window_from_the_file_is_applied():
    path = _file("MR_small.dcm")
    ds = pydicom.dcmread(path)
    assert (float(ds.WindowCenter), float(ds.WindowWidth)) == (600.0, 1600.0)
    image = read_dicom(path)
    assert image.voi_source == "window" and image.pixels.dtype == np.uint8 and image.pixels.shape == (64, 64)
    expected = _linear_window(ds.pixel_array.astype(np.float64), 600.0, 1600.0)
    np.testing.assert_array_equal(image.pixels, expected)
    above = ds.pixel_array > 1399.5  # values above the window saturate (min-max scaling would not)
    assert above.sum() > 0 and (image.pixels[above] == 255).all()


def test_ct_rescale_then_window_in_hounsfield_units(tmp_path):
    ds = pydicom.dcmread(_file("CT_small.dcm"))
    assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (1.0, -1024.0)
    assert read_dicom(_file("CT_small.dcm")).voi_source == "min_max"  # no window in this file
    ds.WindowCenter, ds.WindowWidth = 40, 400  # a soft-tissue window, in HU
    ds.save_as(tmp_path / "ct.dcm")
    got = read_dicom(tmp_path / "ct.dcm").pixels
    hu = ds.pixel_array.astype(np.float64) - 1024.0
    np.testing.assert_array_equal(got, _linear_window(hu, 40.0, 400.0))
    assert not np.array_equal(got, _linear_window(ds.pixel_array.astype(np.float64), 40.0, 400.0))


def test_monochrome1_is_inverted(tmp_path):
    ds = pydicom.dcmread(_file("MR_small.dcm"))
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(tmp_path / "mono1.dcm")
    normal = read_dicom(_file("MR_small.dcm")).pixels
    inverted = read_dicom(tmp_path / "mono1.dcm")
    assert inverted.photometric == "MONOCHROME1"
    np.testing.assert_array_equal(inverted.pixels.astype(int), 255 - normal.astype(int))


def test_voi_lut_sequence_wins_over_the_window(tmp_path):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = pydicom.dcmread(_file("MR_small.dcm"))
    lut = np.linspace(4095, 0, 4096).astype(np.uint16)  # a reversed 12-bit ramp, unlike the window
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 12]
    item.LUTData = lut.tobytes()  # OW, little endian like the file
    ds.VOILUTSequence = Sequence([item])
    ds.save_as(tmp_path / "lut.dcm")
    got = read_dicom(tmp_path / "lut.dcm")
    stored = np.clip(ds.pixel_array.astype(np.int64), 0, 4095)
    assert got.voi_source == "voi_lut"
    np.testing.assert_array_equal(got.pixels, np.rint(lut[stored] / 4095 * 255).astype(np.uint8))


def test_window_functions():
    v = np.array([-1000.0, 0.0, 40.0, 1000.0])
    assert window(v, 40, 400, "LINEAR_EXACT").tolist() == [0.0, 0.4, 0.5, 1.0]
    assert window(v, 40, 400, "SIGMOID")[2] == pytest.approx(0.5)
    with pytest.raises(DataError, match="VOI LUT Function"):
        window(v, 40, 400, "GAMMA")


def test_multi_valued_tags_are_read_by_the_package_template(monkeypatch):
    """One reader of WindowCenter/WindowWidth: the toolchain calls the package template's."""
    from pydicom.multival import MultiValue

    from export.package_verify import image_input_template
    from toolchain.data import dicom

    first = image_input_template().dicom_first
    assert first(MultiValue(float, [40, 400])) == 40.0 and first("35") == 35.0
    assert first(None) is None and first("") is None and first("abc") is None and first([]) is None
    monkeypatch.setattr(image_input_template(), "dicom_first", lambda value: ("template", value))
    assert dicom._first("7") == ("template", "7")


def test_compressed_syntaxes_decode_or_are_refused_in_one_line():
    assert read_dicom(_file("MR_small_RLE.dcm")).pixels.shape == (64, 64)  # RLE: pydicom decodes it itself
    np.testing.assert_array_equal(read_dicom(_file("MR_small_RLE.dcm")).pixels, read_dicom(_file("MR_small.dcm")).pixels)
    path = _file("JPEGLSNearLossless_08.dcm")
    try:
        read_dicom(path)
    except DataError as exc:
        message = str(exc)
        assert "\n" not in message and "JPEG-LS" in message and "pip install" in message
    else:
        pytest.skip("a JPEG-LS decoder is installed here; nothing to refuse")


@pytest.mark.parametrize("name, match", [("rtdose.dcm", "multi-frame"), ("rtplan.dcm", "without pixel data"),
                                         ("no_meta.dcm", "not a DICOM file")])
def test_unusable_files_are_refused(name, match):
    with pytest.raises(DataError, match=match):
        read_dicom(_file(name))


def _dicom_folder(root, per_class=6):
    """``root/{mr,ct}/*.dcm``: real MR and CT files, each copy shifted so no two are identical."""
    for cls, name in (("mr", "MR_small.dcm"), ("ct", "CT_small.dcm")):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            ds = pydicom.dcmread(_file(name))
            ds.PixelData = np.ascontiguousarray(np.roll(ds.pixel_array, 3 * i, axis=1)).tobytes()
            ds.save_as(root / cls / f"{i}.dcm")
    return root


def test_training_on_a_dicom_folder_and_predicting_it(tmp_path, monkeypatch, capsys):
    from toolchain.cli import main
    from toolchain.data import load_dataset
    from toolchain.models import checkpoint_meta
    from toolchain.train import TrainConfig, train

    monkeypatch.setenv("MEDPRUNE_CACHE", str(tmp_path / "cache"))
    root = _dicom_folder(tmp_path / "dicoms")
    ds = load_dataset(root, load_size=32)
    assert ds.class_names == ["ct", "mr"] and ds.channels == 1 and ds.image_size == (32, 32)
    weights = train(TrainConfig(model="test_resnet", data=str(root), img_size=32, load_size=32, epochs=1,
                                batch_size=4, augment=False, patience=0, device="cpu", quiet=True))
    meta = checkpoint_meta(weights)
    assert meta["input_profile"]["load_size"] == 32 and "test" in meta["metrics"]
    with pytest.raises(SystemExit) as exc:
        main(["predict", str(root / "mr"), str(root / "ct" / "0.dcm"), "-c", str(weights), "--device", "cpu"])
    assert exc.value.code in (0, None)
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["predictions"]) == 7
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-5 for r in doc["predictions"])


def test_dicom_pipeline_version_is_part_of_the_fingerprint(tmp_path, monkeypatch):
    from toolchain.data import dicom, load_dataset

    monkeypatch.setenv("MEDPRUNE_CACHE", str(tmp_path / "cache"))
    root = _dicom_folder(tmp_path / "dicoms", per_class=3)
    first = load_dataset(root, load_size=16)
    assert first.params["dicom_pipeline"] == dicom.PIPELINE_VERSION
    monkeypatch.setattr(dicom, "PIPELINE_VERSION", dicom.PIPELINE_VERSION + 1)
    assert load_dataset(root, load_size=16).fingerprint != first.fingerprint  # no stale cached pixels
