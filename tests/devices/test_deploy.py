"""`medprune deploy` end to end on a tiny checkpoint: package contents, verification, reproducibility,
standalone predict.py (no torch) agreeing with the toolchain, the Jetson variant and resuming."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from tests.devices._deploy_tiny import deploy_args, tiny_setup
from tests.devices._deploy_tiny import deploy_json as _deploy
from toolchain.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
BLOCKED = ("torch", "torchvision", "timm", "toolchain", "export", "devices", "benchmarks", "captum", "zennit",
           "torch_pruning", "tests")


def _run(argv, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_setup(tmp_path_factory)


@pytest.fixture(scope="module")
def deployed(tiny, tmp_path_factory):
    """One successful deploy (defaults: lrp, clustering, ratio auto, cpu/onnxruntime fp32)."""
    root = tmp_path_factory.mktemp("deploy_ok")
    summary = _deploy(deploy_args(tiny, root / "dist", root / "cache"))
    return root, summary


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _walk(node, keys=()):
    if isinstance(node, dict):
        for k, v in node.items():
            yield (*keys, k)
            yield from _walk(v, (*keys, k))
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v, keys)


def test_package_layout_and_manifest(deployed):
    _, summary = deployed
    pkg, tarball = Path(summary["package"]), Path(summary["tarball"])
    assert tarball.is_file() and tarball.name == f"{pkg.name}.tar.gz"
    for rel in ("manifest.json", "MODEL_CARD.md", "predict.py", "model/model_onnx_fp32.onnx",
                "reports/bench_cpu.json", "reports/bench_cpu.md"):
        assert (pkg / rel).is_file(), rel
    m = json.loads((pkg / "manifest.json").read_text())
    on_disk = {str(p.relative_to(pkg)) for p in pkg.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(m["files"]) == on_disk and all(m["files"][r] == _sha(pkg / r) for r in on_disk)
    assert m["input"]["shape"] == [None, 1, 16, 16] and m["preprocess"]["img_size"] == 16
    assert m["class_names"] == ["class_0", "class_1"]
    for which in ("dense", "pruned"):
        for cls in m["class_names"]:
            assert {"sensitivity", "specificity"} <= set(m["metrics"][which]["per_class"][cls])
    assert m["metrics"]["gates"]["passed"] and m["selection"]["ratio"] == m["pruning"]["ratio"]
    assert m["pruning"]["criterion"] == "lrp" and m["pruning"]["sampling"] == "clustering"
    assert 0 < m["pruning"]["ratio"] < 1 and m["pruning"]["compare"]["params"]["pruned"] < \
        m["pruning"]["compare"]["params"]["dense"]
    assert m["explanation_fidelity"]["images"] == 4 and "spearman_mean" in m["explanation_fidelity"]
    assert len(m["dataset"]["fingerprint"]) == 64 and m["seeds"]["sampling"] == 0
    assert m["medprune"]["version"] and "git_commit" in m["medprune"]
    assert m["export_verification"]["passed"]
    # measured timings stay out of the manifest (they live in reports/)
    keys = {k[-1] for k in _walk(m)}
    assert not keys & {"latency_ms", "throughput", "peak_rss_mb", "latency"}
    card = (pkg / "MODEL_CARD.md").read_text()
    assert "not a certified medical device" in card and "sensitivity class_1" in card
    # data without a description gets no borrowed wording (no chest X-ray text on tinymnist)
    assert "No description of this dataset was given" in card and m["dataset"]["description"]["source"] is None
    assert not [w for w in ("chest", "pneumonia", "x-ray", "paediatric") if w in card.lower()]
    assert set(summary["stages"]) >= {"train", "reference", "importance", "ratio", "prune", "calibrate", "export",
                                      "test-report", "fidelity", "bench", "package"}
    cal = m["calibration"]
    assert cal["fit_split"] == "val" and cal["temperature"] > 0 and cal["nll_after"] <= cal["nll_before"] + 1e-9
    # a temperature never changes a prediction
    for key in ("accuracy", "balanced_accuracy", "auc"):
        assert m["metrics"]["deployed"][key] == pytest.approx(m["metrics"]["pruned"][key])
    assert f"temperature {cal['temperature']:.3f}" in card


def test_exported_model_carries_the_temperature(deployed):
    """The package's ONNX logits are the pruned model's logits divided by the fitted temperature."""
    import onnxruntime as ort
    import torch

    from toolchain.models import load_checkpoint

    root, summary = deployed
    pkg = Path(summary["package"])
    m = json.loads((pkg / "manifest.json").read_text())
    pruned_dir = next((root / "cache").glob("stages/prune-*"))
    pruned, _ = load_checkpoint(pruned_dir / "pruned.safetensors")
    x = np.random.default_rng(0).normal(size=(3, 1, 16, 16)).astype(np.float32)
    sess = ort.InferenceSession(str(pkg / "model/model_onnx_fp32.onnx"), providers=["CPUExecutionProvider"])
    onnx_logits = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        expected = pruned.eval()(torch.from_numpy(x)).numpy() / m["calibration"]["temperature"]
    np.testing.assert_allclose(onnx_logits, expected, rtol=1e-4, atol=1e-5)


def test_verify_package_cli(deployed, capsys):
    _, summary = deployed
    for target in (summary["tarball"], summary["package"]):
        code, out, err = _run(["verify-package", target, "--json"], capsys)
        assert code == 0, err
        report = json.loads(out)
        assert report["ok"] and report["top1_agreement"] == report["samples"] == 4


def test_rerun_resumes_from_cache(deployed, tiny):
    root, first = deployed
    again = _deploy(deploy_args(tiny, root / "dist", root / "cache"))
    cached = {k: v.get("cached") for k, v in again["stages"].items() if "cached" in v and k != "package"}
    assert cached and all(cached.values()), cached
    assert again["package"] == first["package"]


def test_same_seed_same_package(deployed, tiny, tmp_path):
    """A fresh cache (every stage recomputed) and no bench cache: identical files except reports/*."""
    _, first = deployed
    second = _deploy(deploy_args(tiny, tmp_path / "dist", tmp_path / "cache", "--no-bench-cache"))
    a, b = Path(first["package"]), Path(second["package"])
    files_a = {str(p.relative_to(a)) for p in a.rglob("*") if p.is_file()}
    assert files_a == {str(p.relative_to(b)) for p in b.rglob("*") if p.is_file()}
    for rel in sorted(files_a - {"manifest.json"}):
        if not rel.startswith("reports/"):
            assert _sha(a / rel) == _sha(b / rel), rel
    ma, mb = (json.loads((p / "manifest.json").read_text()) for p in (a, b))
    for m in (ma, mb):
        m.pop("manifest_sha256")
        m["files"] = {k: v for k, v in m["files"].items() if not k.startswith("reports/")}
    assert ma == mb


def _blocked_predict(pkg: Path, *args: str) -> subprocess.CompletedProcess:
    """predict.py in a fresh interpreter where torch, timm and medprune itself cannot be imported."""
    predict = str(pkg / "predict.py")
    code = (
        "import runpy, sys\n"
        f"for name in {BLOCKED!r}:\n"
        "    sys.modules[name] = None\n"
        f"sys.argv = [{predict!r}, *{list(args)!r}]\n"
        f"runpy.run_path({predict!r}, run_name='__main__')\n"
    )
    return subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, cwd=pkg.parent)


def _extract(tarball: Path, dest: Path) -> Path:
    from export.package import safe_extract

    return safe_extract(tarball, dest)


def test_predict_without_torch_matches_toolchain(deployed, tmp_path):
    from PIL import Image

    from export.package import reference_predict

    _, summary = deployed
    pkg = _extract(Path(summary["tarball"]), tmp_path / "x")
    # a larger RGB image: predict.py must resize and match channels exactly like the toolchain
    rng = np.random.default_rng(1)
    big = tmp_path / "big.png"
    Image.fromarray(rng.integers(0, 256, (37, 29, 3), dtype=np.uint8)).save(big)
    sample = next((pkg / "samples").glob("*.png"))
    res = _blocked_predict(pkg, str(big), str(sample), "--json")
    assert res.returncode == 0, res.stderr
    got = np.array([list(r["probabilities"].values()) for r in json.loads(res.stdout)])
    want = reference_predict(summary["pruned_checkpoint"], [big, sample])
    assert (got.argmax(1) == want.argmax(1)).all()
    assert np.abs(got - want).max() < 1e-4
    # predict.py --check and its refusal of a modified file, still without torch
    assert _blocked_predict(pkg, "--check").returncode == 0
    (pkg / "MODEL_CARD.md").write_text("edited\n")
    bad = _blocked_predict(pkg, str(sample))
    assert bad.returncode == 2 and "checksum mismatch" in bad.stderr and "Traceback" not in bad.stderr


def test_predict_on_a_shared_chest_xray(deployed, tmp_path, shared_data):
    from export.package import reference_predict

    xrays = sorted((shared_data / "chest_xray_224" / "test" / "PNEUMONIA").glob("*.jpeg"))[:1]
    if not xrays:
        pytest.skip("chest_xray_224 not in the shared data")
    _, summary = deployed
    pkg = _extract(Path(summary["tarball"]), tmp_path / "x")
    res = _blocked_predict(pkg, str(xrays[0]), "--json")
    assert res.returncode == 0, res.stderr
    got = np.array(list(json.loads(res.stdout)[0]["probabilities"].values()))
    want = reference_predict(summary["pruned_checkpoint"], xrays)[0]
    assert got.argmax() == want.argmax() and np.abs(got - want).max() < 1e-4


def test_jetson_package(tiny, deployed, capsys):
    root, _ = deployed
    summary = _deploy(deploy_args(tiny, root / "dist_jetson", root / "cache", "--target", "jetson",
                                  "--ratio", "0.25", "--fidelity-images", "0", "--no-calibrate"))
    pkg = Path(summary["package"])
    assert "calibrate" not in summary["stages"] and summary["calibration"]["temperature"] == 1.0
    build, run = (pkg / "build_engine.sh").read_text(), (pkg / "run_trt.sh").read_text()
    assert "trtexec --onnx=" in build and "--saveEngine=" in build and "--fp16" in build
    assert "predict.py\" --check" in build and "trtexec --loadEngine=" in run
    m = json.loads((pkg / "manifest.json").read_text())
    assert m["model"]["runtime"] == "tensorrt" and m["precision"] == "fp16" and m["exported_precision"] == "fp32"
    assert m["benchmark"]["kind"] == "predicted"
    bench = json.loads((pkg / "reports" / "bench_jetson-orin-nano.json").read_text())
    assert bench["predictions"] and bench["predictions"][0]["latency_ms"] > 0
    # the note points at the package's own instructions, never at deploy's renamed staging folder
    assert any("JETSON.md" in n for n in bench["notes"]) and not any(".tmp" in n or "copy " in n
                                                                     for n in bench["notes"])
    assert (pkg / "JETSON.md").is_file() and (pkg / "testset.npz").is_file()
    with tarfile.open(summary["tarball"]) as tar:
        modes = {Path(m.name).name: m.mode for m in tar.getmembers()}
    assert modes["build_engine.sh"] & 0o111 and modes["run_trt.sh"] & 0o111
    code, _, err = _run(["verify-package", summary["tarball"]], capsys)
    assert code == 0, err


def test_group_granularity_with_auto_ratio(tiny, deployed, capsys):
    """Group masks through the lossless search (one graph analysis for all ratios) to a verified package."""
    root, _ = deployed
    summary = _deploy(deploy_args(tiny, root / "dist_group", root / "cache", "--granularity", "group",
                                  "--fidelity-images", "0", "--no-calibrate"))
    m = json.loads((Path(summary["package"]) / "manifest.json").read_text())
    assert m["pruning"]["granularity"] == "group" and m["metrics"]["gates"]["passed"]
    assert m["pruning"]["removal"]["units"]["kept_masked"] == 0  # group masks are removed exactly
    assert m["pruning"]["parity_masked_vs_removed"] <= 1e-4
    code, _, err = _run(["verify-package", summary["tarball"]], capsys)
    assert code == 0, err


def test_predict_reads_dicom_and_rejects_bad_images(deployed, tmp_path):
    pytest.importorskip("pydicom")
    from PIL import Image
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    _, summary = deployed
    pkg = _extract(Path(summary["tarball"]), tmp_path / "x")
    raw = (np.arange(20 * 24, dtype=np.uint16).reshape(20, 24) * 7) % 4096  # 12-bit values
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 20, 24, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = raw.tobytes()
    dcm = tmp_path / "image.dcm"
    ds.save_as(dcm, enforce_file_format=True)
    # the same image as the 8-bit PNG predict.py's DICOM reader rescales it to
    png = tmp_path / "image.png"
    scaled = (raw - raw.min()) / (raw.max() - raw.min()) * 255.0
    Image.fromarray(np.round(scaled).astype(np.uint8)).save(png)
    res = _blocked_predict(pkg, str(dcm), str(png), "--json")
    assert res.returncode == 0, res.stderr
    a, b = (list(r["probabilities"].values()) for r in json.loads(res.stdout))
    assert np.allclose(a, b, atol=1e-6)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    res = _blocked_predict(pkg, str(bad))
    assert res.returncode == 2 and "cannot read image" in res.stderr and "Traceback" not in res.stderr
    res = _blocked_predict(pkg, str(tmp_path / "missing.png"))
    assert res.returncode == 2 and "image not found" in res.stderr
