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

from toolchain.atomic import atomic_dir, atomic_file
from toolchain.errors import GateError, MedpruneError

TEMPLATE_DIR = Path(__file__).parent / "templates"
PREDICT_TEMPLATE = TEMPLATE_DIR / "predict.py"
FORMAT_VERSION = 1


class PackageError(MedpruneError):
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


def _file_roles(spec: PackageSpec, root: Path) -> dict[str, str]:
    (root / "model").mkdir()
    roles = {}
    for role, src in spec.model_files.items():
        src = Path(src)
        if not src.is_file():
            raise PackageError(f"model file for {role} not found: {src}")
        rel = f"model/{src.name}"
        shutil.copyfile(src, root / rel)
        roles[role] = rel
    return roles


def build_package(spec: PackageSpec, out_root: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``out_root/<name>/`` and ``out_root/<name>.tar.gz``; nothing partial is ever left."""
    out_root = Path(out_root)
    target = out_root / spec.name
    with atomic_dir(target) as root:
        roles = _file_roles(spec, root)
        samples = _write_samples(root, spec.samples)
        shutil.copyfile(PREDICT_TEMPLATE, root / "predict.py")
        (root / "MODEL_CARD.md").write_text(spec.model_card)
        if spec.reports:
            (root / "reports").mkdir()
            for arc, src in spec.reports.items():
                shutil.copyfile(src, root / "reports" / arc)
        for arc, text in spec.scripts.items():
            path = root / arc
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            path.chmod(0o755)
        files = {
            str(p.relative_to(root)): sha256_file(p)
            for p in sorted(root.rglob("*")) if p.is_file()
        }
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
    tarball = out_root / f"{spec.name}.tar.gz"
    write_tarball(target, tarball)
    return target, tarball


def write_tarball(src_dir: Path, tarball: Path) -> None:
    """Reproducible tar.gz: sorted entries, mtime 0, uid/gid 0, gzip header without a timestamp."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in [src_dir, *sorted(src_dir.rglob("*"))]:
            info = tar.gettarinfo(str(path), arcname=str(Path(src_dir.name) / path.relative_to(src_dir)))
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            info.mode = 0o755 if (path.is_dir() or os.access(path, os.X_OK)) else 0o644
            if path.is_file():
                with open(path, "rb") as fh:
                    tar.addfile(info, fh)
            else:
                tar.addfile(info)
    with atomic_file(tarball) as fh, gzip.GzipFile(fileobj=fh, mode="wb", mtime=0, filename="") as gz:
        gz.write(buf.getvalue())


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
    listed = set(manifest["files"]) | {"manifest.json"}
    for p in root.rglob("*"):
        rel = str(p.relative_to(root))
        if p.is_file() and rel not in listed and "__pycache__" not in p.parts:
            raise PackageError(f"{root}: unlisted file in package: {rel}")
    return manifest
