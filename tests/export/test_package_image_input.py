"""The package's second template, ``_preprocess.py`` (decoding, preprocessing, input warnings): shipped,
checksummed and verified like predict.py, run only from the bytes that matched; and the input warnings it
gives on the device agree with ``medprune predict -c`` and ``--package`` without changing a prediction."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from export.package import PackageError, verify_package
from export.package_verify import IMAGE_INPUT_TEMPLATE, predict_template
from tests.export._pkg import LOAD_SIZE, build, checkpoint_and_exports, raw_images, rehash, run_predict
from tests.toolchain._byom_data import run_cli

# training images as _pkg's checkpoint claims them: grey, loaded at LOAD_SIZE, mid-grey means
PROFILE = {"image_size": [LOAD_SIZE, LOAD_SIZE], "channels": 1, "load_size": LOAD_SIZE, "image_mean_p01": 0.3,
           "image_mean_p50": 0.45, "image_mean_p99": 0.6, "n": 40}


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    from toolchain.models import load_checkpoint, save_checkpoint

    root = tmp_path_factory.mktemp("imginput")
    ckpt, files = checkpoint_and_exports(root)
    model, meta = load_checkpoint(ckpt)
    profiled = save_checkpoint(root / "ckpt2" / "profiled.safetensors", model, {**meta, "input_profile": PROFILE})
    images = raw_images(root / "raw")
    Image.fromarray(np.full((8, 8), 110, np.uint8)).save(root / "raw" / "tiny.png")  # under half the side
    Image.fromarray(np.full((30, 30), 255, np.uint8)).save(root / "raw" / "white.png")  # far too bright
    images += [root / "raw" / "tiny.png", root / "raw" / "white.png"]
    plain = build(root, files, images[:3], "onnxruntime", name="plain")
    warned = build(root, files, images[:3], "onnxruntime", name="profiled", manifest={"input_profile": PROFILE})
    return {"plain": plain, "profiled": warned, "ckpt": profiled, "images": images}


def _copy(pkg: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(pkg, tmp_path / pkg.name))


def _bedside(pkg: Path, images: list[Path]) -> list[dict]:
    res = run_predict(pkg, *images, "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_image_input_is_shipped_listed_and_identical(made):
    manifest = json.loads((made["profiled"] / "manifest.json").read_text())
    assert "_preprocess.py" in manifest["files"] and "predict.py" in manifest["files"]
    assert (made["profiled"] / "_preprocess.py").read_bytes() == IMAGE_INPUT_TEMPLATE.read_bytes()


def test_edited_image_input_is_refused_unrun(made, tmp_path):
    pkg = _copy(made["plain"], tmp_path)
    marker = tmp_path / "ran"
    script = pkg / "_preprocess.py"
    script.write_text(f"open({str(marker)!r}, 'w').close()\n" + script.read_text())
    res = run_predict(pkg, made["images"][0])  # checksum no longer matches: predict.py stops before it
    assert res.returncode == 2 and "checksum mismatch for _preprocess.py" in res.stderr, res.stderr
    rehash(pkg)  # a forger's recomputed checksums: verify-package still refuses, and never runs it
    with pytest.raises(PackageError, match="_preprocess.py differs"):
        verify_package(pkg)
    assert not marker.exists()


def test_load_template_runs_only_the_checked_bytes(made, tmp_path):
    """A file swapped after load_manifest's check (or never listed) is refused, not compiled."""
    tpl = predict_template()
    pkg = _copy(made["plain"], tmp_path)
    manifest = tpl.load_manifest(pkg)
    assert tpl.load_template("_preprocess.py", manifest, pkg).input_warnings(None, None, (1, 1)) == []
    (pkg / "_preprocess.py").write_text("raise SystemExit('ran')\n")
    with pytest.raises(tpl.PackageError, match="checksum mismatch for _preprocess.py"):
        tpl.load_template("_preprocess.py", manifest, pkg)
    with pytest.raises(tpl.PackageError, match="not listed"):
        tpl.load_template("numpy.py", manifest, pkg)


def test_input_warnings_agree_and_leave_predictions_alone(made, capsys):
    images = made["images"]
    plain, profiled = _bedside(made["plain"], images), _bedside(made["profiled"], images)
    bedside = [r["warnings"] for r in profiled]
    assert all(r["warnings"] == [] for r in plain)  # no profile in the manifest, no warnings
    for a, b in zip(plain, profiled, strict=True):
        assert a["probabilities"] == b["probabilities"]  # a warning never changes the answer
    by_name = dict(zip((p.name for p in images), bedside, strict=True))
    assert by_name["grey.png"] == [] and by_name["xray.jpeg"] == []
    assert any("colour image" in w for w in by_name["colour.png"])
    assert any("under half the training side" in w for w in by_name["tiny.png"])
    assert any("mean intensity 1.00" in w for w in by_name["white.png"])
    res = run_predict(made["profiled"], images[-1])
    assert "predict: warning:" in res.stderr and "white.png" in res.stderr and "input warning" in res.stdout
    for flag, source in (("--package", made["profiled"]), ("-c", made["ckpt"])):
        code, out, err = run_cli(["predict", *images, flag, source, "--device", "cpu"], capsys)
        assert code == 0, err
        assert [r["warnings"] for r in json.loads(out)["predictions"]] == bedside, flag
        assert err.count("medprune: warning:") == sum(map(len, bedside))
    code, out, err = run_cli(["predict", *images, "-c", made["ckpt"], "--format", "csv", "--device", "cpu"], capsys)
    rows = out.splitlines()
    assert code == 0 and rows[0].endswith(",warnings")
    assert [row.endswith(",") for row in rows[1:]] == [not w for w in bedside]


@pytest.mark.parametrize("name", ["predict.py", "_preprocess.py", "trt_runner.py"])
def test_templates_parse_as_python_38(name):
    """JetPack 5 ships Python 3.8: the scripts a package runs on the device must parse there."""
    import ast

    ast.parse(IMAGE_INPUT_TEMPLATE.with_name(name).read_text(), feature_version=(3, 8))
