"""Outputs: read-only, full or misplaced paths exit 2 with one line, checked before the work; no leftovers;
stale staging from a killed run is cleaned; files are fsynced before their rename."""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.toolchain import fs_fixtures
from tests.toolchain.test_cli_foundation import assert_one_line_error, run
from toolchain import atomic
from toolchain.atomic import atomic_dir, atomic_file, clean_stale, ensure_writable_dir, ensure_writable_file
from toolchain.cli import user_fixable_os_error
from toolchain.errors import OutputError

readonly_dir, tiny_disk = fs_fixtures.readonly_dir, fs_fixtures.tiny_disk  # fixtures used below

TINY_RESNET = ["--model", "resnet50", "--img-size", "16", "--in-chans", "1", "--build-arg", "layers=[1,1,1,1]",
               "--build-arg", "channels=[8,16,16,32]", "--build-arg", "stem_width=8"]


@pytest.fixture(autouse=True)
def _env(cli_env):
    pass


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) if folder.is_dir() else []


# ---- the helpers -------------------------------------------------------------------------------------

def test_file_where_a_folder_is_expected(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("user data")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        ensure_writable_dir(blocker, "--out")
    with pytest.raises(OutputError, match="blocker is a file"):
        ensure_writable_dir(blocker / "sub" / "deeper", "--out")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        with atomic_dir(blocker) as tmp:
            (tmp / "x").write_text("x")
    assert blocker.read_text() == "user data" and not _leftovers(tmp_path)


def test_device_or_folder_is_never_replaced_by_a_file(tmp_path):
    with pytest.raises(OutputError, match="not a regular file"):
        ensure_writable_file("/dev/null", "--json")
    with pytest.raises(OutputError, match="not a regular file"):
        with atomic_file("/dev/null", "w") as fh:
            fh.write("x")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    with pytest.raises(OutputError, match="is a folder"):
        ensure_writable_file(tmp_path, "--json")


def test_readonly_folder_is_refused_by_the_helpers(readonly_dir):
    with pytest.raises(OutputError, match="not writable"):
        ensure_writable_dir(readonly_dir / "out", "--out")
    with pytest.raises(OutputError, match="not writable"):
        ensure_writable_file(readonly_dir / "m.json", "--json")
    with pytest.raises(OutputError, match="cannot write"):
        with atomic_file(readonly_dir / "m.json", "w") as fh:
            fh.write("{}")


def test_os_errors_the_user_can_fix_are_recognised_and_bugs_are_not():
    for code in (errno.EROFS, errno.EACCES, errno.ENOSPC, errno.EEXIST, errno.ENOTDIR):
        assert user_fixable_os_error(OSError(code, os.strerror(code), "/x/y"))
    wrapped = RuntimeError("safetensors failed")
    wrapped.__cause__ = OSError(errno.ENOSPC, "No space left on device")
    assert "No space left" in user_fixable_os_error(wrapped)
    assert user_fixable_os_error(RuntimeError("IoError: No space left on device (os error 28)"))
    assert user_fixable_os_error(FileNotFoundError(errno.ENOENT, "gone", "x")) is None
    assert user_fixable_os_error(TypeError("bad argument")) is None
    assert user_fixable_os_error(OSError(errno.EBADF, "Bad file descriptor")) is None


# ---- through the CLI ----------------------------------------------------------------------------------

def test_readonly_json_fails_before_any_work(readonly_dir, tmp_path, capsys):
    # the checkpoint does not exist: an error about --json proves the output was checked first
    for cmd in (["evaluate", "--checkpoint", str(tmp_path / "none.safetensors")],
                ["prune", "--checkpoint", str(tmp_path / "none.safetensors")],
                ["info", "--checkpoint", str(tmp_path / "none.safetensors")]):
        code, _, err = run([*cmd, "--json", str(readonly_dir / "m.json")], capsys)
        assert code == 2, err
        assert_one_line_error(code, err, "--json", "not writable")


def test_readonly_out_and_cache_fail_before_training(readonly_dir, tmp_path, monkeypatch, capsys):
    import toolchain.train

    def no_training(*_a, **_k):
        raise AssertionError("training started although the output is not writable")

    monkeypatch.setattr(toolchain.train, "train", no_training)
    code, _, err = run(["train", *TINY_RESNET, "--out", str(readonly_dir / "ckpt")], capsys)
    assert_one_line_error(code, err, "--out", "not writable")
    assert code == 2
    blocker = tmp_path / "ckpt_file"
    blocker.write_text("user data")
    code, _, err = run(["train", *TINY_RESNET, "--out", str(blocker)], capsys)
    assert code == 2 and "is a file, not a folder" in err and blocker.read_text() == "user data"
    monkeypatch.setenv("MEDPRUNE_CACHE", str(readonly_dir / "cache"))
    code, _, err = run(["train", *TINY_RESNET], capsys)
    assert code == 2
    assert_one_line_error(code, err, "MEDPRUNE_CACHE")
    monkeypatch.setenv("MEDPRUNE_CACHE", str(blocker))
    code, _, err = run(["train", *TINY_RESNET], capsys)
    assert code == 2
    assert_one_line_error(code, err, "MEDPRUNE_CACHE")


def test_full_disk_is_one_line_exit_2_without_leftovers(tiny_disk, capsys):
    target = tiny_disk / "info.json"
    code, _, err = run(["info", *TINY_RESNET, "--json", str(target)], capsys)
    assert code == 2, err
    assert_one_line_error(code, err, "No space left on device")
    assert not target.exists() and not _leftovers(tiny_disk)


def test_no_space_at_all_is_caught_by_the_preflight(tiny_disk, capsys):
    st = os.statvfs(tiny_disk)
    (tiny_disk / "last_block").write_bytes(b"\0" * st.f_bavail * st.f_frsize)
    code, _, err = run(["info", *TINY_RESNET, "--json", str(tiny_disk / "info.json")], capsys)
    assert code == 2
    assert_one_line_error(code, err, "--json")


def test_enospc_during_a_write_anywhere_is_exit_2(tmp_path, monkeypatch, capsys):
    """Without a tiny file system: the sync before the rename reports a full disk."""

    def full(_fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic.os, "fsync", full)
    target = tmp_path / "info.json"
    code, _, err = run(["info", *TINY_RESNET, "--no-layers", "--json", str(target)], capsys)
    assert code == 2
    assert_one_line_error(code, err, "No space left on device")
    assert not target.exists() and not _leftovers(tmp_path)


def test_save_masks_never_replaces_a_users_file_or_folder(tmp_path, capsys):
    missing = str(tmp_path / "none.safetensors")
    user_file = tmp_path / "notes.txt"
    user_file.write_text("precious")
    code, _, err = run(["prune", "--checkpoint", missing, "--save-masks", str(user_file)], capsys)
    assert code == 2 and "--save-masks" in err and user_file.read_text() == "precious"
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "report.docx").write_text("precious")
    code, _, err = run(["prune", "--checkpoint", missing, "--save-masks", str(folder)], capsys)
    assert code == 2 and "did not write (report.docx)" in err and (folder / "report.docx").exists()
    earlier = tmp_path / "masks"  # medprune's own earlier output may be replaced: the checkpoint error comes next
    earlier.mkdir()
    (earlier / "masks_r0.30.safetensors").write_bytes(b"")
    code, _, err = run(["prune", "--checkpoint", missing, "--save-masks", str(earlier)], capsys)
    assert code == 2 and "checkpoint not found" in err


# ---- staging and durability ---------------------------------------------------------------------------

def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_staging_of_a_killed_run_is_cleaned(tmp_path):
    target = tmp_path / "stage"
    host = atomic._HOST
    dead = tmp_path / f".stage.{host}-{_dead_pid()}-abc.tmp"
    live = tmp_path / f".stage.{host}-{os.getpid()}-def.tmp"
    other_host = tmp_path / f".stage.elsewhere-{_dead_pid()}-ghi.tmp"
    legacy_old = tmp_path / ".stage.k2j3h4.tmp"
    legacy_new = tmp_path / ".stage.z9y8x7.tmp"
    dead_file = tmp_path / f".stage.{host}-{_dead_pid()}-jkl.tmp.safetensors"
    for d in (dead, live, other_host, legacy_old, legacy_new):
        d.mkdir()
        (d / "half_written.bin").write_bytes(b"x")
    dead_file.write_bytes(b"x")
    old = time.time() - (atomic.STALE_HOURS + 1) * 3600
    os.utime(legacy_old, (old, old))
    with atomic_dir(target) as tmp:
        (tmp / "done").write_text("ok")
    assert (target / "done").read_text() == "ok"
    assert not dead.exists() and not legacy_old.exists() and not dead_file.exists()
    assert live.exists() and legacy_new.exists() and other_host.exists()  # may belong to a running write
    assert clean_stale(target) == []


def test_killed_run_leaves_staging_that_the_next_run_removes(tmp_path):
    target = tmp_path / "out"
    script = (f"import os, sys; sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})\n"
              "from toolchain.atomic import atomic_dir\n"
              f"with atomic_dir({str(target)!r}) as tmp:\n"
              "    (tmp / 'partial').write_text('x'); os._exit(9)\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr
    assert len(_leftovers(tmp_path)) == 1 and not target.exists()
    with atomic_dir(target) as tmp:
        (tmp / "complete").write_text("y")
    assert _leftovers(tmp_path) == [] and (target / "complete").exists()


def test_files_are_synced_before_their_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd)))
    monkeypatch.setattr(atomic.os, "replace", lambda a, b: (events.append(f"replace {Path(b).name}"),
                                                            real_replace(a, b)))
    with atomic_file(tmp_path / "a.json", "w") as fh:
        json.dump({"a": 1}, fh)
    assert events[0] == "fsync" and events.index("replace a.json") > 0
    events.clear()
    with atomic_dir(tmp_path / "pkg") as tmp:
        (tmp / "model.onnx").write_bytes(b"1")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "manifest.json").write_text("{}")
    first_replace = next(i for i, e in enumerate(events) if e.startswith("replace"))
    assert events[:first_replace].count("fsync") >= 4  # two files and two folders
