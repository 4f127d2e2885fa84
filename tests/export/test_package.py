"""Bedside package: checksums, tamper detection, safe extraction, reproducibility, standalone predict."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from export.package import PackageError, PackageSpec, Sample, build_package, safe_extract, verify_package
from toolchain.errors import GateError

PRE = {"img_size": 8, "in_chans": 1, "mean": [0.5], "std": [0.25]}


def _onnx(path: Path) -> Path:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 2)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 1, 8, 8),), str(path), dynamo=False, input_names=["image"],
                          output_names=["logits"], dynamic_axes={"image": {0: "batch"}})
    return path


def _probs(onnx_path: Path, pixels: np.ndarray) -> list[float]:
    import onnxruntime as ort

    x = ((pixels.astype(np.float32) / 255.0 - 0.5) / 0.25)[None, None]
    logits = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    e = np.exp(logits - logits.max())
    return list((e / e.sum())[0])


@pytest.fixture
def package(tmp_path) -> tuple[Path, Path]:
    onnx_path = _onnx(tmp_path / "model.onnx")
    rng = np.random.default_rng(0)
    samples = []
    for i in range(3):
        pixels = rng.integers(0, 255, (8, 8), dtype=np.uint8)
        samples.append(Sample(f"s{i}", pixels, "normal", _probs(onnx_path, pixels)))
    spec = PackageSpec(name="tiny-pkg", runtime="onnxruntime", model_files={"onnx": onnx_path},
                       class_names=["normal", "pneumonia"], preprocess=PRE, manifest={"seed": 0},
                       model_card="# card\nResearch use only.\n", samples=samples,
                       scripts={"model/build_engine.sh": "#!/bin/sh\necho trtexec\n"})
    return build_package(spec, tmp_path / "dist")


def test_package_layout_and_verify(package):
    root, tarball = package
    for rel in ("manifest.json", "predict.py", "MODEL_CARD.md", "model/model.onnx", "samples/s0.png"):
        assert (root / rel).is_file(), rel
    manifest = json.loads((root / "manifest.json").read_text())
    assert set(manifest["files"]) >= {"predict.py", "model/model.onnx", "MODEL_CARD.md"}
    assert verify_package(root)["ok"] and verify_package(tarball)["top1_agreement"] == 3


def test_every_flipped_byte_is_caught(package, tmp_path):
    root, _ = package
    for rel in [*json.loads((root / "manifest.json").read_text())["files"], "manifest.json"]:
        path = root / rel
        original = path.read_bytes()
        data = bytearray(original)
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
        with pytest.raises((PackageError, GateError)):
            verify_package(root)
        path.write_bytes(original)
    verify_package(root)


def test_unlisted_file_is_refused(package):
    root, _ = package
    (root / "model" / "evil.py").write_text("print('x')")
    with pytest.raises(PackageError, match="unlisted"):
        verify_package(root)


def _tar_with(tmp_path: Path, name: str, kind: str = "file") -> Path:
    path = tmp_path / f"bad-{kind}.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(name)
        if kind == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        else:
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    return path


@pytest.mark.parametrize("name,kind", [("../escape.txt", "file"), ("/abs/file.txt", "file"),
                                       ("pkg/link", "symlink"), ("pkg/../../x", "file")])
def test_unsafe_archives_are_refused(tmp_path, name, kind):
    with pytest.raises(PackageError, match="refusing"):
        safe_extract(_tar_with(tmp_path, name, kind), tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()


def test_tarball_is_reproducible(tmp_path, package):
    root, tarball = package
    first = tarball.read_bytes()
    spec_root = tmp_path / "again"
    from export.package import write_tarball

    write_tarball(root, spec_root.with_suffix(".tar.gz"))
    assert spec_root.with_suffix(".tar.gz").read_bytes() == first


def test_failed_build_leaves_nothing(tmp_path):
    spec = PackageSpec(name="broken", runtime="onnxruntime", model_files={"onnx": tmp_path / "missing.onnx"},
                       class_names=["a", "b"], preprocess=PRE)
    with pytest.raises(PackageError, match="not found"):
        build_package(spec, tmp_path / "dist")
    assert not any((tmp_path / "dist").iterdir())


def test_standalone_predict_matches(package, tmp_path):
    root, tarball = package
    out = safe_extract(tarball, tmp_path / "extracted")
    sample = out / "samples" / "s1.png"
    res = subprocess.run([sys.executable, "-I", str(out / "predict.py"), str(sample), "--json"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)[0]["probabilities"]
    expected = json.loads((out / "manifest.json").read_text())["samples"][1]["probabilities"]
    assert np.allclose(list(got.values()), expected, atol=1e-5)
    # predict.py refuses a tampered model
    model = out / "model" / "model.onnx"
    model.write_bytes(model.read_bytes()[:-1] + b"\x00")
    res = subprocess.run([sys.executable, "-I", str(out / "predict.py"), str(sample)], capture_output=True, text=True)
    assert res.returncode == 2 and "checksum mismatch" in res.stderr and "Traceback" not in res.stderr


def test_verify_package_cli_errors(tmp_path, package):
    root, tarball = package
    bad = _tar_with(tmp_path, "../x")
    for target in (bad, tmp_path / "nope.tar.gz"):
        res = subprocess.run([sys.executable, "-m", "toolchain.cli", "verify-package", str(target)],
                             capture_output=True, text=True)
        assert res.returncode != 0 and "Traceback" not in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    ok = subprocess.run([sys.executable, "-m", "toolchain.cli", "verify-package", str(tarball)],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr


def test_failed_verification_keeps_the_previous_package(package, tmp_path):
    root, tarball = package
    before = tarball.read_bytes()
    manifest = json.loads((root / "manifest.json").read_text())
    onnx_path = tmp_path / "model.onnx"
    wrong = Sample("s0", np.zeros((8, 8), np.uint8), "normal", [0.0, 1.0])  # probabilities the model won't give
    spec = PackageSpec(name="tiny-pkg", runtime="onnxruntime", model_files={"onnx": onnx_path},
                       class_names=["normal", "pneumonia"], preprocess=PRE, samples=[wrong])
    with pytest.raises(GateError, match="smoke test"):
        build_package(spec, root.parent)
    assert tarball.read_bytes() == before and json.loads((root / "manifest.json").read_text()) == manifest
    assert sorted(p.name for p in root.parent.iterdir()) == ["tiny-pkg", "tiny-pkg.tar.gz"]  # no temp left


def test_rebuild_replaces_and_reports(package, tmp_path):
    root, tarball = package
    onnx_path = tmp_path / "model.onnx"
    pixels = np.full((8, 8), 7, np.uint8)
    spec = PackageSpec(name="tiny-pkg", runtime="onnxruntime", model_files={"onnx": onnx_path},
                       class_names=["normal", "pneumonia"], preprocess=PRE,
                       samples=[Sample("only", pixels, "normal", _probs(onnx_path, pixels))])
    report: dict = {}
    build_package(spec, root.parent, report=report)
    assert report["ok"] and report["samples"] == 1
    assert sorted(p.name for p in (root / "samples").iterdir()) == ["only.png"]
    assert tarball.stat().st_mode & 0o777 == 0o644
