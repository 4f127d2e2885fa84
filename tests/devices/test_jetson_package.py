"""Jetson packages: every file the instructions name is shipped and listed, the test set carries no
pickle, verification never runs the package's own code, and predict.py picks a verified engine or says
it falls back to ONNX Runtime (the engine runner mocked: no GPU here)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tests.export import _pkg

JETSON = "jetson-orin-nano"


def _ctx(n: int = 10):
    """The slice of deploy's context testset_npz reads: a test split, class names, the preprocessing."""
    from toolchain.data import Preprocess

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, _pkg.IMG_SIZE, _pkg.IMG_SIZE, 1), dtype=np.uint8)
    split = SimpleNamespace(images=images, labels=np.arange(n) % 2)
    ds = SimpleNamespace(class_names=["normal", "pneumonia"], split=lambda name: split)
    return SimpleNamespace(ds=ds, preprocess=Preprocess.from_dict(_pkg.PRE))


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    from devices.deploy.jetson import jetson_scripts
    from devices.profiles import load_profile
    from export.package import PackageSpec, Sample, build_package, package_preprocess

    root = tmp_path_factory.mktemp("jetson")
    _, files = _pkg.checkpoint_and_exports(root)
    images = _pkg.raw_images(root / "raw")
    probs = _pkg.toolchain_probabilities(files["onnx"], images)
    scripts = jetson_scripts(load_profile(JETSON), "fp16", files["onnx"], ctx=_ctx())
    spec = PackageSpec(name="tiny-jetson", runtime="tensorrt", model_files={"onnx": files["onnx"]},
                       class_names=["normal", "pneumonia"], preprocess=package_preprocess(_pkg.PRE, _pkg.LOAD_SIZE),
                       samples=[Sample(p.stem, None, "normal", list(q), source=p) for p, q in zip(images, probs,
                                                                                                   strict=True)],
                       model_card="# tiny\n", scripts=scripts)
    report: dict = {}
    pkg = build_package(spec, root / "dist", report=report)[0]
    return {"pkg": pkg, "onnx": files["onnx"], "images": images, "report": report, "scripts": scripts}


def _named_files(text: str) -> set[str]:
    """File names an instruction text puts in backticks (commands reduced to their file)."""
    names = set()
    for span in re.findall(r"`([^`]+)`", text):
        for word in span.split():
            word = word.lstrip("./")
            if re.fullmatch(r"[\w./-]+\.(sh|py|npz|json|onnx|md)", word):
                names.add(word)
    return names


def test_instructions_name_only_shipped_and_listed_files(made):
    pkg = made["pkg"]
    manifest = json.loads((pkg / "manifest.json").read_text())
    text = (pkg / "JETSON.md").read_text()
    named = _named_files(text)
    assert {"build_engine.sh", "run_trt.sh", "run_trt.py", "trt_runner.py", "testset.npz", "predict.py"} <= named
    beside = {"engine.json"}  # written by build_engine.sh beside the package, never inside it
    for name in named - beside:
        assert (pkg / name).is_file(), f"JETSON.md names {name}, which the package does not ship"
        assert name in manifest["files"] or name == "manifest.json"
    for script in ("build_engine.sh", "run_trt.sh"):  # the scripts' own references to package files
        for rel in re.findall(r'\$PKG/([\w./-]+)', (pkg / script).read_text()):
            assert (pkg / rel).is_file() and rel in manifest["files"], f"{script} names missing {rel}"
    assert "INT8 is not offered" in text and made["report"]["ok"]
    from devices.deploy.manifest import RUNTIME_LINES  # the model card's line for a Jetson package

    for name in _named_files(RUNTIME_LINES["tensorrt"]):
        assert (pkg / name).is_file() and name in manifest["files"], f"MODEL_CARD names missing {name}"


def test_testset_is_plain_arrays_with_ort_fp32_probabilities(made):
    from export.package import export_probabilities

    d = np.load(made["pkg"] / "testset.npz", allow_pickle=False)  # raises on any object array
    assert d["x"].dtype == np.float32 and d["x"].shape[1:] == (1, _pkg.IMG_SIZE, _pkg.IMG_SIZE)
    assert len(d["y"]) == len(d["x"]) == len(d["probabilities"]) and set(d["y"]) == {0, 1}
    assert [str(c) for c in d["class_names"]] == ["normal", "pneumonia"]
    np.testing.assert_allclose(d["probabilities"], export_probabilities(made["onnx"], "fp32", d["x"]), atol=1e-6)


def test_build_engine_records_the_onnx_checksum(made, tmp_path, monkeypatch):
    """The record step of build_engine.sh, run as shipped after a (fake) trtexec, gives a record
    trt_runner accepts for this package, and one it refuses once the ONNX file differs."""
    import subprocess
    import sys

    pkg = made["pkg"]
    text = (pkg / "build_engine.sh").read_text()
    assert "predict.py\" --check" in text and "--fp16" in text and "rm -f engine.json" in text
    assert 'OUT_DIR="${MEDPRUNE_ENGINE_DIR:-$PKG.trt}"' in text  # the folder trt_runner.engine_dir reads
    assert 'run_trt.py" --package "$PKG"' in (pkg / "run_trt.sh").read_text()
    line = next(ln for ln in text.splitlines() if "--record" in ln)
    engine = line.split()[-2]
    assert f"--saveEngine={engine}" in text
    out = tmp_path / "engines"
    out.mkdir()
    (out / engine).write_bytes(b"what trtexec wrote")
    onnx = next((pkg / "model").glob("*.onnx"))
    subprocess.run([sys.executable, "-I", str(pkg / "trt_runner.py"), "--record", str(onnx), engine, "fp16"],
                   cwd=out, check=True, capture_output=True)
    monkeypatch.setenv("MEDPRUNE_ENGINE_DIR", str(out))
    trt = _runner_module()
    manifest = json.loads((pkg / "manifest.json").read_text())
    assert trt.check_engine(manifest, pkg)[0] == out / engine
    other = dict(manifest, files={**manifest["files"], f"model/{onnx.name}": "0" * 64})
    assert trt.check_engine(other, pkg)[0] is None


def test_verify_refuses_an_edited_trt_runner_without_running_it(made, tmp_path):
    import shutil

    from export.package_archive import PackageError
    from export.package_verify import verify_package

    pkg = tmp_path / "edited"
    shutil.copytree(made["pkg"], pkg)
    marker = tmp_path / "ran"
    (pkg / "trt_runner.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    _pkg.rehash(pkg)  # a forger recomputes the checksums
    with pytest.raises(PackageError, match="trt_runner.py differs"):
        verify_package(pkg)
    assert not marker.exists()


def _runner_module():
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "export" / "templates" / "trt_runner.py"
    spec = importlib.util.spec_from_file_location("trt_runner_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _record(engine_dir: Path, pkg: Path, onnx_sha: str | None = None) -> Path:
    manifest = json.loads((pkg / "manifest.json").read_text())
    engine_dir.mkdir(parents=True, exist_ok=True)
    engine = engine_dir / "model_fp16.plan"
    engine.write_bytes(b"not a real engine")
    rec = {"engine": engine.name, "engine_sha256": hashlib.sha256(engine.read_bytes()).hexdigest(),
           "onnx_sha256": onnx_sha or manifest["files"][manifest["model"]["files"]["onnx"]], "precision": "fp16"}
    (engine_dir / "engine.json").write_text(json.dumps(rec))
    return engine


class _FakeEngine:
    def __init__(self, path):
        self.path = path

    def run(self, x):
        return np.tile([[0.0, 5.0]], (len(x), 1))


def test_select_uses_only_an_engine_built_from_this_onnx(made, tmp_path, monkeypatch, capsys):
    trt = _runner_module()
    monkeypatch.setattr(trt, "Engine", _FakeEngine)
    pkg = made["pkg"]
    manifest = json.loads((pkg / "manifest.json").read_text())
    monkeypatch.setenv("MEDPRUNE_ENGINE_DIR", str(tmp_path / "engines"))
    assert trt.select(manifest, pkg) == ("onnxruntime", None)
    err = capsys.readouterr().err
    assert "FALLBACK to ONNX Runtime" in err and "no TensorRT engine record" in err
    engine = _record(tmp_path / "engines", pkg)
    runtime, run = trt.select(manifest, pkg)
    assert runtime == "tensorrt" and run(np.zeros((2, 1, 16, 16), np.float32)).shape == (2, 2)
    assert "TensorRT engine" in capsys.readouterr().err
    engine.write_bytes(b"swapped engine")  # changed after build_engine.sh recorded it
    assert trt.select(manifest, pkg)[0] == "onnxruntime" and "changed" in capsys.readouterr().err
    _record(tmp_path / "engines", pkg, onnx_sha="0" * 64)  # built from another ONNX file
    assert trt.select(manifest, pkg)[0] == "onnxruntime" and "another ONNX" in capsys.readouterr().err

    def broken(path):
        raise ImportError("No module named 'tensorrt'")

    _record(tmp_path / "engines", pkg)
    monkeypatch.setattr(trt, "Engine", broken)
    assert trt.select(manifest, pkg)[0] == "onnxruntime" and "cannot load" in capsys.readouterr().err


def test_predict_runner_takes_the_engine_trt_runner_selects(made, tmp_path, monkeypatch):
    """predict.py delegates a tensorrt package to trt_runner.select (mocked here) and runs what it returns."""
    from export.package_verify import image_input_template, predict_template

    tpl = predict_template()
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "trt_runner.py").write_text(
        "import numpy as np\n"
        "def select(manifest, root):\n"
        "    return 'tensorrt', lambda x: np.tile([[0.0, 5.0]], (len(x), 1))\n")
    monkeypatch.setattr(tpl, "HERE", fake)
    manifest = json.loads((made["pkg"] / "manifest.json").read_text())
    runner = tpl.Runner(manifest, root=made["pkg"])
    assert runner.runtime == "tensorrt"
    probs, _ = tpl.classify(manifest, runner, made["images"][0], image_input_template())
    assert probs.argmax() == 1 and probs[1] > 0.99
    (fake / "trt_runner.py").write_text("def select(manifest, root):\n    return 'onnxruntime', None\n")
    assert tpl.Runner(manifest, root=made["pkg"]).runtime == "onnxruntime"


def test_shipped_predict_says_when_it_falls_back(made, tmp_path):
    res = _pkg.run_predict(made["pkg"], made["images"][0], "--json")
    assert res.returncode == 0, res.stderr
    assert "FALLBACK to ONNX Runtime" in res.stderr and "build_engine.sh" in res.stderr
    probs = np.array(list(json.loads(res.stdout)[0]["probabilities"].values()))
    np.testing.assert_allclose(probs, _pkg.toolchain_probabilities(made["onnx"], made["images"][:1])[0], atol=1e-5)
