#!/usr/bin/env python3
"""Bedside inference for a medprune package. Needs only numpy, pillow and the runtime
(onnxruntime or openvino); pydicom is used for DICOM files when installed.

    python predict.py IMAGE [IMAGE ...] [--runtime onnxruntime|openvino] [--json]

Every file listed in manifest.json is checked against its sha256 before the model is loaded;
any mismatch refuses to run. Research use only; not a certified medical device.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


class PackageError(Exception):
    pass


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def canonical_sha256(manifest: dict) -> str:
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def load_manifest(root: Path = HERE) -> dict:
    """Read manifest.json and check it, then every file it lists, against their sha256."""
    try:
        manifest = json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise PackageError(f"manifest.json unreadable: {exc}") from exc
    if manifest.get("manifest_sha256") != canonical_sha256(manifest):
        raise PackageError("manifest.json was modified (its self-checksum does not match)")
    for rel, digest in manifest["files"].items():
        path = root / rel
        if not path.is_file():
            raise PackageError(f"missing file {rel}")
        if sha256_file(path) != digest:
            raise PackageError(f"checksum mismatch for {rel}: the package was modified")
    listed = set(manifest["files"]) | {"manifest.json"}
    extra = sorted(
        str(p.relative_to(root)) for p in root.rglob("*")
        if p.is_file() and str(p.relative_to(root)) not in listed and "__pycache__" not in p.parts
    )
    if extra:
        raise PackageError(f"unlisted file in package: {extra[0]}")
    return manifest


def read_image(path: Path) -> np.ndarray:
    """Pixels as uint8 (H, W) or (H, W, 3); DICOM via pydicom (rescaled to 0..255) when installed."""
    if path.suffix.lower() in (".dcm", ".dicom"):
        try:
            import pydicom
        except ImportError as exc:
            raise PackageError("reading DICOM needs pydicom: pip install pydicom") from exc
        ds = pydicom.dcmread(str(path))
        arr = ds.pixel_array.astype(np.float64)
        arr = arr * float(getattr(ds, "RescaleSlope", 1)) + float(getattr(ds, "RescaleIntercept", 0))
        if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
            arr = arr.max() - arr
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo if hi > lo else 1.0) * 255.0
        return np.round(arr).astype(np.uint8)
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        return np.asarray(img.convert("RGB") if img.mode not in ("L", "RGB") else img)


def preprocess(pixels: np.ndarray, spec: dict) -> np.ndarray:
    """uint8 image → float32 (1, C, S, S), exactly as the model was trained (see manifest preprocess)."""
    from PIL import Image

    size, chans = int(spec["img_size"]), int(spec["in_chans"])
    img = Image.fromarray(pixels)
    img = img.convert("L" if chans == 1 else "RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    mean = np.asarray(spec["mean"], dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(spec["std"], dtype=np.float32).reshape(-1, 1, 1)
    return ((arr - mean) / std)[None].astype(np.float32)


class Runner:
    def __init__(self, manifest: dict, runtime: str | None = None, root: Path = HERE):
        files = manifest["model"]["files"]
        runtime = runtime or manifest["model"]["runtime"]
        if runtime in ("tensorrt",):
            runtime = "onnxruntime"  # the ONNX file is shipped too; TensorRT engines are built on device
        self.runtime = runtime
        if runtime == "onnxruntime":
            try:
                import onnxruntime as ort
            except ImportError as exc:
                raise PackageError("runtime onnxruntime not installed: pip install onnxruntime") from exc
            if "onnx" not in files:
                raise PackageError("this package has no ONNX model")
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                         if p in ort.get_available_providers()]
            self.session = ort.InferenceSession(str(root / files["onnx"]), providers=providers)
            self.input = self.session.get_inputs()[0].name
            self._run = lambda x: self.session.run(None, {self.input: x})[0]
        elif runtime == "openvino":
            try:
                import openvino as ov
            except ImportError as exc:
                raise PackageError("runtime openvino not installed: pip install openvino") from exc
            if "openvino" not in files:
                raise PackageError("this package has no OpenVINO IR")
            compiled = ov.Core().compile_model(str(root / files["openvino"]), "CPU")
            self._run = lambda x: compiled(x)[compiled.output(0)]
        else:
            raise PackageError(f"unknown runtime {runtime!r}: use onnxruntime or openvino")

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        logits = np.asarray(self._run(batch), dtype=np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Classify images with this medprune package.")
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument("--runtime", choices=["onnxruntime", "openvino"], default=None)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    try:
        manifest = load_manifest()
        runner = Runner(manifest, args.runtime)
        classes = manifest["class_names"]
        results = []
        for path in args.images:
            if not path.is_file():
                raise PackageError(f"image not found: {path}")
            try:
                pixels = read_image(path)
            except PackageError:
                raise
            except Exception as exc:
                raise PackageError(f"cannot read image {path}: {exc}") from exc
            probs = runner.probabilities(preprocess(pixels, manifest["preprocess"]))[0]
            results.append({"image": str(path), "prediction": classes[int(probs.argmax())],
                            "probabilities": {c: float(p) for c, p in zip(classes, probs)}})
    except PackageError as exc:
        print(f"predict: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            probs = "  ".join(f"{c}={p:.4f}" for c, p in r["probabilities"].items())
            print(f"{r['image']}: {r['prediction']}  ({probs})")
    print("Research use only; not a certified medical device.", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
