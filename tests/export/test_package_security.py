"""Package security: nothing shipped runs during verification, predict.py checks before it imports,
Ed25519 signatures refuse forged manifests, unsigned packages say so, keygen never overwrites."""

from __future__ import annotations

import json
import py_compile
import shutil
from pathlib import Path

import pytest

from export.package import PackageError, verify_package
from export.signing import keygen
from tests.export._pkg import build, checkpoint_and_exports, raw_images, rehash, run_predict
from toolchain.cli import main


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("pkgsec")
    _, files = checkpoint_and_exports(root)
    images = raw_images(root / "raw")
    private, public = keygen(root / "keys")
    unsigned = build(root, files, images, "onnxruntime", name="unsigned")
    signed = build(root, files, images, "onnxruntime", name="signed", sign_key=private)
    return {"unsigned": unsigned, "signed": signed, "private": private, "public": public, "images": images,
            "root": root}


def _copy(pkg: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(pkg, tmp_path / pkg.name))


def _cli(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main([*map(str, args)])
    out = capsys.readouterr()
    return exc.value.code or 0, out.out, out.err


def _one_line_exit_2(code: int, err: str) -> None:
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_unsigned_package_says_unsigned(made, capsys):
    report = verify_package(made["unsigned"])
    assert report["signature"].startswith("UNSIGNED") and not report["signed"] and report["samples"] == 3
    code, out, err = _cli(capsys, "verify-package", made["unsigned"])
    assert code == 0 and "UNSIGNED" in out, err
    res = run_predict(made["unsigned"], "--check")
    assert res.returncode == 0 and "UNSIGNED" in res.stdout, res.stderr


def test_unsigned_package_refused_under_trusted_key(made, capsys):
    with pytest.raises(PackageError, match="UNSIGNED"):
        verify_package(made["unsigned"], trusted_key=made["public"])
    _one_line_exit_2(*_cli(capsys, "verify-package", made["unsigned"], "--trusted-key", made["public"])[::2])
    res = run_predict(made["unsigned"], made["images"][0], "--trusted-key", made["public"])
    _one_line_exit_2(res.returncode, res.stderr)


def test_signed_package_verifies_with_its_key_only(made, tmp_path):
    report = verify_package(made["signed"], trusted_key=made["public"])
    assert report["signed"] and report["signature"].startswith("signed by trusted key")
    res = run_predict(made["signed"], "--check", "--trusted-key", made["public"])
    assert res.returncode == 0 and "signed by trusted key" in res.stdout, res.stderr
    _, other = keygen(tmp_path / "other")
    with pytest.raises(PackageError, match="signature is not valid"):
        verify_package(made["signed"], trusted_key=other)
    stripped = _copy(made["signed"], tmp_path)
    (stripped / "manifest.sig").unlink()  # dropping the signature does not get past --trusted-key
    with pytest.raises(PackageError, match="UNSIGNED"):
        verify_package(stripped, trusted_key=made["public"])


def test_swapped_class_names_with_recomputed_hash_refused(made, tmp_path, capsys):
    forged = _copy(made["signed"], tmp_path)
    manifest = json.loads((forged / "manifest.json").read_text())
    manifest["class_names"] = manifest["class_names"][::-1]
    (forged / "manifest.json").write_text(json.dumps(manifest))
    rehash(forged)  # self-consistent again: integrity alone cannot tell
    assert verify_package(forged)["ok"]
    with pytest.raises(PackageError, match="signature is not valid"):
        verify_package(forged, trusted_key=made["public"])
    _one_line_exit_2(*_cli(capsys, "verify-package", forged, "--trusted-key", made["public"])[::2])
    res = run_predict(forged, made["images"][0], "--trusted-key", made["public"])
    _one_line_exit_2(res.returncode, res.stderr)
    assert "signature is not valid" in res.stderr


def _marker_code(marker: Path) -> str:
    return f"import pathlib\npathlib.Path({str(marker)!r}).write_text('planted code ran')\n"


def test_planted_pyc_is_refused_and_never_run(made, tmp_path):
    pkg = _copy(made["unsigned"], tmp_path)
    marker = tmp_path / "pyc-ran"
    src = tmp_path / "evil.py"
    src.write_text(_marker_code(marker))
    (pkg / "__pycache__").mkdir()
    py_compile.compile(str(src), cfile=str(pkg / "__pycache__" / "predict.cpython-311.pyc"))
    with pytest.raises(PackageError, match="unlisted file in package: __pycache__"):
        verify_package(pkg)
    res = run_predict(pkg, made["images"][0], isolated=False)
    assert res.returncode == 2 and "unlisted" in res.stderr, res.stderr
    assert not marker.exists()


def test_edited_predict_with_recomputed_hashes_is_refused_unrun(made, tmp_path):
    pkg = _copy(made["unsigned"], tmp_path)
    marker = tmp_path / "predict-ran"
    predict = pkg / "predict.py"
    predict.write_text(_marker_code(marker) + predict.read_text())
    rehash(pkg)
    with pytest.raises(PackageError, match="predict.py differs"):
        verify_package(pkg)
    assert not marker.exists()


@pytest.mark.parametrize("listed", [False, True])
def test_planted_module_beside_predict_does_not_run(made, tmp_path, listed):
    """numpy.py (imported after the checks) and json.py (imported by the script's first lines) beside
    predict.py: refused as unlisted, and not imported even once a forger lists them in the manifest."""
    pkg = _copy(made["unsigned"], tmp_path)
    marker = tmp_path / "module-ran"
    for name in ("numpy.py", "json.py"):
        (pkg / name).write_text(_marker_code(marker))
    if listed:
        rehash(pkg)
    for isolated in (False, True):
        res = run_predict(pkg, made["images"][0], isolated=isolated, cwd=pkg)
        if listed:
            assert res.returncode == 0, res.stderr
        else:
            assert res.returncode == 2 and "unlisted file in package" in res.stderr, res.stderr
        assert not marker.exists()


def test_keygen_refuses_overwrite(tmp_path, capsys):
    private, public = keygen(tmp_path / "k")
    assert private.stat().st_mode & 0o777 == 0o600
    before = private.read_bytes(), public.read_bytes()
    with pytest.raises(PackageError, match="refusing to overwrite"):
        keygen(tmp_path / "k")
    _one_line_exit_2(*_cli(capsys, "keygen", "--out", tmp_path / "k")[::2])
    assert (private.read_bytes(), public.read_bytes()) == before
    public.unlink()  # half a pair left: still refused, the private key is kept
    with pytest.raises(PackageError, match="refusing to overwrite"):
        keygen(tmp_path / "k")
    assert private.read_bytes() == before[0]
    (tmp_path / "file").write_text("x")
    _one_line_exit_2(*_cli(capsys, "keygen", "--out", tmp_path / "file")[::2])


def test_loose_or_wrong_signing_keys_are_refused(made, tmp_path):
    from export.signing import load_private_key

    loose = tmp_path / "loose.key"
    shutil.copyfile(made["private"], loose)
    loose.chmod(0o644)
    with pytest.raises(PackageError, match="readable by others"):
        load_private_key(loose)
    with pytest.raises(PackageError, match="not found"):
        load_private_key(tmp_path / "missing.key")
    junk = tmp_path / "junk.key"
    junk.write_text("not a key")
    junk.chmod(0o600)
    with pytest.raises(PackageError, match="unreadable"):
        load_private_key(junk)
    with pytest.raises(PackageError, match="not found"):
        verify_package(made["signed"], trusted_key=tmp_path / "missing.pub")


def test_checks_run_before_numpy_pillow_or_runtime_are_imported(made, tmp_path):
    """A refused package never gets as far as importing numpy, pillow, the runtime or cryptography."""
    import subprocess
    import sys

    pkg = _copy(made["signed"], tmp_path)
    (pkg / "MODEL_CARD.md").write_text("edited\n")
    code = ("import runpy, sys\n"
            f"sys.argv = [{str(pkg / 'predict.py')!r}, {str(made['images'][0])!r}, '--trusted-key', "
            f"{str(made['public'])!r}]\n"
            "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\nexcept SystemExit as e:\n    rc = e.code\n"
            "heavy = [m for m in ('numpy', 'PIL', 'onnxruntime', 'openvino', 'cryptography') if m in sys.modules]\n"
            "print(rc, ','.join(heavy) or '-')\n")
    res = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=120)
    assert res.stdout.split() == ["2", "-"], (res.stdout, res.stderr)
    assert "checksum mismatch for MODEL_CARD.md" in res.stderr
