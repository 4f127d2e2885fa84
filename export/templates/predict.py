#!/usr/bin/env python3
"""Bedside inference for a medprune package. Needs only numpy, pillow and the runtime
(onnxruntime or openvino); pydicom is used for DICOM files when installed.

    python predict.py IMAGE [IMAGE ...] [--runtime onnxruntime|openvino] [--json]
    python predict.py --check        # only verify the package's checksums

Every file listed in manifest.json is checked against its sha256 before the model is loaded;
any mismatch refuses to run. Research use only; not a certified medical device.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
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
    if not isinstance(manifest.get("files"), dict):
        raise PackageError("manifest.json has no file list")
    for rel, digest in manifest["files"].items():
        path = root / rel
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise PackageError(f"unsafe path in manifest: {rel}")
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


GREY_TOLERANCE = 2  # RGB files whose channels differ by at most this are grey (as the toolchain loads them)


def read_image(path: Path) -> np.ndarray:
    """Pixels as uint8 (H, W) or (H, W, 3), decoded as the toolchain decodes image folders;
    DICOM via pydicom (rescaled to 0..255) when installed."""
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
        if arr.ndim == 3 and arr.shape[-1] not in (1, 3):
            arr = arr[arr.shape[0] // 2]  # a multi-frame series: its middle frame
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo if hi > lo else 1.0) * 255.0
        return np.round(arr).astype(np.uint8)
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        if img.mode in ("I;16", "I;16B", "I", "F"):
            arr = np.asarray(img, dtype=np.float64)
            scale = 255.0 / 65535.0 if arr.max() > 255 else 1.0
            return np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8)
        if img.mode in ("1", "L", "LA"):
            return np.asarray(img.convert("L"))
        rgb = np.asarray(img.convert("RGB"))
    spread = rgb.max(axis=-1).astype(np.int16) - rgb.min(axis=-1)
    if spread.max(initial=0) <= GREY_TOLERANCE:
        return rgb[..., 0].copy() if not spread.any() else np.rint(rgb.mean(axis=-1)).astype(np.uint8)
    return rgb


def resize_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix of antialiased bilinear resampling along one axis.

    The same triangle filter, widened by the scale when shrinking, with half-pixel centres and
    edge renormalisation as torch's ``interpolate(mode="bilinear", antialias=True)`` used in
    training, so this resize agrees with the toolchain's to float rounding (~1e-7).
    """
    scale = n_in / n_out
    support = scale if scale > 1.0 else 1.0
    inv = 1.0 / scale if scale > 1.0 else 1.0
    w = np.zeros((n_out, n_in), dtype=np.float64)
    for i in range(n_out):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), n_in)
        j = np.arange(lo, hi)
        k = np.clip(1.0 - np.abs((j - center + 0.5) * inv), 0.0, None)
        w[i, lo:hi] = k / k.sum()
    return w.astype(np.float32)


def preprocess(pixels: np.ndarray, spec: dict) -> np.ndarray:
    """uint8 image → float32 (1, C, S, S), exactly as the model was trained (see manifest preprocess):
    [0, 1] scaling, channel matching, antialiased bilinear resize, per-channel normalisation."""
    size, chans = int(spec["img_size"]), int(spec["in_chans"])
    arr = np.asarray(pixels)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3):
        raise PackageError(f"expected a grey or RGB image, got pixel array of shape {arr.shape}")
    x = arr.astype(np.float32).transpose(2, 0, 1) / np.float32(255.0)  # (C, H, W)
    if x.shape[0] == 3 and chans == 1:
        x = x.mean(axis=0, keepdims=True)
    if x.shape[1:] != (size, size):
        wh, ww = resize_weights(x.shape[1], size), resize_weights(x.shape[2], size)
        x = np.stack([wh @ ch @ ww.T for ch in x])
    if x.shape[0] == 1 and chans == 3:
        x = np.repeat(x, 3, axis=0)
    mean = np.asarray(spec["mean"], dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(spec["std"], dtype=np.float32).reshape(-1, 1, 1)
    return ((x - mean) / std)[None].astype(np.float32)


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
    parser.add_argument("images", nargs="*", type=Path)
    parser.add_argument("--check", action="store_true", help="only verify every checksum, then exit")
    parser.add_argument("--runtime", choices=["onnxruntime", "openvino"], default=None)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if not args.images and not args.check:
        parser.error("give at least one image (or --check)")
    try:
        manifest = load_manifest()
        if args.check:
            print(f"OK {manifest['name']}: {len(manifest['files'])} files match manifest.json")
            return 0
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
            named = dict(zip(classes, (float(p) for p in probs)))  # noqa: B905 (no strict= on py3.8 Jetsons)
            results.append({"image": str(path), "prediction": classes[int(probs.argmax())],
                            "probabilities": named})
    except PackageError as exc:
        print(f"predict: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a runtime failure: still one line (PREDICT_DEBUG=1 for the traceback)
        if os.environ.get("PREDICT_DEBUG"):
            raise
        print(f"predict: error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
              file=sys.stderr)
        return 1
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
