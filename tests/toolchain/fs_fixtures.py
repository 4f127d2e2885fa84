"""Folders that really refuse writes: read-only and full file systems for the output-error tests.

As root, ``chmod`` does not stop a write, so a small tmpfs is mounted (read-only, or tiny and filled);
without the right to mount, the test that needs it is skipped with the reason.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def _mount_tmpfs(path: Path, options: str) -> None:
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode})")


def _umount(path: Path) -> None:
    subprocess.run(["umount", str(path)], capture_output=True)


@pytest.fixture
def readonly_dir(tmp_path) -> Iterator[Path]:
    path = tmp_path / "readonly"
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        yield path
        path.chmod(0o755)
        return
    _mount_tmpfs(path, "ro,size=64k")
    try:
        yield path
    finally:
        _umount(path)


@pytest.fixture
def tiny_disk(tmp_path) -> Iterator[Path]:
    """A 64 KiB file system with one 4 KiB block left: the preflight passes, a bigger write hits ENOSPC."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tiny tmpfs needs root")
    path = tmp_path / "tiny_disk"
    path.mkdir()
    _mount_tmpfs(path, "size=64k")
    try:
        st = os.statvfs(path)
        (path / "filler").write_bytes(b"\0" * ((st.f_bavail - 1) * st.f_frsize))
        yield path
    finally:
        _umount(path)
