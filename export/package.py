"""Bedside packages: model files + manifest (sha256 of every file) + model card + predict.py.

A package is built in a temp dir and renamed into place, then tarred reproducibly (sorted entries,
fixed mtime/owner, gzip without timestamp) so the same inputs give byte-identical archives.
The manifest carries a checksum of itself, so flipping any byte of any file is detected.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from toolchain.atomic import atomic_file
from toolchain.errors import GateError, MedpruneError
from toolchain.models.checkpoint import sha256_file

TEMPLATE_DIR = Path(__file__).parent / "templates"
PREDICT_TEMPLATE = TEMPLATE_DIR / "predict.py"
FORMAT_VERSION = 1


class PackageError(MedpruneError):
    pass


def canonical_sha256(manifest: dict) -> str:
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass
class Sample:
    """A reference image carried in the package for the on-device parity smoke test."""

    name: str
    pixels: np.ndarray  # uint8 (S, S) or (S, S, 3) at the model's input size
    label: str
    probabilities: list[float]  # what the verified export computed at packaging time


@dataclass
class PackageSpec:
    name: str
    runtime: str  # onnxruntime | openvino | tensorrt
    model_files: dict[str, Path]  # role ("onnx", "openvino", "openvino_bin") -> source file
    class_names: list[str]
    preprocess: dict
    manifest: dict = field(default_factory=dict)  # metrics, recipe, dataset, seeds, versions ...
    model_card: str = ""
    samples: list[Sample] = field(default_factory=list)
    reports: dict[str, Path] = field(default_factory=dict)  # arcname under reports/ -> file
    scripts: dict[str, str] = field(default_factory=dict)  # arcname -> text (e.g. build_engine.sh)
    sample_tolerance: float = 1e-4  # max |Δprob| allowed in the smoke test (fp16/int8 looser)


def _write_samples(root: Path, samples: list[Sample]) -> list[dict]:
    from PIL import Image

    (root / "samples").mkdir()
    out = []
    for s in samples:
        rel = f"samples/{s.name}.png"
        Image.fromarray(s.pixels).save(root / rel, format="PNG", optimize=False)
        out.append({"file": rel, "label": s.label, "probabilities": [float(p) for p in s.probabilities]})
    return out


PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")


def refuse_pickle(path: Path) -> None:
    """Packages carry no pickle (loading one runs arbitrary code): by suffix, pickle magic or torch zip."""
    import zipfile

    name = path.name.lower()
    if name.endswith(PICKLE_SUFFIXES):
        raise PackageError(f"refusing pickle-based file in package: {path.name}")
    with open(path, "rb") as fh:
        head = fh.read(2)
        fh.seek(max(path.stat().st_size - 1, 0))
        tail = fh.read(1)
    # a pickle (protocol 2-5) opens with PROTO and ends with STOP ('.')
    if len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5 and tail == b".":
        raise PackageError(f"refusing pickle data in package: {path.name}")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            if any(n.endswith((".pkl", "data.pkl")) for n in zf.namelist()):
                raise PackageError(f"refusing torch/pickle archive in package: {path.name}")


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
    shutil.copyfile(PREDICT_TEMPLATE, root / "predict.py")
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
        path.write_text(text)
        path.chmod(0o755)
    files = {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}
    manifest = {
        "format_version": FORMAT_VERSION,
        "name": spec.name,
        "model": {"runtime": spec.runtime, "files": roles},
        "class_names": spec.class_names,
        "preprocess": spec.preprocess,
        "samples": samples,
        "sample_tolerance": spec.sample_tolerance,
        **spec.manifest,
        "files": files,
    }
    manifest["manifest_sha256"] = canonical_sha256(manifest)
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def build_package(spec: PackageSpec, out_root: str | os.PathLike, *, verify: bool = True,
                  report: dict | None = None) -> tuple[Path, Path]:
    """Write ``out_root/<name>/`` and ``out_root/<name>.tar.gz``; nothing partial is ever left.

    Both are built (and, with ``verify``, checked by :func:`verify_package`) in a hidden staging
    folder inside ``out_root`` and only then renamed into place, replacing an older package of the
    same name; an error or Ctrl-C at any point leaves the previous state (old package or nothing).
    ``report`` (a dict) receives the verify_package report of the staged tarball.
    """
    if not spec.name or Path(spec.name).name != spec.name or spec.name.startswith("."):
        raise PackageError(f"invalid package name {spec.name!r}")
    out_root = Path(out_root)
    if out_root.exists() and not out_root.is_dir():
        raise PackageError(f"output {out_root} exists and is not a folder")
    out_root.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{spec.name}.", suffix=".tmp", dir=out_root))
    try:
        root = stage / spec.name
        root.mkdir()
        _fill(spec, root)
        staged_tar = stage / f"{spec.name}.tar.gz"
        write_tarball(root, staged_tar)
        if verify:
            checked = verify_package(staged_tar)
            if report is not None:
                report.update(checked)
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


def write_tarball(src_dir: Path, tarball: Path, compresslevel: int = 6) -> None:
    """Reproducible tar.gz: sorted entries, mtime 0, uid/gid 0, gzip header without a timestamp.

    Streamed straight into gzip (no in-memory copy of a large model); level 6 because level 9 is
    several times slower on float weights for ~1 % smaller archives.
    """
    with atomic_file(tarball) as fh:
        with gzip.GzipFile(fileobj=fh, mode="wb", mtime=0, filename="", compresslevel=compresslevel) as gz, \
                tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for path in [src_dir, *sorted(src_dir.rglob("*"))]:
                info = tar.gettarinfo(str(path), arcname=str(Path(src_dir.name) / path.relative_to(src_dir)))
                info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                info.mode = 0o755 if (path.is_dir() or os.access(path, os.X_OK)) else 0o644
                if path.is_file():
                    with open(path, "rb") as src:
                        tar.addfile(info, src)
                else:
                    tar.addfile(info)
        os.fchmod(fh.fileno(), 0o644)  # mkstemp creates 0600; a package is meant to be copied around


def safe_extract(tarball: Path, dest: Path) -> Path:
    """Extract refusing absolute paths, ``..``, links and special files; returns the package dir."""
    try:
        tar = tarfile.open(tarball, "r:gz")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise PackageError(f"{tarball}: not a readable .tar.gz ({exc})") from exc
    with tar:
        members = tar.getmembers()
        tops = set()
        for m in members:
            name = m.name
            if name.startswith("/") or os.path.isabs(name) or ".." in Path(name).parts:
                raise PackageError(f"{tarball}: refusing unsafe path in archive: {name}")
            if not (m.isfile() or m.isdir()):
                raise PackageError(f"{tarball}: refusing link or special file in archive: {name}")
            tops.add(Path(name).parts[0])
        if len(tops) != 1:
            raise PackageError(f"{tarball}: expected one top-level package folder, found {len(tops)}")
        tar.extractall(dest, members=members, filter="data")
    return dest / tops.pop()


def _load_predict_module(root: Path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"medprune_pkg_predict_{abs(hash(root))}", root / "predict.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.HERE = root
    return module


def verify_package(path: str | os.PathLike, runtime: str | None = None) -> dict:
    """Check every checksum and run the carried samples; raises PackageError/GateError on any problem.

    The predict.py used is the package's own, but only after its checksum has been checked here
    with this module's code, so a tampered predict.py is refused before it runs.
    """
    path = Path(path)
    if not path.exists():
        raise PackageError(f"package not found: {path}")
    with tempfile.TemporaryDirectory(prefix="medprune-verify-") as tmp:
        root = safe_extract(path, Path(tmp)) if path.is_file() else path
        manifest = _check_manifest(root)
        predict = _load_predict_module(root)
        runner = predict.Runner(manifest, runtime, root=root)
        worst, agree = 0.0, 0
        for s in manifest["samples"]:
            pixels = predict.read_image(root / s["file"])
            probs = runner.probabilities(predict.preprocess(pixels, manifest["preprocess"]))[0]
            expected = np.asarray(s["probabilities"])
            worst = max(worst, float(np.abs(probs - expected).max()))
            agree += int(probs.argmax() == expected.argmax())
        n = len(manifest["samples"])
        tol = float(manifest.get("sample_tolerance", 1e-4))
        if n and (worst > tol or agree < n):
            raise GateError(
                f"{path}: smoke test failed: max |Δprob| {worst:.2e} (tolerance {tol:.0e}), "
                f"top-1 agreement {agree}/{n}"
            )
        return {"package": str(path), "name": manifest["name"], "files_checked": len(manifest["files"]),
                "samples": n, "max_abs_prob_diff": worst, "top1_agreement": agree,
                "runtime": runner.runtime, "ok": True}


def _check_manifest(root: Path) -> dict:
    try:
        manifest = json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise PackageError(f"{root}: manifest.json unreadable ({exc})") from exc
    if not isinstance(manifest, dict) or "files" not in manifest:
        raise PackageError(f"{root}: manifest.json has no file list")
    if manifest.get("manifest_sha256") != canonical_sha256(manifest):
        raise PackageError(f"{root}: manifest.json was modified (self-checksum mismatch)")
    for rel, digest in manifest["files"].items():
        p = root / rel
        if ".." in Path(rel).parts or Path(rel).is_absolute():
            raise PackageError(f"{root}: unsafe path in manifest: {rel}")
        if not p.is_file():
            raise PackageError(f"{root}: missing file {rel}")
        if sha256_file(p) != digest:
            raise PackageError(f"{root}: checksum mismatch for {rel} (file was modified)")
        refuse_pickle(p)
    listed = set(manifest["files"]) | {"manifest.json"}
    for p in root.rglob("*"):
        rel = str(p.relative_to(root))
        if p.is_file() and rel not in listed and "__pycache__" not in p.parts:
            raise PackageError(f"{root}: unlisted file in package: {rel}")
    return manifest


def reference_predict(checkpoint: str | os.PathLike, images: list[str | os.PathLike]) -> np.ndarray:
    """(N, K) probabilities the toolchain itself computes for image files: its image-folder decoder,
    the checkpoint's Preprocess (torch, antialiased bilinear) and the torch model.

    predict.py must agree with this (same class, |Δprob| within the package's sample tolerance).
    """
    import torch

    from toolchain.data import Preprocess
    from toolchain.models import load_checkpoint

    try:  # the exact decoder the toolchain's image-folder loader uses (grey detection, 16-bit scaling)
        from toolchain.data.folder import _decode as decode
    except ImportError:  # pragma: no cover - older toolchain
        def decode(path, data, _size):
            from PIL import Image

            with Image.open(io.BytesIO(data)) as im:
                return np.asarray(im.convert("L" if im.mode in ("1", "L", "LA") else "RGB"))

    model, meta = load_checkpoint(checkpoint)
    pre = Preprocess.from_dict(meta["preprocess"])
    out = []
    with torch.no_grad():
        for path in images:
            path = Path(path)
            arr = decode(path, path.read_bytes(), None)
            arr = np.array(arr[..., None] if arr.ndim == 2 else arr)  # writable copy for torch
            out.append(torch.softmax(model(pre(arr)).double(), 1)[0].numpy())
    return np.stack(out)
