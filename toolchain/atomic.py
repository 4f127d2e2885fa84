"""Write artifacts so that a crash, Ctrl-C or full disk never leaves a half-written one behind.

Everything is built in a staging sibling, fsynced, and renamed into place only when complete; the
rename is then made durable by syncing the parent folder. Staging names carry their owner,
``.<target>.<host>-<pid>-<random>.tmp``, so the next write to the same target removes what a killed
run left behind (see :func:`clean_stale`). :func:`ensure_writable_dir` / :func:`ensure_writable_file`
check an output before any work starts, so a read-only, full or misplaced ``--out`` fails in a second
with one line instead of after every stage ran.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import OutputError

# A staging sibling whose owner is not alive on this host is removed at once. One that cannot be
# attributed (another host sharing the folder, a name without an owner, a pid reused after a reboot)
# is removed only once it is this old: no single stage runs for a day, so it cannot be a live write.
STALE_HOURS = 24.0
_HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:16] or "host"
_OWNER = re.compile(r"^(?P<host>[A-Za-z0-9]+)-(?P<pid>\d+)-")


def _prefix(target: Path) -> str:
    return f".{target.name}."


def _owner_tag() -> str:
    return f"{_HOST}-{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _is_stale(rest: str, mtime: float, now: float) -> bool:
    """``rest`` is a staging name after the target's prefix (``host-pid-xxxx.tmp`` or ``old-pid``)."""
    if now - mtime > STALE_HOURS * 3600:
        return True
    m = _OWNER.match(rest)
    if m and m["host"] == _HOST:
        return not _pid_alive(int(m["pid"]))
    if rest.startswith("old-") and rest[4:].isdigit():
        return not _pid_alive(int(rest[4:]))
    return False


def clean_stale(target: str | os.PathLike) -> list[Path]:
    """Remove staging siblings of ``target`` left by killed runs (rule: :data:`STALE_HOURS`); returns them."""
    target = Path(target)
    removed: list[Path] = []
    if not target.parent.is_dir():
        return removed
    prefix, now = _prefix(target), time.time()
    with contextlib.suppress(OSError):
        for entry in os.scandir(target.parent):
            if not entry.name.startswith(prefix):
                continue
            rest = entry.name[len(prefix):]
            if not (rest.endswith(".tmp") or ".tmp." in rest or rest.startswith("old-")):
                continue
            try:
                stale = _is_stale(rest, entry.stat(follow_symlinks=False).st_mtime, now)
            except OSError:
                continue
            if stale:
                path = Path(entry.path)
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        path.unlink()
                removed.append(path)
    return removed


def _fsync_path(path: Path) -> None:
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot sync a folder; the data itself was synced
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            _fsync_path(Path(dirpath) / name)
        _fsync_path(Path(dirpath))


def _check_target(target: Path, want_dir: bool) -> None:
    if target.is_symlink() or not target.exists():
        return
    if want_dir and not target.is_dir():
        raise OutputError(f"{target} exists and is a file, not a folder; remove it or choose another path")
    if not want_dir and target.is_dir():
        raise OutputError(f"{target} is a folder; give a file name")
    if not want_dir and not target.is_file():
        raise OutputError(f"{target} is not a regular file (a device or pipe); medprune will not replace it")


@contextlib.contextmanager
def _staging(target: Path, make) -> Iterator[Path]:
    """Clean stale siblings, then create a staging sibling with ``make(prefix, parent)``."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(target)
        staged = Path(make(_prefix(target) + _owner_tag(), target.parent))
    except OSError as exc:
        raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from exc
    yield staged


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp directory; on success it is fsynced and replaces ``target``, on failure it is removed."""
    target = Path(target)
    _check_target(target, want_dir=True)
    with _staging(target, lambda pre, parent: tempfile.mkdtemp(prefix=pre, suffix=".tmp", dir=parent)) as tmp:
        try:
            yield tmp
            _fsync_tree(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        backup = None
        if target.exists():
            backup = target.with_name(f"{_prefix(target)}old-{os.getpid()}")
            os.replace(target, backup)
        os.replace(tmp, target)
        _fsync_path(target.parent)
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)


def _mkstemp_closed(suffix: str):
    def make(prefix: str, parent: Path) -> str:
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=parent)
        os.close(fd)
        return name

    return make


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike, mode: str = "wb") -> Iterator:
    """Open a temp file next to ``target``; it is fsynced and renamed onto ``target`` only if the block succeeds."""
    target = Path(target)
    _check_target(target, want_dir=False)
    with _staging(target, _mkstemp_closed(".tmp")) as tmp, _replaced_on_success(tmp, target):
        with open(tmp, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp *path* (for libraries that insist on writing a file themselves), fsynced and renamed on success."""
    target = Path(target)
    _check_target(target, want_dir=False)
    with _staging(target, _mkstemp_closed(".tmp" + target.suffix)) as tmp, _replaced_on_success(tmp, target):
        yield tmp
        _fsync_path(tmp)


@contextlib.contextmanager
def _replaced_on_success(tmp, target: Path) -> Iterator[None]:
    """The block's durable temp file replaces ``target`` (and the rename is fsynced) only if the block succeeds."""
    try:
        yield
        os.replace(tmp, target)
        _fsync_path(target.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _existing_ancestor(path: Path, what: str) -> Path:
    for parent in [path, *path.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"{what} {path}: {parent} is a file, not a folder")
            return parent
    return Path.cwd()


def ensure_writable_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """``path`` as a Path once it is (or can become) a writable folder with free space; else OutputError.

    Nothing is created: the probe file goes into the nearest existing folder and is removed again.
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} {path} exists and is a file, not a folder")
    base = _existing_ancestor(path, what)
    try:
        fd, probe = tempfile.mkstemp(prefix=".medprune-probe-", dir=base)
        os.close(fd)
        os.unlink(probe)
        free = os.statvfs(base)
    except OSError as exc:
        raise OutputError(f"{what} {path} is not writable: {exc.strerror or exc}") from exc
    if free.f_bavail * free.f_frsize == 0:
        raise OutputError(f"{what} {path}: no space left on the device holding {base}")
    return path


def ensure_writable_file(path: str | os.PathLike, what: str = "output file") -> Path:
    """``path`` as a Path once its folder is writable and it is not a folder or device; else OutputError."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise OutputError(f"{what} {path} is a folder; give a file name")
    if path.exists() and not path.is_file():
        raise OutputError(f"{what} {path} is not a regular file (a device or pipe); medprune will not replace it")
    ensure_writable_dir(path.parent, f"folder of {what}")
    return path


def ensure_replaceable_dir(path: str | os.PathLike, what: str, own_prefixes: tuple[str, ...]) -> Path:
    """``path`` once :func:`atomic_dir` may replace it as a whole: absent, empty, or holding only files
    whose names start with ``own_prefixes`` (medprune's earlier output). A user's file or folder with
    anything else in it is refused rather than replaced."""
    path = ensure_writable_dir(path, what)
    if path.is_dir():
        foreign = sorted(p.name for p in path.iterdir() if not p.name.startswith(own_prefixes))
        if foreign:
            shown = ", ".join(foreign[:3]) + (" ..." if len(foreign) > 3 else "")
            raise OutputError(f"{what} {path} already holds files medprune did not write ({shown}); "
                              "it would be replaced: choose a new or empty folder")
    return path
