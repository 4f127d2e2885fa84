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
Image decoding, the manifest's preprocessing and the input warnings (an image far from the training
images' size, channels or brightness: stderr, and `warnings` in --json) live in `_preprocess.py` beside
this script, compiled only from the bytes whose checksum matched (load_template), never imported.
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
IMAGE_INPUT = "_preprocess.py"  # decoding, preprocessing, input warnings: shipped beside this script


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


def load_template(name: str, manifest: dict, root: Path = HERE):
    """The script ``name`` shipped beside this one, as a module, compiled from the very bytes whose sha256
    ``manifest`` lists: read once, so a file swapped after load_manifest's check is never run. It is
    never imported (this folder is off sys.path), so nothing planted beside it can stand in for it."""
    import types

    digest = manifest["files"].get(name)
    if not digest:
        raise PackageError(f"{name} is not listed in manifest.json")
    try:
        code = (root / name).read_bytes()
    except OSError as exc:
        raise PackageError(f"missing file {name}: {exc}") from exc
    if hashlib.sha256(code).hexdigest() != digest:
        raise PackageError(f"checksum mismatch for {name}: the package was modified")
    module = types.ModuleType(name.rsplit(".", 1)[0].lstrip("_"))
    module.__file__ = str(root / name)
    exec(compile(code, module.__file__, "exec"), module.__dict__)  # noqa: S102
    return module


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


def classify(manifest: dict, runner: Runner, path: Path, image_input):
    """``(probabilities (K,), input warnings)`` of one image file through the package's full preprocessing
    chain; ``image_input`` is the checked ``_preprocess.py`` module (load_template). The warnings compare the
    file with the training images' ``input_profile`` in the manifest and never change the probabilities."""
    if not path.is_file():
        raise PackageError(f"image not found: {path}")
    spec = manifest["preprocess"]
    try:
        pixels, raw_size = image_input.decode(path, spec)
        x = image_input.preprocess(pixels, spec)
    except image_input.ImageError as exc:
        raise PackageError(str(exc)) from None
    except Exception as exc:
        raise PackageError(f"cannot read image {path}: {exc}") from exc
    warnings = image_input.input_warnings(manifest.get("input_profile"), pixels, raw_size)
    return runner.probabilities(x)[0], warnings


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
        image_input = load_template(IMAGE_INPUT, manifest)
        runner = Runner(manifest, args.runtime)
        classes = manifest["class_names"]
        results = []
        for path in args.images:
            probs, warnings = classify(manifest, runner, path, image_input)
            named = dict(zip(classes, (float(p) for p in probs)))  # noqa: B905 (no strict= on py3.8 Jetsons)
            results.append({"image": str(path), "prediction": classes[int(probs.argmax())],
                            "probabilities": named, "warnings": warnings})
            for warning in warnings:  # as they come: a long batch shows them early
                print(f"predict: warning: {path}: {warning}", file=sys.stderr)
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
            flag = f"  [{len(r['warnings'])} input warning(s)]" if r["warnings"] else ""
            print(f"{r['image']}: {r['prediction']}  ({probs}){flag}")
    print("Research use only; not a certified medical device.", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
