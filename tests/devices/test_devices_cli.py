"""`medprune devices` and `medprune bench`: tables, reports, device commands and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devices.remote import device_commands
from tests.benchmarks.harness_fixtures import export_tiny, to_openvino
from toolchain.cli import main


def _run(argv, capsys):
    code = 0
    try:
        main(argv)
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def tiny_onnx(tmp_path) -> Path:
    return export_tiny(tmp_path / "tiny.onnx")


def test_devices_lists_profiles(capsys):
    code, out, _ = _run(["devices"], capsys)
    assert code == 0
    for name in ("cpu", "x86-edge", "jetson-orin-nano", "jetson-agx-orin"):
        assert name in out


def test_bench_cpu_writes_report(tiny_onnx, tmp_path, capsys):
    code, out, err = _run(["bench", "--model", str(tiny_onnx), "--target", "cpu", "--runs", "3",
                           "--out", str(tmp_path / "r")], capsys)
    assert code == 0, err
    data = json.loads((tmp_path / "r" / "bench_cpu.json").read_text())
    m = data["models"][0]
    assert m["runtime"] == "onnxruntime" and m["memory"]["peak_rss_mb"] > 0 and m["macs"] > 0
    assert data["command"].startswith("medprune ")
    assert (tmp_path / "r" / "bench_cpu.md").exists() and (tmp_path / "r" / "bench_cpu.html").exists()
    assert "[measured]" in err


def test_bench_jetson_emits_commands_and_prediction(tiny_onnx, tmp_path, capsys):
    code, _, err = _run(["bench", "--model", str(tiny_onnx), "--target", "jetson-orin-nano", "--no-calibrate",
                         "--out", str(tmp_path / "r")], capsys)
    assert code == 0, err
    data = json.loads((tmp_path / "r" / "bench_jetson-orin-nano.json").read_text())
    assert data["models"] == [] and all(p["label"] == "predicted" for p in data["predictions"])
    assert data["predictions"][0]["latency_ms"] > 0
    script = (tmp_path / "r" / "device_jetson-orin-nano" / "run_on_jetson-orin-nano.sh").read_text()
    assert "trtexec --onnx=tiny.onnx --saveEngine=tiny_fp16.plan --fp16" in script
    assert "--minShapes=image:1x1x16x16" in script and "--maxShapes=image:8x1x16x16" in script
    assert "--loadEngine=tiny_fp16.plan --shapes=image:1x1x16x16" in script
    assert "python3 run_trt.py --engine tiny_fp16.plan" in script
    assert (tmp_path / "r" / "device_jetson-orin-nano" / "run_trt.py").exists()
    assert "PREDICTED" in err


def test_device_commands_static_batch_and_int8():
    from devices.profiles import load_profile

    lines = device_commands("m.onnx", load_profile("jetson-agx-orin"), "image", (3, 64, 64), static_batch=1,
                            precision="int8")
    build = next(line for line in lines if line.startswith("trtexec --onnx"))
    assert "--int8" in build and "minShapes" not in build
    assert any("Q/DQ" in line for line in lines)


@pytest.mark.parametrize("argv,needle", [
    (["--target", "raspberry-pi"], "'raspberry-pi' is not one of 'cpu'"),
    (["--model", "MISSING"], "model file not found"),
])
def test_bench_errors_one_line(argv, needle, tiny_onnx, tmp_path, capsys):
    args = ["bench", "--model", str(tiny_onnx), "--target", "cpu", "--out", str(tmp_path / "r")]
    for flag, value in zip(argv[::2], argv[1::2], strict=True):
        args[args.index(flag) + 1] = str(tmp_path / value) if value == "MISSING" else value
    code, _, err = _run(args, capsys)
    assert code != 0 and needle in err and len(err.strip().splitlines()) == 1


def test_bench_not_loadable_and_runtime_missing(tmp_path, tiny_onnx, capsys, monkeypatch):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"garbage")
    code, _, err = _run(["bench", "--model", str(bad), "--target", "cpu", "--out", str(tmp_path / "r")], capsys)
    assert code != 0 and "cannot load" in err and len(err.strip().splitlines()) == 1

    import benchmarks._runner as runner

    monkeypatch.setitem(runner.RUNTIME_MODULES, "openvino", "openvino_definitely_missing")
    xml = to_openvino(tiny_onnx)
    code, _, err = _run(["bench", "--model", str(xml), "--target", "x86-edge", "--out", str(tmp_path / "r")], capsys)
    assert code != 0 and "pip install openvino" in err and len(err.strip().splitlines()) == 1
