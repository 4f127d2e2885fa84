"""Bad inputs to `medprune deploy` / `verify-package`: each a one-line error, exit != 0, and no package."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import write_tiny_npz
from tests.devices._deploy_tiny import deploy_args, tiny_setup
from toolchain.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_setup(tmp_path_factory)


def _fails(argv, capsys, code: int | None = None) -> str:
    """Run the CLI, assert a one-line error without traceback and a non-zero exit; return the line."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("medprune: error:")]
    assert exc.value.code not in (0, None), err
    if code is not None:
        assert exc.value.code == code, err
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _no_package(out: Path) -> None:
    leftovers = [p.name for p in out.iterdir()] if out.exists() else []
    assert not leftovers, leftovers


def _args(tiny, tmp_path, *extra) -> list[str]:
    return deploy_args(tiny, tmp_path / "dist", tmp_path / "cache", *extra)


# flags rejected before any data or model is read
@pytest.mark.parametrize("extra,needle", [
    (["--model", "no_such_net"], "unknown model"),
    (["--target", "toaster"], "'toaster' is not one of 'cpu'"),  # choices from the profiles
    (["--ratio", "1.5"], "ratio must be in [0, 1)"),
    (["--ratio", "-0.1"], "ratio must be in [0, 1)"),
    (["--ratio", "lots"], "ratio must be 'auto' or a number"),
    (["--criterion", "vibes"], "'vibes' is not one of 'dlb'"),  # choices from the criterion registry
    (["--sampling", "psychic"], "'psychic' is not one of 'confidence'"),
    (["--granularity", "atom"], "'atom' is not one of 'neuron', 'group'"),
    (["--precision", "fp8"], "'fp8' is not one of 'default', 'fp32'"),
    (["--target", "jetson", "--precision", "int8"], "int8 is not offered"),
    (["--tolerance", "-1"], "tolerance must be >= 0"),
    (["--sens-tolerance", "-0.5"], "sens-tolerance must be >= 0"),
    (["--n-per-class", "0"], "n-per-class must be >= 1"),
    (["--search-margin", "0"], "search-margin in (0, 1]"),
    (["--search-margin", "1.5"], "search-margin in (0, 1]"),
    (["--bench-runs", "0"], "bench-runs"),
    (["--model", "vgg19"], "does not match the checkpoint"),
    (["--img-size", "32"], "does not match the checkpoint"),
    (["--name", "../escape"], "plain file name"),
    (["--n-per-clas", "3"], "No such option"),
])
def test_bad_flags(tiny, tmp_path, capsys, extra, needle):
    line = _fails(_args(tiny, tmp_path, *extra), capsys)
    assert needle in line
    _no_package(tmp_path / "dist")


def test_missing_data(tmp_path, capsys):
    line = _fails(["deploy", "--model", "test_resnet", "--img-size", "16", "--data", str(tmp_path / "nope.npz"),
                   "--out", str(tmp_path / "dist"), "--cache", str(tmp_path / "cache")], capsys)
    assert "nope.npz" in line
    _no_package(tmp_path / "dist")


def test_out_is_a_file(tiny, tmp_path, capsys):
    (tmp_path / "dist").write_text("not a folder")
    assert "not a folder" in _fails(_args(tiny, tmp_path), capsys)


def _copy_ckpt(tiny, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for suffix in (".safetensors", ".json"):
        shutil.copyfile(tiny.ckpt.with_suffix(suffix), dest / f"model{suffix}")
    return dest / "model.safetensors"


def _with_ckpt(tiny, tmp_path, ckpt: Path, *extra) -> list[str]:
    argv = _args(tiny, tmp_path, *extra)
    argv[argv.index("--checkpoint") + 1] = str(ckpt)
    return argv


def test_checkpoint_not_found(tiny, tmp_path, capsys):
    assert "checkpoint not found" in _fails(_with_ckpt(tiny, tmp_path, tmp_path / "none.safetensors"), capsys)


def test_corrupt_checkpoint(tiny, tmp_path, capsys):
    ckpt = _copy_ckpt(tiny, tmp_path / "ck")
    data = bytearray(ckpt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    ckpt.write_bytes(bytes(data))
    assert "sha256 differs" in _fails(_with_ckpt(tiny, tmp_path, ckpt), capsys)
    _no_package(tmp_path / "dist")


def test_truncated_checkpoint_with_matching_sidecar(tiny, tmp_path, capsys):
    import hashlib

    ckpt = _copy_ckpt(tiny, tmp_path / "ck")
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    side = json.loads(ckpt.with_suffix(".json").read_text())
    side["weights_sha256"] = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    ckpt.with_suffix(".json").write_text(json.dumps(side))
    assert "cannot read" in _fails(_with_ckpt(tiny, tmp_path, ckpt), capsys)


def test_nan_weights(tiny, tmp_path, capsys):
    import hashlib

    from safetensors.torch import load_file, save_file

    ckpt = _copy_ckpt(tiny, tmp_path / "ck")
    state = load_file(str(ckpt))
    key = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
    state[key][0] = float("nan")
    save_file(state, str(ckpt))
    side = json.loads(ckpt.with_suffix(".json").read_text())
    side["weights_sha256"] = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    ckpt.with_suffix(".json").write_text(json.dumps(side))
    assert "NaN" in _fails(_with_ckpt(tiny, tmp_path, ckpt), capsys)
    _no_package(tmp_path / "dist")


def test_pickle_checkpoint(tiny, tmp_path, capsys):
    import torch

    bad = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(2)}, bad)
    assert "never unpickles" in _fails(_with_ckpt(tiny, tmp_path, bad), capsys)


def test_already_pruned_checkpoint(tiny, tmp_path, capsys):
    ckpt = _copy_ckpt(tiny, tmp_path / "ck")
    side = json.loads(ckpt.with_suffix(".json").read_text())
    side["meta"]["pruning"] = {"recipe": {"ratio": 0.5}, "module_attrs": {}}
    ckpt.with_suffix(".json").write_text(json.dumps(side))
    assert "already pruned" in _fails(_with_ckpt(tiny, tmp_path, ckpt), capsys)


def test_data_with_other_classes(tiny, tmp_path, capsys):
    npz = write_tiny_npz(tmp_path / "three.npz", n=(24, 9, 9), classes=3)
    argv = _args(tiny, tmp_path)
    argv[argv.index("--data") + 1] = str(npz)
    assert "classes" in _fails(argv, capsys)
    _no_package(tmp_path / "dist")


def test_n_per_class_larger_than_any_class(tiny, tmp_path, capsys):
    argv = _args(tiny, tmp_path)
    argv[argv.index("--n-per-class") + 1] = "500"
    assert "larger than every class" in _fails(argv, capsys)
    stages = tmp_path / "cache" / "stages"
    assert not stages.exists() or not any(stages.iterdir())
    _no_package(tmp_path / "dist")


def test_gate_failure_writes_no_package(tiny, tmp_path, capsys):
    line = _fails(_args(tiny, tmp_path, "--ratio", "0.95", "--tolerance", "0", "--sens-tolerance", "0",
                        "--criterion", "random", "--sampling", "random"), capsys, code=3)
    assert "clinical gate" in line and "no package written" in line
    _no_package(tmp_path / "dist")


def test_interrupted_run_leaves_nothing(tiny, tmp_path, capsys, monkeypatch):
    import toolchain.prune_eval as pe

    def interrupted(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(pe, "score_units", interrupted)
    line = _fails(_args(tiny, tmp_path, "--sampling", "random"), capsys, code=130)
    assert "interrupted" in line
    stages = sorted(p.name for p in (tmp_path / "cache" / "stages").iterdir())
    assert len(stages) == 1 and stages[0].startswith("reference-"), stages  # finished stages only, no temp
    _no_package(tmp_path / "dist")


def test_interrupt_while_packaging_keeps_old_state(tiny, tmp_path, capsys, monkeypatch):
    import export.package as pkg

    def interrupted(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(pkg, "write_tarball", interrupted)
    _fails(_args(tiny, tmp_path, "--ratio", "0.05", "--criterion", "magnitude", "--sampling", "random",
                 "--fidelity-images", "0", "--tolerance", "100", "--sens-tolerance", "100"), capsys, code=130)
    _no_package(tmp_path / "dist")


# ---- verify-package ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_package(tmp_path_factory):
    """A minimal real package (not a full deploy) for the verify-package error cases."""
    import warnings

    import torch

    from export.package import PackageSpec, Sample, build_package

    root = tmp_path_factory.mktemp("verify_errors")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
    onnx_path = root / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 1, 8, 8),), str(onnx_path), dynamo=False, input_names=["image"],
                          dynamic_axes={"image": {0: "batch"}})
    pixels = np.arange(64, dtype=np.uint8).reshape(8, 8)
    with torch.no_grad():
        x = torch.as_tensor(pixels, dtype=torch.float32)[None, None] / 255.0
        probs = torch.softmax(model(x).double(), 1)[0].tolist()
    spec = PackageSpec(name="p", runtime="onnxruntime", model_files={"onnx": onnx_path}, class_names=["a", "b"],
                       preprocess={"img_size": 8, "in_chans": 1, "mean": [0.0], "std": [1.0]},
                       samples=[Sample("s", pixels, "a", probs)])
    return build_package(spec, root / "dist")


def _package_copy(small_package, tmp_path: Path) -> Path:
    """A writable copy of the built package folder, to tamper with."""
    copy = tmp_path / "p"
    shutil.copytree(small_package[0], copy)
    return copy


def test_tampered_package(small_package, tmp_path, capsys):
    copy = _package_copy(small_package, tmp_path)
    onnx = next((copy / "model").glob("*.onnx"))
    onnx.write_bytes(onnx.read_bytes() + b"\0")
    assert "checksum mismatch" in _fails(["verify-package", str(copy)], capsys)


def test_tampered_manifest(small_package, tmp_path, capsys):
    copy = _package_copy(small_package, tmp_path)
    m = json.loads((copy / "manifest.json").read_text())
    m["class_names"] = ["b", "a"]
    (copy / "manifest.json").write_text(json.dumps(m))
    assert "manifest.json was modified" in _fails(["verify-package", str(copy)], capsys)


def test_wrong_sample_probabilities_fail_the_smoke_test(small_package, tmp_path, capsys):
    from export.package import canonical_sha256

    copy = _package_copy(small_package, tmp_path)
    m = json.loads((copy / "manifest.json").read_text())
    m["samples"][0]["probabilities"] = m["samples"][0]["probabilities"][::-1]
    m["manifest_sha256"] = canonical_sha256(m)  # a consistent but wrong manifest: the smoke test catches it
    (copy / "manifest.json").write_text(json.dumps(m))
    assert "smoke test failed" in _fails(["verify-package", str(copy)], capsys, code=3)


def test_path_traversal_tarball(tmp_path, capsys):
    bad = tmp_path / "evil.tar.gz"
    with tarfile.open(bad, "w:gz") as tar:
        info = tarfile.TarInfo("pkg/../../escape.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    assert "refusing unsafe path" in _fails(["verify-package", str(bad)], capsys)
    assert not (tmp_path.parent / "escape.txt").exists()


def test_absolute_path_tarball(tmp_path, capsys):
    bad = tmp_path / "abs.tar.gz"
    with tarfile.open(bad, "w:gz") as tar:
        info = tarfile.TarInfo("/tmp/medprune-abs-escape.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    assert "refusing unsafe path" in _fails(["verify-package", str(bad)], capsys)


def test_not_a_tarball(tmp_path, capsys):
    bad = tmp_path / "junk.tar.gz"
    bad.write_bytes(b"definitely not gzip")
    assert "not a readable" in _fails(["verify-package", str(bad)], capsys)


def test_missing_package(tmp_path, capsys):
    assert "package not found" in _fails(["verify-package", str(tmp_path / "nothing.tar.gz")], capsys)


def test_pickle_in_package_is_refused(tmp_path):
    import torch

    from export.package import PackageError, PackageSpec, build_package

    pt = tmp_path / "model.onnx"  # a torch.save file in disguise
    torch.save({"w": torch.zeros(1)}, pt)
    spec = PackageSpec(name="bad", runtime="onnxruntime", model_files={"onnx": pt}, class_names=["a", "b"],
                       preprocess={"img_size": 8, "in_chans": 1, "mean": [0.0], "std": [1.0]})
    with pytest.raises(PackageError, match="pickle"):
        build_package(spec, tmp_path / "dist")
    _no_package(tmp_path / "dist")
