"""`medprune train/evaluate/info`: happy path on a tiny set, and one-line errors with exit != 0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import write_tiny_npz
from toolchain.cli import main

TINY_VIT = ["--build-arg", "embed_dim=32", "--build-arg", "depth=2", "--build-arg", "num_heads=4",
            "--build-arg", "patch_size=4"]


@pytest.fixture(autouse=True)
def _env(cli_env):
    pass


def run(argv, capsys) -> tuple[int, str, str]:
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *needles):
    assert code != 0
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("medprune: error:") and "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def trained(tmp_path, capsys) -> Path:
    npz = write_tiny_npz(tmp_path / "tinymnist.npz")
    out = tmp_path / "out" / "tiny.safetensors"
    code, stdout, err = run(["train", "--model", "vit_b16", "--data", str(npz), "--img-size", "16", "--epochs", "2",
                             "--batch-size", "8", "--lr", "0.003", "--seed", "0", "--device", "cpu", "--quiet",
                             "--out", str(out), *TINY_VIT], capsys)
    assert code == 0, err
    assert "accuracy" in stdout and f"checkpoint: {out}" in stdout.replace("\n", "")
    assert out.exists() and out.with_suffix(".json").exists()
    return out


def test_train_evaluate_info(trained, tmp_path, capsys):
    npz = tmp_path / "tinymnist.npz"
    report = tmp_path / "eval.json"
    code, stdout, err = run(["evaluate", "--checkpoint", str(trained), "--data", str(npz), "--split", "test",
                             "--device", "cpu", "--json", str(report)], capsys)
    assert code == 0, err
    doc = json.loads(report.read_text())
    assert doc["split"] == "test" and doc["metrics"]["n"] == 8 and "balanced" in stdout
    code, stdout, err = run(["info", "--checkpoint", str(trained), "--json", str(tmp_path / "info.json")], capsys)
    assert code == 0, err
    info = json.loads((tmp_path / "info.json").read_text())
    assert info["params"] > 0 and info["macs"] > 0 and info["disk_bytes"] > 0
    assert any(row["name"] == "blocks.0.attn.qkv" for row in info["layers"])
    assert "MACs" in stdout and "blocks.0.attn.qkv" in stdout


def test_info_model_without_checkpoint(capsys):
    code, stdout, err = run(["info", "--model", "vit_b16", "--img-size", "16", "--no-layers", *TINY_VIT], capsys)
    assert code == 0, err
    assert "params" in stdout and "MACs" in stdout


@pytest.mark.parametrize("command", ["train", "evaluate", "info"])
def test_help(command, capsys):
    code, stdout, _ = run([command, "--help"], capsys)
    assert code == 0 and "--" in stdout


def test_missing_data_file(tmp_path, capsys):
    code, _, err = run(["train", "--model", "vit_b16", "--data", str(tmp_path / "absent.npz"), "--quiet"], capsys)
    assert_one_line_error(code, err, "absent.npz")


def test_corrupt_npz(tmp_path, capsys):
    bad = tmp_path / "corrupt.npz"
    bad.write_bytes(b"PK\x03\x04 definitely not a zip archive")
    code, _, err = run(["train", "--model", "vit_b16", "--data", str(bad), "--quiet"], capsys)
    assert_one_line_error(code, err, "corrupt")


def test_unknown_model(tmp_path, capsys):
    npz = write_tiny_npz(tmp_path / "tinymnist.npz")
    code, _, err = run(["train", "--model", "resnet9000", "--data", str(npz), "--quiet"], capsys)
    assert_one_line_error(code, err, "resnet9000", "vgg19", "resnet50", "vit_b16")
    code, _, err = run(["info", "--model", "resnet9000"], capsys)
    assert_one_line_error(code, err, "resnet9000")


def test_sidecar_weights_mismatch(trained, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    state = load_file(str(trained))
    state["head.bias"] = state["head.bias"] + 1
    save_file(state, str(trained))
    code, _, err = run(["evaluate", "--checkpoint", str(trained), "--data", str(tmp_path / "tinymnist.npz")], capsys)
    assert_one_line_error(code, err, "sidecar")


def test_pickle_passed_as_checkpoint(tmp_path, capsys):
    bad = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(2)}, bad)
    code, _, err = run(["evaluate", "--checkpoint", str(bad)], capsys)
    assert_one_line_error(code, err, "pickle")
    code, _, err = run(["info", "--checkpoint", str(bad)], capsys)
    assert_one_line_error(code, err, "pickle")


def test_subprocess_error_has_no_traceback(tmp_path):
    bad = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(2)}, bad)
    env = {**os.environ, "MEDPRUNE_THREADS": "1"}
    env.pop("MEDPRUNE_DEBUG", None)
    proc = subprocess.run([sys.executable, "-m", "toolchain.cli", "info", "--checkpoint", str(bad)],
                          capture_output=True, text=True, env=env, timeout=300,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "pickle" in proc.stderr
