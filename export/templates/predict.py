#!/usr/bin/env python3
"""Bedside inference for a medprune package. Needs numpy, pillow and the runtime (onnxruntime or
openvino); `cryptography` for --trusted-key; pydicom for DICOM files when installed.

    python3 -I predict.py IMAGE [IMAGE ...] [--trusted-key KEY.pub] [--runtime onnxruntime|openvino] [--json]
    python3 -I predict.py --check [--trusted-key KEY.pub]      # only verify the package

Before numpy, pillow or the runtime is imported, every file listed in manifest.json is checked
against its sha256 with the standard library alone, any unlisted file (a planted numpy.py or
__pycache__ included) is refused, and with --trusted-key the Ed25519 signature is checked against
a public key installed on this device (never one taken from the package). Run it with `-I`
(isolated mode); without it the script still drops its own folder from the module search path first.
Research use only; not a certified medical device.
"""

import sys

if __name__ == "__main__":
    # First of all, before any other import: a module planted beside this script (numpy.py, json.py)
    # must not shadow the real one. `os` is frozen (3.11+) or already imported by site at start-up.
    sys.dont_write_bytecode = True
    import os

    _HERE = os.path.dirname(os.path.realpath(__file__))
    sys.path[:] = [p for p in sys.path if p and os.path.realpath(p) != _HERE]

import argparse  # noqa: E402  (standard library only until the package has been verified)
import base64  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).resolve().parent
SIGNATURE_FILE = "manifest.sig"
SIGNATURE_CONTEXT = "medprune-package-ed25519-v1:"  # signed message: this prefix + manifest_sha256
GREY_TOLERANCE = 2  # RGB files whose channels differ by at most this are grey (as the toolchain loads them)
LOAD_RESAMPLE = ("bilinear",)  # PIL filters the load-size step may name (toolchain.data.resize)


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
    """manifest.json after checking it, every file it lists, and that nothing else is in the folder."""
    try:
        manifest = json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise PackageError(f"manifest.json unreadable: {exc}") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise PackageError("manifest.json has no file list")
    if manifest.get("manifest_sha256") != canonical_sha256(manifest):
        raise PackageError("manifest.json was modified (its self-checksum does not match)")
    folders = {"."}
    for rel, digest in manifest["files"].items():
        path = root / rel
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise PackageError(f"unsafe path in manifest: {rel}")
        if path.is_symlink() or not path.is_file():
            raise PackageError(f"missing file {rel}")
        if sha256_file(path) != digest:
            raise PackageError(f"checksum mismatch for {rel}: the package was modified")
        folders.update(str(p) for p in Path(rel).parents)
    listed = set(manifest["files"]) | {"manifest.json", SIGNATURE_FILE}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink() or (path.is_dir() and rel not in folders) or (path.is_file() and rel not in listed):
            raise PackageError(f"unlisted file in package: {rel} (nothing outside manifest.json may be present)")
    return manifest


def signature_status(manifest: dict, trusted_key=None, root: Path = HERE) -> str:
    """'UNSIGNED', 'signed, not checked ...' or 'signed by trusted key …'; with ``trusted_key`` (a PEM
    Ed25519 public key file) anything but a valid signature by that key raises PackageError."""
    sig_path = root / SIGNATURE_FILE
    if not sig_path.is_file():
        if trusted_key is not None:
            raise PackageError("package is UNSIGNED but --trusted-key requires a signature")
        return "UNSIGNED (integrity checked; authenticity not: no manifest.sig)"
    try:
        sig = json.loads(sig_path.read_text())
        signature = base64.b64decode(sig["signature"], validate=True)
        claimed = str(sig.get("key_id", "?"))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PackageError(f"{SIGNATURE_FILE} unreadable: {exc}") from exc
    if sig.get("algorithm") != "ed25519":
        raise PackageError(f"{SIGNATURE_FILE}: unsupported algorithm {sig.get('algorithm')!r}")
    if trusted_key is None:
        return f"signed (claims key {claimed}), signature NOT checked: pass --trusted-key"
    public, key_id = load_public_key(Path(trusted_key))
    from cryptography.exceptions import InvalidSignature

    try:
        public.verify(signature, (SIGNATURE_CONTEXT + manifest["manifest_sha256"]).encode())
    except InvalidSignature:
        raise PackageError(f"signature is not valid for trusted key {key_id}: the package was modified "
                           "or signed by another key") from None
    return f"signed by trusted key {key_id}"


def load_public_key(path: Path):
    """(Ed25519 public key, key id) from a PEM file; cryptography is imported only here, after checks."""
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    except ImportError as exc:
        raise PackageError("checking signatures needs cryptography: pip install cryptography") from exc
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise PackageError(f"trusted key {path} unreadable: {str(exc).splitlines()[0]}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise PackageError(f"trusted key {path} is not an Ed25519 public key")
    return key, key_id(key)


def key_id(public) -> str:
    """Short fingerprint of an Ed25519 public key: sha256 of its 32 raw bytes, 16 hex digits."""
    from cryptography.hazmat.primitives import serialization

    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def read_image(path: Path, spec: dict):
    """uint8 (H, W) or (H, W, 3) pixels decoded as the toolchain decodes image folders, then the
    load-size step of ``spec`` (PIL resample on uint8, JPEG draft) when the model was trained with one;
    DICOM via pydicom (its display pipeline, see _dicom_pixels) when installed."""
    import numpy as np
    from PIL import Image

    load_size = int(spec.get("load_size") or 0)
    if path.suffix.lower() in (".dcm", ".dicom"):
        img = Image.fromarray(_dicom_pixels(path))
    else:
        with Image.open(path) as im:
            if load_size and im.format == "JPEG":
                im.draft(im.mode, (load_size, load_size))  # as toolchain.data.folder decodes big JPEGs
            im.load()
            if im.mode in ("I;16", "I;16B", "I", "F"):
                arr = np.asarray(im, dtype=np.float64)
                scale = 255.0 / 65535.0 if arr.max() > 255 else 1.0
                img = Image.fromarray(np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8))
            else:
                img = im.convert("L" if im.mode in ("1", "L", "LA") else "RGB")
    if img.mode == "RGB":
        rgb = np.asarray(img)
        spread = rgb.max(axis=-1).astype(np.int16) - rgb.min(axis=-1)
        if spread.max(initial=0) <= GREY_TOLERANCE:
            img = Image.fromarray(rgb[..., 0] if not spread.any() else np.rint(rgb.mean(axis=-1)).astype(np.uint8))
    if load_size and img.size != (load_size, load_size):
        resample = spec.get("load_resample", "bilinear")
        if resample not in LOAD_RESAMPLE:
            raise PackageError(f"unknown load resample filter {resample!r} in manifest")
        img = img.resize((load_size, load_size), getattr(Image, "Resampling", Image).BILINEAR)
    return np.asarray(img)


def _dicom_pixels(path: Path):
    """uint8 pixels of a DICOM file through the display pipeline, as medprune's toolchain.data.dicom
    (tests keep the two equal): modality rescale, VOI LUT or window (LINEAR/LINEAR_EXACT/SIGMOID),
    else the image's min-max, MONOCHROME1 inverted; colour converted to 8-bit RGB."""
    import numpy as np

    try:
        import pydicom
    except ImportError as exc:
        raise PackageError("reading DICOM needs pydicom: pip install pydicom") from exc
    try:  # pydicom >= 3
        from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi
        from pydicom.pixels import pixel_array as _decode
    except ImportError:  # pydicom 2.x
        from pydicom.pixel_data_handlers.util import apply_color_lut, apply_modality_lut, convert_color_space
        from pydicom.pixel_data_handlers.util import apply_voi_lut as apply_voi

        def _decode(ds, as_rgb=True):
            arr = ds.pixel_array
            pi = str(ds.get("PhotometricInterpretation", ""))
            return convert_color_space(arr, pi, "RGB") if pi.startswith("YBR") else arr
    ds = pydicom.dcmread(str(path))
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise PackageError(f"{path}: a multi-frame DICOM; export the frames as separate files")
    try:
        stored = _decode(ds, as_rgb=True)
    except Exception as exc:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        raise PackageError(f"{path}: cannot decode its pixel data ({getattr(syntax, 'name', syntax)}): "
                           f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if photometric in ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "PALETTE COLOR"):
        if photometric == "PALETTE COLOR":
            rgb = np.asarray(apply_color_lut(stored, ds), dtype=np.float64)
            bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        else:
            rgb, bits = np.asarray(stored, dtype=np.float64), int(ds.get("BitsStored", 8) or 8)
        return np.clip(np.rint(rgb * (255.0 / ((1 << bits) - 1))), 0, 255).astype(np.uint8)
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise PackageError(f"{path}: DICOM photometric interpretation {photometric or '(none)'} is not supported")
    values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    centre, width = _dicom_first(ds.get("WindowCenter")), _dicom_first(ds.get("WindowWidth"))
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence):
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        unit = np.clip(np.asarray(apply_voi(values, ds, index=0), dtype=np.float64) / ((1 << bits) - 1), 0, 1)
    elif centre is not None and width is not None and width > 0:
        function = str(ds.get("VOILUTFunction", "LINEAR")).strip().upper() or "LINEAR"
        if function == "LINEAR_EXACT":
            unit = np.clip((values - centre) / width + 0.5, 0.0, 1.0)
        elif function == "SIGMOID":
            unit = 1.0 / (1.0 + np.exp(-4.0 * (values - centre) / width))
        elif function == "LINEAR" and width >= 1:
            unit = np.clip((values - (centre - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)
        else:
            raise PackageError(f"{path}: unsupported DICOM window (function {function}, width {width})")
    else:
        lo, hi = float(values.min()), float(values.max())
        unit = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    if photometric == "MONOCHROME1":
        unit = 1.0 - unit
    return np.rint(unit * 255.0).astype(np.uint8)


def _dicom_first(value):
    if value is None or value == "":
        return None
    try:
        return float(value[0]) if hasattr(value, "__len__") and not isinstance(value, str) else float(value)
    except (TypeError, ValueError, IndexError):
        return None


def resize_weights(n_in: int, n_out: int):
    """(n_out, n_in) matrix of antialiased bilinear resampling along one axis.

    The same triangle filter, widened by the scale when shrinking, with half-pixel centres and
    edge renormalisation as torch's ``interpolate(mode="bilinear", antialias=True)`` used in
    training, so this resize agrees with the toolchain's to float rounding (~1e-7).
    """
    import numpy as np

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


def preprocess(pixels, spec: dict):
    """uint8 image → float32 (1, C, S, S), exactly as the model was trained (see manifest preprocess):
    [0, 1] scaling, RGB → grey by channel mean, antialiased bilinear resize, grey → RGB, normalisation."""
    import numpy as np

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
    """The package's model on onnxruntime or OpenVINO; OpenVINO compiles with the manifest's
    recorded settings (INFERENCE_PRECISION_HINT f32 for an FP32 IR, so a bf16-capable CPU stays FP32)."""

    def __init__(self, manifest: dict, runtime=None, root: Path = HERE):
        files = manifest["model"]["files"]
        runtime = runtime or manifest["model"]["runtime"]
        if runtime == "tensorrt":  # the engine build_engine.sh recorded beside the package, else ONNX Runtime
            trt = {"__name__": "trt_runner", "__file__": str(HERE / "trt_runner.py")}  # this copy: checksummed
            exec(compile(Path(trt["__file__"]).read_text(), trt["__file__"], "exec"), trt)  # noqa: S102
            runtime, self._run = trt["select"](manifest, root)
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
            config = {str(k): str(v) for k, v in (manifest["model"].get("openvino_config") or {}).items()}
            compiled = ov.Core().compile_model(str(root / files["openvino"]), "CPU", config)
            hint = compiled.get_property("INFERENCE_PRECISION_HINT")  # an ov.Type: f32, bf16 or f16
            self.precision_hint = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
            self._run = lambda x: compiled(x)[compiled.output(0)]
        elif runtime != "tensorrt":
            raise PackageError(f"unknown runtime {runtime!r}: use onnxruntime or openvino")

    def probabilities(self, batch):
        import numpy as np

        logits = np.asarray(self._run(batch), dtype=np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True)


def classify(manifest: dict, runner: Runner, path: Path):
    """Probabilities (K,) of one image file through the package's full preprocessing chain."""
    if not path.is_file():
        raise PackageError(f"image not found: {path}")
    try:
        pixels = read_image(path, manifest["preprocess"])
    except PackageError:
        raise
    except Exception as exc:
        raise PackageError(f"cannot read image {path}: {exc}") from exc
    return runner.probabilities(preprocess(pixels, manifest["preprocess"]))[0]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Classify images with this medprune package.")
    parser.add_argument("images", nargs="*", type=Path)
    parser.add_argument("--check", action="store_true", help="only verify the package, then exit")
    parser.add_argument("--trusted-key", type=Path, default=None,
                        help="Ed25519 public key (PEM) installed on this device: refuse unless signed by it")
    parser.add_argument("--runtime", choices=["onnxruntime", "openvino"], default=None)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if not args.images and not args.check:
        parser.error("give at least one image (or --check)")
    try:
        manifest = load_manifest()
        status = signature_status(manifest, args.trusted_key)
        if args.check:
            print(f"OK {manifest['name']}: {len(manifest['files'])} files match manifest.json; {status}")
            return 0
        print(f"package {manifest['name']}: {status}", file=sys.stderr)
        runner = Runner(manifest, args.runtime)
        classes = manifest["class_names"]
        results = []
        for path in args.images:
            probs = classify(manifest, runner, path)
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
