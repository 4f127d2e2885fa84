"""A tiny trained-shape checkpoint with a load size, its ONNX and OpenVINO FP32 exports, and raw
image files of other sizes: what the package security and parity tests build packages from."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

LOAD_SIZE, IMG_SIZE = 24, 16
PRE = {"img_size": IMG_SIZE, "in_chans": 1, "mean": [0.4], "std": [0.3]}


def checkpoint_and_exports(root: Path) -> tuple[Path, dict[str, Path]]:
    """(checkpoint, {"onnx": .onnx, "openvino": .xml, "openvino_bin": .bin}) of a tiny CNN trained
    (as far as the checkpoint says) on images loaded at LOAD_SIZE px."""
    from export.exporter import export_model
    from toolchain.models import build_model, load_checkpoint, save_checkpoint

    model = build_model("resnet50", 2, in_chans=1, img_size=IMG_SIZE, layers=[1, 1, 1, 1], stem_width=8,
                        channels=(8, 16, 16, 32))
    meta = {"class_names": ["normal", "pneumonia"], "dataset": {"name": "rawfolder"}, "preprocess": PRE,
            "train_config": {"load_size": LOAD_SIZE}}
    ckpt = save_checkpoint(root / "ckpt" / "tiny.safetensors", model, meta)
    model, meta = load_checkpoint(ckpt)
    onnx = export_model(model, meta, root / "exp", "onnx", "fp32").path
    xml = export_model(model, meta, root / "exp", "openvino", "fp32", base_onnx=onnx).path
    return ckpt, {"onnx": onnx, "openvino": xml, "openvino_bin": xml.with_suffix(".bin")}


def raw_images(folder: Path) -> list[Path]:
    """Raw files as an image folder holds them: sizes other than LOAD_SIZE, grey PNG, RGB PNG, grey JPEG."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    ramp = np.add.outer(np.arange(61), np.arange(47)).astype(np.float64)
    grey = np.clip(ramp * 2 + rng.normal(0, 25, ramp.shape), 0, 255).astype(np.uint8)
    out = [folder / "grey.png", folder / "colour.png", folder / "xray.jpeg"]
    Image.fromarray(grey).save(out[0])
    Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)).save(out[1])
    Image.fromarray(np.rot90(grey).copy()).save(out[2], quality=90)
    return out


def run_predict(pkg: Path, *args: str, isolated: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, *(["-I"] if isolated else []), str(pkg / "predict.py"), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd or pkg.parent, timeout=300)


def predict_probs(pkg: Path, images: list[Path], *extra: str) -> np.ndarray:
    res = run_predict(pkg, *images, "--json", *extra)
    assert res.returncode == 0, res.stderr
    return np.array([list(r["probabilities"].values()) for r in json.loads(res.stdout)])


def rehash(pkg: Path) -> dict:
    """Recompute every checksum in manifest.json for the files now on disk (a forger's move)."""
    from export.package import canonical_sha256
    from toolchain.models.checkpoint import sha256_file

    manifest = json.loads((pkg / "manifest.json").read_text())
    manifest["files"] = {p.relative_to(pkg).as_posix(): sha256_file(p) for p in sorted(pkg.rglob("*"))
                         if p.is_file() and p.name not in ("manifest.json", "manifest.sig")}
    manifest["manifest_sha256"] = canonical_sha256(manifest)
    (pkg / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def toolchain_probabilities(model_file: Path, images: list[Path]) -> np.ndarray:
    """What the toolchain computes for raw files: its folder decoder at LOAD_SIZE, its torch
    Preprocess, then the verified export (the reference a package's samples carry)."""
    from export.package import export_probabilities
    from toolchain.data import Preprocess
    from toolchain.data.folder import _decode

    pre = Preprocess.from_dict(PRE)
    decoded = [_decode(p, p.read_bytes(), LOAD_SIZE) for p in images]
    x = np.concatenate([pre(np.array(a[..., None] if a.ndim == 2 else a)).numpy() for a in decoded])
    return export_probabilities(model_file, "fp32", x)


def build(root: Path, files: dict[str, Path], images: list[Path], runtime: str, *, name: str,
          sign_key: Path | None = None, manifest: dict | None = None) -> Path:
    """A package with raw samples whose probabilities came from the toolchain; returns its folder."""
    from export.package import PackageSpec, Sample, build_package, package_preprocess

    model_files = {k: v for k, v in files.items() if runtime == "openvino" or k == "onnx"}
    probs = toolchain_probabilities(model_files["openvino" if runtime == "openvino" else "onnx"], images)
    samples = [Sample(p.stem, None, "normal", list(q), source=p) for p, q in zip(images, probs, strict=True)]
    spec = PackageSpec(name=name, runtime=runtime, model_files=model_files, class_names=["normal", "pneumonia"],
                       preprocess=package_preprocess(PRE, LOAD_SIZE), samples=samples, model_card="# tiny\n",
                       manifest=dict(manifest or {}))
    return build_package(spec, root / "dist", sign_key=sign_key)[0]
