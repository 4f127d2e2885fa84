"""Bedside packages: model files + manifest (sha256 of every file) + model card + predict.py.

A package is built in a temp dir and renamed into place, then tarred reproducibly (sorted entries,
fixed mtime/owner, gzip without timestamp) so the same inputs give byte-identical archives.
The manifest carries a checksum of itself, so flipping any byte of any file is detected; with a
signing key (``export.signing``) ``manifest.sig`` adds an Ed25519 signature over that checksum,
so an edit with recomputed checksums is detected too. The manifest records the whole preprocessing
chain, including the load-size resize the training images went through, and the samples are
stored as raw files, so the smoke test replays exactly what predict.py does with a new image.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from toolchain.errors import MedpruneError
from toolchain.models.checkpoint import sha256_file

from .package_archive import PackageError, fsync_tree, refuse_pickle, safe_extract, write_tarball
from .package_verify import (
    PACKAGE_SCRIPTS,
    PREDICT_TEMPLATE,
    image_input_template,
    predict_template,
    verify_package,
)

__all__ = ["PackageError", "PackageSpec", "Sample", "build_package", "canonical_sha256", "package_preprocess",
           "reference_predict", "refuse_pickle", "safe_extract", "verify_package", "write_tarball"]

FORMAT_VERSION = 3  # 2: preprocess chain with the load-size step, raw samples, manifest.sig, openvino_config;
#                     3: _preprocess.py beside predict.py, input_profile warnings
PRECISIONS = ("fp32", "fp16", "int8")
SAMPLE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom")


def canonical_sha256(manifest: dict) -> str:
    return predict_template().canonical_sha256(manifest)


@dataclass
class Sample:
    """A reference image carried in the package for the on-device parity smoke test."""

    name: str
    pixels: np.ndarray | None  # uint8 (H, W) or (H, W, 3), stored as PNG when there is no ``source``
    label: str
    probabilities: list[float]  # what the verified export computed at packaging time
    source: Path | None = None  # the raw image file (as in the data folder), copied byte for byte


@dataclass
class PackageSpec:
    name: str
    runtime: str  # onnxruntime | openvino | tensorrt
    model_files: dict[str, Path]  # role ("onnx", "openvino", "openvino_bin") -> source file
    class_names: list[str]
    preprocess: dict  # see package_preprocess
    manifest: dict = field(default_factory=dict)  # metrics, recipe, dataset, seeds, versions ...
    model_card: str = ""
    samples: list[Sample] = field(default_factory=list)
    reports: dict[str, Path] = field(default_factory=dict)  # arcname under reports/ -> file
    scripts: dict[str, str | bytes] = field(default_factory=dict)  # arcname -> text/bytes (build_engine.sh)
    sample_tolerance: float = 1e-4  # max |Δprob| allowed in the smoke test (fp16/int8 looser)
    precision: str = "fp32"  # of the shipped model: picks the OpenVINO compile settings recorded


def package_preprocess(preprocess: dict, load_size: int | None = None) -> dict:
    """The manifest's preprocessing: the checkpoint's Preprocess (``to_dict()``) plus the load-size
    resize its training images went through (``train_config.load_size``), and the chain in order."""
    out = {"img_size": int(preprocess["img_size"]), "in_chans": int(preprocess["in_chans"]),
           "mean": [float(v) for v in preprocess["mean"]], "std": [float(v) for v in preprocess["std"]]}
    chain = ["decode: PIL; 16-bit scaled to 0..255; RGB whose channels differ by <= "
             f"{image_input_template().GREY_TOLERANCE} is grey (toolchain.data.folder)"]
    if load_size:
        out["load_size"], out["load_resample"] = int(load_size), "bilinear"
        chain.append(f"load resize to {int(load_size)} px: PIL Image.resize BILINEAR on uint8 "
                     "(JPEG decoded with draft at that size), as the training data was loaded")
    chain += ["scale: uint8 / 255", "channels: RGB → grey by channel mean when in_chans is 1",
              f"resize to {out['img_size']} px: antialiased bilinear, half-pixel centres "
              "(torch interpolate antialias=True)", "channels: grey → RGB by repetition when in_chans is 3",
              "normalise: (x - mean) / std per channel"]
    out["chain"] = chain
    return out


def _check_preprocess(pre: dict) -> None:
    missing = [k for k in ("img_size", "in_chans", "mean", "std") if k not in pre]
    if missing:
        raise PackageError(f"package preprocess lacks {', '.join(missing)}")
    if int(pre["in_chans"]) not in (1, 3) or len(pre["mean"]) != int(pre["in_chans"]) != len(pre["std"]):
        raise PackageError(f"package preprocess: in_chans {pre['in_chans']} does not match mean/std")
    if "load_size" in pre and (not isinstance(pre["load_size"], int) or pre["load_size"] < 1):
        raise PackageError(f"package preprocess: load_size must be a positive int, got {pre['load_size']!r}")
    if pre.get("load_resample", "bilinear") not in image_input_template().LOAD_RESAMPLE:
        raise PackageError(f"package preprocess: unknown load_resample {pre['load_resample']!r}")


def _write_samples(root: Path, samples: list[Sample]) -> list[dict]:
    from PIL import Image

    if samples:
        (root / "samples").mkdir()
    out = []
    for s in samples:
        if not s.name or Path(s.name).name != s.name or s.name.startswith("."):
            raise PackageError(f"invalid sample name {s.name!r}")
        if s.source is not None:
            suffix = Path(s.source).suffix.lower()
            if suffix not in SAMPLE_SUFFIXES:
                raise PackageError(f"sample {s.source} is not an image file ({', '.join(SAMPLE_SUFFIXES)})")
            rel = f"samples/{s.name}{suffix}"
            shutil.copyfile(s.source, root / rel)
        elif s.pixels is not None:
            rel = f"samples/{s.name}.png"
            Image.fromarray(s.pixels).save(root / rel, format="PNG", optimize=False)
        else:
            raise PackageError(f"sample {s.name} has neither a source file nor pixels")
        out.append({"file": rel, "label": s.label, "probabilities": [float(p) for p in s.probabilities]})
    return out


def _file_roles(spec: PackageSpec, root: Path) -> dict[str, str]:
    (root / "model").mkdir()
    roles = {}
    for role, src in spec.model_files.items():
        src = Path(src)
        if not src.is_file():
            raise PackageError(f"model file for {role} not found: {src}")
        refuse_pickle(src)
        rel = f"model/{src.name}"
        shutil.copyfile(src, root / rel)
        roles[role] = rel
    return roles


def _fill(spec: PackageSpec, root: Path) -> None:
    """Write every file of the package into ``root`` (an empty folder), manifest last."""
    roles = _file_roles(spec, root)
    samples = _write_samples(root, spec.samples)
    for script in PACKAGE_SCRIPTS:  # verify_package requires them byte-identical to these templates
        shutil.copyfile(PREDICT_TEMPLATE.with_name(script), root / script)
    (root / "predict.py").chmod(0o755)
    (root / "MODEL_CARD.md").write_text(spec.model_card)
    if spec.reports:
        (root / "reports").mkdir()
        for arc, src in sorted(spec.reports.items()):
            shutil.copyfile(src, root / "reports" / arc)
    for arc, text in sorted(spec.scripts.items()):
        if Path(arc).is_absolute() or ".." in Path(arc).parts:
            raise PackageError(f"unsafe script path {arc!r}")
        path = root / arc
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)  # testset.npz is bytes
        path.chmod(0o755 if path.suffix in (".sh", ".py") else 0o644)
    files = {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}
    manifest = {
        "format_version": FORMAT_VERSION,
        "name": spec.name,
        "model": _model_record(spec, roles),
        "class_names": spec.class_names,
        "preprocess": spec.preprocess,
        "samples": samples,
        "sample_tolerance": spec.sample_tolerance,
        **spec.manifest,
        "files": files,
    }
    manifest["manifest_sha256"] = canonical_sha256(manifest)
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def _model_record(spec: PackageSpec, roles: dict[str, str]) -> dict:
    """Runtime, files and the settings the runtime must compile with (OpenVINO FP32 IR: f32 hint, so
    predict.py on a bf16-capable CPU computes what verification computed)."""
    from .openvino import RUNTIME_CONFIG

    record = {"runtime": spec.runtime, "files": roles, "precision": spec.precision}
    if "openvino" in roles:
        record["openvino_config"] = dict(RUNTIME_CONFIG[spec.precision])
    return record


def export_probabilities(model_file: str | os.PathLike, precision: str, x: np.ndarray) -> np.ndarray:
    """(N, K) softmax of an exported model on preprocessed ``x``, run exactly as export verification
    runs it (export.verify.runner_for: OpenVINO FP32 compiled with the f32 hint): the reference
    probabilities a package's samples carry."""
    from .verify import logits_of, runner_for

    logits = logits_of(runner_for(model_file, precision), np.asarray(x, dtype=np.float32)).astype(np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def build_package(spec: PackageSpec, out_root: str | os.PathLike, *, verify: bool = True,
                  report: dict | None = None, sign_key: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """Write ``out_root/<name>/`` and ``out_root/<name>.tar.gz``; nothing partial is ever left.

    Both are built (and, with ``verify``, checked by :func:`verify_package`) in a hidden staging
    folder inside ``out_root`` and only then renamed into place, replacing an older package of the
    same name; an error or Ctrl-C at any point leaves the previous state (old package or nothing).
    ``report`` (a dict) receives the verify_package report of the staged tarball. ``sign_key`` (a PEM
    Ed25519 private key, ``medprune keygen``) adds ``manifest.sig``; the staged package is then
    verified against the matching public key.
    """
    if not spec.name or Path(spec.name).name != spec.name or spec.name.startswith("."):
        raise PackageError(f"invalid package name {spec.name!r}")
    if spec.precision not in PRECISIONS:
        raise PackageError(f"package precision must be one of {', '.join(PRECISIONS)}, got {spec.precision!r}")
    _check_preprocess(spec.preprocess)
    key = None
    if sign_key is not None:
        from .signing import load_private_key

        key = load_private_key(sign_key)  # before any work: a bad key is a one-line error, not a late one
    out_root = Path(out_root)
    if out_root.exists() and not out_root.is_dir():
        raise PackageError(f"output {out_root} exists and is not a folder")
    out_root.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{spec.name}.", suffix=".tmp", dir=out_root))
    try:
        root = stage / spec.name
        root.mkdir()
        _fill(spec, root)
        trusted = None
        if key is not None:
            from .signing import public_pem, sign_package

            sign_package(root, key)
            trusted = stage / "signer.pub"  # outside the package folder: not part of what is shipped
            trusted.write_bytes(public_pem(key))
        staged_tar = stage / f"{spec.name}.tar.gz"
        write_tarball(root, staged_tar)
        if verify:
            checked = verify_package(staged_tar, trusted_key=trusted)
            if report is not None:
                report.update(checked)
        fsync_tree(root)
        return _publish(stage, out_root, spec.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _publish(stage: Path, out_root: Path, name: str) -> tuple[Path, Path]:
    """Rename the staged folder and tarball into ``out_root`` as one step that rolls back on failure."""
    pairs = [(stage / name, out_root / name), (stage / f"{name}.tar.gz", out_root / f"{name}.tar.gz")]
    old = stage / ".old"
    old.mkdir()
    moved_old, placed = [], []
    try:
        for _, dst in pairs:
            if dst.exists() or dst.is_symlink():
                os.replace(dst, old / dst.name)
                moved_old.append(dst)
        for src, dst in pairs:
            os.replace(src, dst)
            placed.append(dst)
    except BaseException:
        for dst in placed:
            if dst.is_dir():
                shutil.rmtree(dst, ignore_errors=True)
            else:
                dst.unlink(missing_ok=True)
        for dst in moved_old:
            os.replace(old / dst.name, dst)
        raise
    return pairs[0][1], pairs[1][1]


def raw_sources(ds, split: str, indices: list[int]) -> list[Path | None]:
    """The source file of each ``split`` image at ``indices`` of an image-folder dataset, or None
    where there is none (npz data) or it no longer decodes to the loaded pixels; packages carry these
    raw files as samples, so the smoke test replays the whole chain, the load-size resize included.
    """
    from toolchain.data.folder import _decode, assign_splits, scan

    root = Path(str(ds.source or ""))
    if not root.is_dir():
        return [None] * len(indices)
    val_cut = ds.params.get("val_cut_from_train") or {}
    seed = int((val_cut or ds.params.get("test_cut_from_train") or {}).get("seed", 0))
    try:
        layout, entries, classes = scan(root)[:3]
    except MedpruneError:  # the folder changed since it was loaded: no raw samples, not an error
        return [None] * len(indices)
    by_split, _ = assign_splits(layout, entries, classes, float(val_cut.get("fraction", 0.1)), seed)
    images = ds.split(split).images
    if classes != list(ds.class_names) or len(by_split[split]) != len(images):
        return [None] * len(indices)
    out: list[Path | None] = []
    for i in indices:
        path = root / entries[int(by_split[split][i])].rel
        arr = _decode(path, path.read_bytes(), ds.params.get("load_size"))
        out.append(path if _same_pixels(arr, images[i]) else None)
    return out


def _same_pixels(decoded: np.ndarray, loaded: np.ndarray) -> bool:
    """A decoded (H, W) or (H, W, 3) file equals a dataset's (H, W, C) image (grey broadcast to RGB)."""
    arr = decoded[..., None] if decoded.ndim == 2 else decoded
    if arr.shape[:2] != loaded.shape[:2] or arr.shape[2] not in (1, loaded.shape[2]):
        return False
    return bool(np.array_equal(np.broadcast_to(arr, loaded.shape), loaded))


def reference_predict(checkpoint: str | os.PathLike, images: list[str | os.PathLike]) -> np.ndarray:
    """(N, K) probabilities the toolchain itself computes for image files (``medprune predict``'s path: the
    image-folder decoder at the checkpoint's training load size, its Preprocess and the torch model).

    predict.py must agree with this (same class, |Δprob| within the package's sample tolerance).
    """
    from toolchain.commands.predict import predict_files
    from toolchain.models import load_checkpoint

    model, meta = load_checkpoint(checkpoint)
    records = predict_files(model, meta, [Path(p) for p in images])
    return np.array([list(r["probabilities"].values()) for r in records])
