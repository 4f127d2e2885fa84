"""verify-package: checksums, unlisted files, signature and the smoke test, without running package code.

Nothing shipped in a package is imported or executed here: the checks and the smoke test's
preprocessing come from *this* toolchain's own copy of the predict.py template (loaded from the
installed source, not the package), the model file is run by the runtime only after its sha256
matched, and the package's predict.py and _preprocess.py (and a Jetson package's trt_runner.py) must be
byte-identical to those templates, so an edited script is refused even when its checksum in manifest.json
was recomputed.
A Jetson package is checked on its shipped ONNX file with ONNX Runtime: engines are built on the device.
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
import types
from pathlib import Path

import numpy as np

from toolchain.errors import GateError

from .package_archive import PackageError, refuse_pickle, safe_extract

PREDICT_TEMPLATE = Path(__file__).parent / "templates" / "predict.py"
IMAGE_INPUT_TEMPLATE = PREDICT_TEMPLATE.with_name("_preprocess.py")  # predict.py's IMAGE_INPUT
# every package carries these unchanged from this toolchain's templates (package.py copies them) ...
PACKAGE_SCRIPTS = (PREDICT_TEMPLATE.name, IMAGE_INPUT_TEMPLATE.name)
# ... and these too, by the runtime that ships them
TEMPLATE_SCRIPTS = {"tensorrt": ("trt_runner.py",)}


def _compile_template(path: Path, name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__file__ = str(path)
    exec(compile(path.read_text(), str(path), "exec"), module.__dict__)  # noqa: S102
    return module


@functools.cache
def predict_template() -> types.ModuleType:
    """The template as a module, compiled from source (no __pycache__ written); importing it runs no
    check and imports only the standard library: numpy, PIL, the runtime and cryptography load on use."""
    return _compile_template(PREDICT_TEMPLATE, "medprune_predict_template")


@functools.cache
def image_input_template() -> types.ModuleType:
    """This toolchain's copy of the packages' ``_preprocess.py`` (decoding, preprocessing, input warnings):
    what ``predict_template().classify`` takes as ``image_input`` here, instead of the package's copy."""
    return _compile_template(IMAGE_INPUT_TEMPLATE, "medprune_image_input_template")


@contextlib.contextmanager
def _as_package_error(where: Path):
    """The templates' own errors (they cannot import medprune) as a medprune PackageError."""
    try:
        yield
    except (predict_template().PackageError, image_input_template().ImageError) as exc:
        raise PackageError(f"{where}: {exc}") from None


def _sha256(path: Path) -> str:
    return predict_template().sha256_file(path)


def verify_package(path: str | os.PathLike, runtime: str | None = None,
                   trusted_key: str | os.PathLike | None = None) -> dict:
    """Check every checksum, the file list, the signature and the carried samples.

    Raises PackageError (exit 2) for a modified, incomplete, unsigned-under-``trusted_key`` or
    foreign package and GateError (exit 3) when the samples' probabilities differ from the ones
    recorded at build time by more than the package's tolerance.
    """
    path = Path(path)
    if not path.exists():
        raise PackageError(f"package not found: {path}")
    if trusted_key is not None and not Path(trusted_key).is_file():
        raise PackageError(f"trusted key not found: {trusted_key}")
    tpl = predict_template()
    with tempfile.TemporaryDirectory(prefix="medprune-verify-") as tmp:
        root = safe_extract(path, Path(tmp)) if path.is_file() else path
        with _as_package_error(path):
            manifest = tpl.load_manifest(root)
            for rel in manifest["files"]:
                refuse_pickle(root / rel)
            shipped_runtime = manifest["model"]["runtime"]
            for script in (*PACKAGE_SCRIPTS, *TEMPLATE_SCRIPTS.get(shipped_runtime, ())):
                _check_template_copy(root, script)
            signature = tpl.signature_status(manifest, trusted_key, root)
            if runtime is None and shipped_runtime == "tensorrt":
                runtime = "onnxruntime"  # the shipped ONNX file; an engine is built (and checked) on the device
            runner = tpl.Runner(manifest, runtime, root=root)
            got = [tpl.classify(manifest, runner, root / s["file"], image_input_template())[0]
                   for s in manifest["samples"]]
        report = _smoke_test(path, manifest, got)
    return {"package": str(path), "name": manifest["name"], "files_checked": len(manifest["files"]), **report,
            "runtime": runner.runtime, "precision_hint": getattr(runner, "precision_hint", None),
            "signature": signature, "signed": not signature.startswith("UNSIGNED"),
            "trusted": trusted_key is not None, "ok": True}


def _check_template_copy(root: Path, name: str) -> None:
    if not (root / name).is_file():
        raise PackageError(f"{root}: the package has no {name}")
    if _sha256(root / name) != _sha256(PREDICT_TEMPLATE.with_name(name)):
        raise PackageError(f"{root}: {name} differs from this medprune's template (edited, or built by another "
                           "medprune version); refusing it")


def _smoke_test(path: Path, manifest: dict, got: list) -> dict:
    worst, agree = 0.0, 0
    for s, probs in zip(manifest["samples"], got, strict=True):
        expected = np.asarray(s["probabilities"], dtype=np.float64)
        if expected.shape != probs.shape:
            raise PackageError(f"{path}: sample {s['file']} records {expected.size} probabilities, the model "
                               f"gives {probs.size}")
        worst = max(worst, float(np.abs(probs - expected).max()))
        agree += int(probs.argmax() == expected.argmax())
    n = len(got)
    tol = float(manifest.get("sample_tolerance", 1e-4))
    if n and (worst > tol or agree < n):
        raise GateError(f"{path}: smoke test failed: max |Δprob| {worst:.2e} (tolerance {tol:.0e}), "
                        f"top-1 agreement {agree}/{n}")
    return {"samples": n, "max_abs_prob_diff": worst, "top1_agreement": agree}
