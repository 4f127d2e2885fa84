"""Package parity on raw files: a --load-size model's full preprocessing chain replayed by predict.py,
and an OpenVINO FP32 package computing in FP32 (same probabilities as ONNX Runtime FP32)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from export.package import reference_predict, verify_package
from export.package_verify import image_input_template, predict_template
from tests.export._pkg import LOAD_SIZE, PRE, build, checkpoint_and_exports, predict_probs, raw_images


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("pkgparity")
    ckpt, files = checkpoint_and_exports(root)
    images = raw_images(root / "raw")
    ort_pkg = build(root, files, images, "onnxruntime", name="ort")
    ov_pkg = build(root, files, images, "openvino", name="ov")
    return {"ckpt": ckpt, "images": images, "ort": ort_pkg, "ov": ov_pkg}


def test_load_size_step_is_replayed_exactly(made):
    """predict.py decodes and load-resizes raw files to the same uint8 pixels as the image-folder loader."""
    from toolchain.data.folder import _decode

    manifest = json.loads((made["ort"] / "manifest.json").read_text())
    assert manifest["preprocess"]["load_size"] == LOAD_SIZE and manifest["preprocess"]["load_resample"] == "bilinear"
    assert any("load resize" in step for step in manifest["preprocess"]["chain"])
    tpl = image_input_template()
    for path in made["images"]:
        want = _decode(path, path.read_bytes(), LOAD_SIZE)
        got = tpl.read_image(path, manifest["preprocess"])
        assert got.shape == want.shape and np.array_equal(got, want), path.name


def test_raw_samples_are_stored_as_they_came(made):
    manifest = json.loads((made["ort"] / "manifest.json").read_text())
    stored = {s["file"] for s in manifest["samples"]}
    assert stored == {f"samples/{p.name}" for p in made["images"]}
    for p in made["images"]:
        assert (made["ort"] / "samples" / p.name).read_bytes() == p.read_bytes()


def test_raw_folder_parity_with_the_toolchain(made):
    want = reference_predict(made["ckpt"], made["images"])  # torch model, folder decoder at the load size
    got = predict_probs(made["ort"], made["images"])
    assert (got.argmax(1) == want.argmax(1)).all()
    assert np.abs(got - want).max() <= 1e-4
    # the same images through a chain without the load-size step land elsewhere: the step matters here
    runner = predict_template().Runner(json.loads((made["ort"] / "manifest.json").read_text()), root=made["ort"])
    pre = image_input_template()
    skipped = np.stack([runner.probabilities(pre.preprocess(pre.read_image(p, PRE), PRE))[0] for p in made["images"]])
    assert np.abs(skipped - want).max() > 10 * np.abs(got - want).max()


def test_openvino_fp32_package_runs_fp32(made, monkeypatch):
    import openvino

    manifest = json.loads((made["ov"] / "manifest.json").read_text())
    assert manifest["model"]["openvino_config"] == {"INFERENCE_PRECISION_HINT": "f32"}
    seen, real = [], openvino.Core

    class Recording(real):  # this CPU may lack bf16, so check the setting is passed, not only its effect
        def compile_model(self, model, device, config=None):
            seen.append(dict(config or {}))
            return super().compile_model(model, device, config or {})

    monkeypatch.setattr(openvino, "Core", Recording)
    predict_template().Runner(manifest, root=made["ov"])
    assert seen == [{"INFERENCE_PRECISION_HINT": "f32"}]
    monkeypatch.undo()
    report = verify_package(made["ov"])
    assert report["runtime"] == "openvino" and report["precision_hint"] == "f32"
    ov = predict_probs(made["ov"], made["images"], "--runtime", "openvino")
    ort = predict_probs(made["ort"], made["images"], "--runtime", "onnxruntime")
    assert np.abs(ov - ort).max() <= 1e-4


def test_raw_sources_of_an_image_folder(tmp_path):
    from PIL import Image

    from export.package import raw_sources
    from tests.conftest import write_tiny_npz
    from toolchain.data import load_dataset
    from toolchain.data.folder import _decode

    rng = np.random.default_rng(0)
    for cls in ("normal", "pneumonia"):
        (tmp_path / "xr" / cls).mkdir(parents=True)
        for i in range(10):
            h, w = rng.integers(20, 40, 2)
            Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)).save(tmp_path / "xr" / cls / f"{i}.png")
    ds = load_dataset(tmp_path / "xr", load_size=LOAD_SIZE, cache=False, progress=False)
    test = ds.split("test")
    found = raw_sources(ds, "test", list(range(len(test))))
    assert len(found) == len(test) and all(p is not None for p in found)
    for p, img, label in zip(found, test.images, test.labels, strict=True):
        assert p.parent.name == ds.class_names[label]
        assert np.array_equal(_decode(p, p.read_bytes(), LOAD_SIZE), img[..., 0])
    npz = load_dataset(write_tiny_npz(tmp_path / "tiny.npz"))
    assert raw_sources(npz, "test", [0, 1]) == [None, None]
