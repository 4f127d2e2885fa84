"""Package files on disk: the pickle refusal, the reproducible tarball and its safe extraction.

A package is hostile input once it has left the build machine, so extraction refuses absolute
paths, ``..``, links and special files, and no file of a package may be a pickle.
"""

from __future__ import annotations

import gzip
import os
import tarfile
from pathlib import Path

from toolchain import pickle_guard
from toolchain.atomic import atomic_file
from toolchain.errors import MedpruneError


class PackageError(MedpruneError):
    pass


def refuse_pickle(path: Path) -> None:
    """Packages carry no pickle (loading one runs arbitrary code): toolchain.pickle_guard's one check."""
    pickle_guard.refuse_pickle(path, PackageError)


def fsync_tree(root: Path) -> None:
    """Flush every file and folder under ``root`` to disk, so the rename that publishes it cannot
    leave an empty or truncated file behind after a power cut."""
    for path in [*sorted(root.rglob("*"), reverse=True), root]:
        if path.is_symlink():
            continue
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


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
        fh.flush()
        os.fsync(fh.fileno())


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
