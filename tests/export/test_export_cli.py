"""`medprune export`: files named by format and precision, one-line errors, no file on failed parity."""

from __future__ import annotations

import json

import pytest

from tests.conftest import write_tiny_npz
from toolchain.cli import main


@pytest.fixture
def checkpoint(tmp_path):
    from toolchain.models import build_model, save_checkpoint

    model = build_model("vit_b16", 2, in_chans=1, img_size=16, depth=1, embed_dim=32, num_heads=2)
    meta = {"class_names": ["normal", "pneumonia"], "dataset": {"name": "tinymnist"},
            "preprocess": {"img_size": 16, "in_chans": 1, "mean": [0.4], "std": [0.3]}}
    return save_checkpoint(tmp_path / "ckpt" / "tinyvit.safetensors", model, meta)


def _cli(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main(["export", *map(str, args)])
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_export_onnx_fp32(tmp_path, capsys, checkpoint):
    npz = write_tiny_npz(tmp_path / "tinymnist.npz")
    code, out, err = _cli(capsys, "--checkpoint", checkpoint, "--format", "onnx", "--precision", "fp32",
                          "--data", npz, "--out", tmp_path / "dist")
    assert code in (0, None), err
    assert "PASS" in out and "max|Δlogit|" in out
    assert (tmp_path / "dist" / "tinyvit_onnx_fp32.onnx").exists()
    report = json.loads((tmp_path / "dist" / "tinyvit_onnx_fp32.verify.json").read_text())
    assert report["verification"]["n"] == 8 and report["verification"]["passed"]
    assert report["metadata"]["source_sha256"] == json.loads(checkpoint.with_suffix(".json").read_text())["weights_sha256"]


def test_unsupported_precision_and_format(tmp_path, capsys, checkpoint):
    code, _, err = _cli(capsys, "--checkpoint", checkpoint, "--precision", "int4", "--out", tmp_path / "d")
    assert code == 2 and "'int4' is not one of 'fp32', 'fp16', 'int8'" in err  # choices from export.FORMATS
    assert len(err.strip().splitlines()) == 1
    code, _, err = _cli(capsys, "--checkpoint", checkpoint, "--format", "tflite", "--out", tmp_path / "d")
    assert code == 2 and "'tflite' is not one of 'onnx', 'openvino'" in err


def test_bad_checkpoint(tmp_path, capsys):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"not a checkpoint")
    code, _, err = _cli(capsys, "--checkpoint", bad, "--no-verify", "--out", tmp_path / "d")
    assert code == 2 and err.startswith("medprune: error:") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "d").exists()


def test_failed_parity_exit_code_and_no_file(tmp_path, capsys, checkpoint, monkeypatch):
    import export.verify

    monkeypatch.setitem(export.verify.TOLERANCES, "fp32", {"max_abs_logit": -1.0})
    npz = write_tiny_npz(tmp_path / "tinymnist.npz")
    code, out, err = _cli(capsys, "--checkpoint", checkpoint, "--data", npz, "--out", tmp_path / "dist")
    assert code == 3 and "parity failed" in err and "FAIL" in out
    assert list((tmp_path / "dist").iterdir()) == []


def test_out_that_is_a_file_is_refused_before_any_work(tmp_path, capsys, checkpoint, monkeypatch):
    import export.exporter

    def never(*a, **k):  # the export itself must not start when --out cannot take its files
        raise AssertionError("export ran although --out is a file")

    monkeypatch.setattr(export.exporter, "export_model", never)
    blocker = tmp_path / "dist"
    blocker.write_text("a user's file")
    code, _, err = _cli(capsys, "--checkpoint", checkpoint, "--no-verify", "--out", blocker)
    assert code == 2 and "--out" in err and "is a file" in err and len(err.strip().splitlines()) == 1
    assert blocker.read_text() == "a user's file"
