"""devices/scripts/run_trt.py as shipped: argument parsing, finding the engine and test set of a package,
loading the test set without pickle, and a whole run with the TensorRT engine mocked (no GPU here)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "devices" / "scripts" / "run_trt.py"


def _load():
    spec = importlib.util.spec_from_file_location("run_trt_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _package(tmp_path: Path, with_expected: bool = True) -> Path:
    """A folder laid out like a Jetson package after build_engine.sh: testset.npz inside, engine beside."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 1, 8, 8)).astype(np.float32)
    y = np.array([0, 1, 0, 1, 0, 1])
    extra = {"probabilities": np.tile([[0.25, 0.75]], (6, 1))} if with_expected else {}
    np.savez(pkg / "testset.npz", x=x, y=y, class_names=np.array(["normal", "pneumonia"]), **extra)
    engines = tmp_path / "pkg.trt"
    engines.mkdir()
    (engines / "model_fp16.plan").write_bytes(b"engine")
    (engines / "engine.json").write_text(json.dumps({"engine": "model_fp16.plan", "engine_sha256": hashlib.sha256(
        b"engine").hexdigest(), "onnx_sha256": "x", "precision": "fp16"}))
    return pkg


def test_defaults_find_the_engine_and_test_set_of_a_package(tmp_path):
    run_trt = _load()
    pkg = _package(tmp_path)
    a = run_trt.parse_args(["--package", str(pkg)])
    assert a.engine == tmp_path / "pkg.trt" / "model_fp16.plan" and a.data == pkg / "testset.npz"
    assert a.out == tmp_path / "pkg.trt" / "result_model_fp16.json"
    data = run_trt.load_testset(a.data)
    assert run_trt.input_shape(a, data) == (1, 1, 8, 8)
    b = run_trt.parse_args(["--engine", "e.plan", "--shape", "1x3x32x32", "--batch", "4", "--out", "r.json"])
    assert b.engine == Path("e.plan") and run_trt.input_shape(b, None) == (1, 3, 32, 32) and b.batch == 4


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    run_trt = _load()
    with pytest.raises(SystemExit):
        run_trt.parse_args(["--package", str(tmp_path)])  # no engine built yet
    assert "build_engine.sh" in capsys.readouterr().err
    a = run_trt.parse_args(["--engine", "e.plan", "--shape", "1x3xbad"])
    with pytest.raises(SystemExit, match="not like 1x3x224x224"):
        run_trt.input_shape(a, None)
    with pytest.raises(SystemExit):
        run_trt.parse_args(["--engine", "e.plan", "--runs", "0"])


def test_test_set_with_objects_is_refused(tmp_path):
    run_trt = _load()
    np.savez(tmp_path / "t.npz", x=np.array([object()], dtype=object), y=np.array([0]))
    with pytest.raises(SystemExit, match="cannot read test set"):
        run_trt.load_testset(tmp_path / "t.npz")


class _FakeEngine:
    """What trt_runner.Engine offers run_trt.py, computing a fixed 2-class answer."""

    version, load_s = "mock", 0.01

    def __init__(self, path):
        assert Path(path).is_file()

    def run(self, x):
        return np.tile(np.log([[0.25, 0.75]]), (len(x), 1)).astype(np.float32)


def test_main_runs_as_shipped_with_the_engine_mocked(tmp_path, monkeypatch, capsys):
    run_trt = _load()
    pkg = _package(tmp_path)
    module = run_trt.trt_runner()  # the real runner module, its Engine replaced
    monkeypatch.setattr(module, "Engine", _FakeEngine)
    monkeypatch.setattr(run_trt, "trt_runner", lambda: module)
    assert run_trt.main(["--package", str(pkg), "--runs", "5", "--warmup", "1", "--batch", "2"]) == 0
    result = json.loads((tmp_path / "pkg.trt" / "result_model_fp16.json").read_text())
    assert result["label"] == "measured-on-device" and result["latency_ms"]["n"] == 5
    assert result["throughput"]["batch"] == 2 and result["input_shape"] == [1, 8, 8]
    acc = result["accuracy"]
    assert acc["n"] == 6 and acc["accuracy"] == pytest.approx(0.5)
    assert acc["vs_expected"]["top1_agreement"] == 1.0 and acc["vs_expected"]["max_abs_prob_diff"] < 1e-6
    assert "max_abs_prob_diff" in capsys.readouterr().out
