"""`medprune deploy --sign-key`: a bad key stops the run before any stage; a good one gives a package
that verifies against its public key only."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest

from export.package import PackageError, verify_package
from export.signing import keygen
from tests.devices._deploy_tiny import deploy_args, tiny_setup
from toolchain.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_setup(tmp_path_factory)


def test_bad_sign_key_stops_before_any_stage(tiny, tmp_path, capsys):
    private, _ = keygen(tmp_path / "keys")
    loose = tmp_path / "loose.key"
    shutil.copyfile(private, loose)
    loose.chmod(0o644)
    for key, needle in ((tmp_path / "missing.key", "signing key not found"), (loose, "readable by others")):
        with pytest.raises(SystemExit) as exc:
            main(deploy_args(tiny, tmp_path / "dist", tmp_path / "cache", "--sign-key", str(key)))
        err = capsys.readouterr().err
        assert exc.value.code == 2 and needle in err and "Traceback" not in err, err
        assert len([ln for ln in err.splitlines() if ln.startswith("medprune: error:")]) == 1
        assert not (tmp_path / "dist").exists() and not (tmp_path / "cache" / "stages").exists()


def test_signed_deploy(tiny, tmp_path):
    private, public = keygen(tmp_path / "keys")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit) as exc:
        main([*deploy_args(tiny, tmp_path / "dist", tmp_path / "cache", "--ratio", "0.25", "--fidelity-images", "0",
                           "--no-calibrate", "--sign-key", str(private)), "--json"])
    assert exc.value.code == 0
    summary = json.loads(buf.getvalue())
    assert summary["verify"]["signed"] and summary["verify"]["trusted"]
    pkg = Path(summary["package"])
    assert (pkg / "manifest.sig").is_file()
    assert verify_package(Path(summary["tarball"]), trusted_key=public)["signature"].startswith("signed by trusted key")
    _, other = keygen(tmp_path / "other")
    with pytest.raises(PackageError, match="signature is not valid"):
        verify_package(pkg, trusted_key=other)
