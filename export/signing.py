"""Ed25519 signatures for bedside packages (authenticity, not only integrity).

The manifest's self-checksum only catches accidents: anyone can edit manifest.json and recompute
it. A signature over that checksum (which covers the sha256 of every file) can only be made with
the private key, and is checked against a public key installed on the device out of band, never
one taken from the package. The signature lives in ``manifest.sig`` beside the manifest, so the
manifest stays self-consistent and a package can be signed after it was built.

    medprune keygen --out KEYDIR     # KEYDIR/medprune-signing.key (0600) + medprune-signing.pub
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import stat
from pathlib import Path

from .package_archive import PackageError
from .package_verify import predict_template

PRIVATE_NAME = "medprune-signing.key"
PUBLIC_NAME = "medprune-signing.pub"


def keygen(out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """A new Ed25519 key pair in ``out_dir``; refuses to overwrite either file."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise PackageError(f"key folder {out} exists and is not a folder")
    private, public = out / PRIVATE_NAME, out / PUBLIC_NAME
    for p in (private, public):
        if p.exists() or p.is_symlink():
            raise PackageError(f"refusing to overwrite existing key file {p}")
    try:
        out.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise PackageError(f"cannot create key folder {out}: {exc.strerror or exc}") from None
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    _write_new(private, pem, 0o600)
    try:
        _write_new(public, pub, 0o644)
    except BaseException:
        private.unlink(missing_ok=True)
        raise
    return private, public


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` exclusively (O_EXCL: never replaces a file, even one made a moment ago), fsynced."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise PackageError(f"refusing to overwrite existing key file {path}") from None
    except OSError as exc:
        raise PackageError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(path, mode)  # the umask may have narrowed the public key's mode
    except BaseException:
        with contextlib.suppress(OSError):
            path.unlink()
        raise


def load_private_key(path: str | os.PathLike):
    """The Ed25519 private key in a PEM file that only its owner can read."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    p = Path(path)
    if not p.is_file():
        raise PackageError(f"signing key not found: {p}")
    mode = stat.S_IMODE(p.stat().st_mode)
    if os.name == "posix" and mode & 0o077:
        raise PackageError(f"signing key {p} is readable by others (mode {mode:04o}): chmod 600 {p}")
    try:
        key = serialization.load_pem_private_key(p.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise PackageError(f"signing key {p} unreadable: {str(exc).splitlines()[0]}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise PackageError(f"signing key {p} is not an Ed25519 private key (make one with medprune keygen)")
    return key


def public_pem(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def sign_package(root: Path, key) -> str:
    """Write ``root/manifest.sig`` for the (already checked) manifest; returns the key id."""
    tpl = predict_template()
    manifest = json.loads((root / "manifest.json").read_text())
    digest = tpl.canonical_sha256(manifest)
    if manifest.get("manifest_sha256") != digest:
        raise PackageError(f"{root}: manifest.json is not self-consistent; refusing to sign it")
    key_id = tpl.key_id(key.public_key())
    signature = key.sign((tpl.SIGNATURE_CONTEXT + digest).encode())  # Ed25519 is deterministic
    record = {"algorithm": "ed25519", "key_id": key_id, "signed": "manifest_sha256",
              "signature": base64.b64encode(signature).decode()}
    (root / tpl.SIGNATURE_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return key_id
