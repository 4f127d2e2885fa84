"""`medprune bench` checks its --out before measuring: read-only or a file in the way is exit 2, one line."""

from __future__ import annotations

import pytest

from tests.benchmarks.harness_fixtures import export_tiny
from tests.toolchain import fs_fixtures
from tests.toolchain.test_cli_foundation import assert_one_line_error, run

readonly_dir = fs_fixtures.readonly_dir  # fixture


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDPRUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.delenv("MEDPRUNE_DEBUG", raising=False)


def _no_measuring(monkeypatch):
    import devices.bench

    def measured(*_a, **_k):
        raise AssertionError("benchmark ran although --out is not writable")

    monkeypatch.setattr(devices.bench, "benchmark", measured)


def test_readonly_out_fails_before_measuring(readonly_dir, tmp_path, monkeypatch, capsys):
    _no_measuring(monkeypatch)
    model = export_tiny(tmp_path / "tiny.onnx")
    code, _, err = run(["bench", "--model", str(model), "--out", str(readonly_dir / "bench"), "--runs", "1",
                        "--no-calibrate", "--no-cross-check"], capsys)
    assert code == 2
    assert_one_line_error(code, err, "--out", "not writable")


def test_file_in_place_of_out_folder(tmp_path, monkeypatch, capsys):
    _no_measuring(monkeypatch)
    model = export_tiny(tmp_path / "tiny.onnx")
    blocker = tmp_path / "bench"
    blocker.write_text("user data")
    code, _, err = run(["bench", "--model", str(model), "--out", str(blocker), "--runs", "1"], capsys)
    assert code == 2
    assert_one_line_error(code, err, "is a file, not a folder")
    assert blocker.read_text() == "user data"
