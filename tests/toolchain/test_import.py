"""`medprune import`: timm and torchvision state dicts → checkpoint → `medprune prune`; refusals by name."""

from __future__ import annotations

import json

import pytest
import torch

from tests.toolchain._byom_data import one_error_line, run_cli, write_png_folder

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_png_folder(tmp_path_factory.mktemp("byom") / "xray", per_class=10, size=32)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDPRUNE_CACHE", str(tmp_path / "cache"))


def _import_and_prune(arch, weights, folder, tmp_path, capsys, in_chans, extra=()):
    out = tmp_path / "imported"
    code, stdout, err = run_cli(["import", "--arch", arch, "--weights", weights, "--class-names", "normal,pneumonia",
                              "--img-size", 32, "--in-chans", in_chans, "--data", folder, "--out", out,
                              "--device", "cpu", *extra], capsys)
    assert code == 0, err
    assert f"checkpoint: {out / 'model.safetensors'}" in stdout
    side = json.loads((out / "model.json").read_text())
    meta = side["meta"]
    assert meta["class_names"] == ["normal", "pneumonia"]
    assert meta["dataset"]["source_class_names"] == ["0", "1"]
    assert meta["imported"]["weights_file"] == weights.name
    assert set(meta["metrics"]) == {"val", "test"} and meta["input_profile"]["channels"] == 1
    js = tmp_path / "prune.json"
    code, stdout, err = run_cli(["prune", "-c", out, "--criterion", "lrp", "--sampling", "random",
                              "--n-per-class", 2, "--ratios", "0.3", "--json", js, "--device", "cpu", "-q"], capsys)
    assert code == 0, err
    doc = json.loads(js.read_text())
    assert doc["ratios"]["0.30"]["mask_report"]["units_pruned"] > 0
    assert doc["arch"] == meta["arch"]
    return meta


def test_timm_state_dict_imports_and_prunes(folder, tmp_path, capsys):
    import timm

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=2, in_chans=1)
    weights = tmp_path / "mine.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, weights)
    meta = _import_and_prune("test_resnet", weights, folder, tmp_path, capsys, 1,
                             ("--mean", "0.3", "--std", "0.2"))
    assert meta["preprocess"]["mean"] == [0.3] and meta["preprocess"]["std"] == [0.2]
    assert any("state_dict" in n for n in meta["imported"]["notes"])
    assert any("module." in n for n in meta["imported"]["notes"])


@pytest.mark.slow  # an 11M-parameter ResNet through LRP, removal and ONNX export (~30 s of CPU)
def test_torchvision_safetensors_imports_prunes_and_exports(folder, tmp_path, capsys):
    from safetensors.torch import save_file

    from toolchain.models import build_model, load_checkpoint

    model = build_model("torchvision:resnet18", 2, 1, 32)
    weights = tmp_path / "tv.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    meta = _import_and_prune("torchvision:resnet18", weights, folder, tmp_path, capsys, 1)
    assert meta["arch"] == "torchvision:resnet18"
    reloaded, _ = load_checkpoint(tmp_path / "imported")
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(reloaded(x), model.eval()(x), atol=1e-5)
    # export reads the recorded data too, and its parity gate passes on the torchvision graph
    code, stdout, err = run_cli(["export", "-c", tmp_path / "imported", "-o", tmp_path / "dist", "--verify-size", 4,
                                 "--simplify", "off"], capsys)
    assert code == 0, err
    assert (tmp_path / "dist" / "model_onnx_fp32.onnx").exists() and "PASS" in stdout


def test_imagenet_defaults_without_data(tmp_path, capsys):
    import timm

    weights = tmp_path / "w.pt"
    torch.save(timm.create_model("test_resnet", num_classes=3).state_dict(), weights)
    code, _, err = run_cli(["import", "--arch", "test_resnet", "--weights", weights, "--num-classes", 3,
                         "--img-size", 32, "--out", tmp_path / "m.safetensors"], capsys)
    assert code == 0, err
    meta = json.loads((tmp_path / "m.json").read_text())["meta"]
    assert meta["preprocess"]["mean"] == [0.485, 0.456, 0.406] and meta["preprocess"]["std"] == [0.229, 0.224, 0.225]
    assert meta["class_names"] == ["class_0", "class_1", "class_2"] and "metrics" not in meta


def test_lightning_prefix_is_stripped_and_said(tmp_path):
    import timm

    from toolchain.models.import_weights import import_model

    model = timm.create_model("test_resnet", num_classes=2)
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "epoch": 3},
               tmp_path / "lightning.ckpt.pt")
    imported, report = import_model("test_resnet", tmp_path / "lightning.ckpt.pt", 2, 3, 32)
    assert "stripped the 'model.' prefix" in report["notes"]
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(imported(x), model.eval()(x))


def test_pickled_module_is_refused(tmp_path, capsys):
    import timm

    weights = tmp_path / "whole.pt"
    torch.save(timm.create_model("test_resnet", num_classes=2), weights)
    code, _, err = run_cli(["import", "--arch", "test_resnet", "--weights", weights, "--num-classes", 2,
                         "--out", tmp_path / "out"], capsys)
    assert code == 2
    line = one_error_line(err)
    assert "torch.save(model.state_dict(), path)" in line and "timm.models" in line
    assert not (tmp_path / "out").exists()


def test_mismatched_keys_are_named(tmp_path, capsys):
    from toolchain.models import build_model

    weights = tmp_path / "r18.pt"
    torch.save(build_model("torchvision:resnet18", 2, 3, 32).state_dict(), weights)
    code, _, err = run_cli(["import", "--arch", "torchvision:resnet34", "--weights", weights, "--num-classes", 2,
                         "--img-size", 32, "--out", tmp_path / "o"], capsys)
    assert code == 2 and "missing layer1.2.conv1.weight" in one_error_line(err)
    code, _, err = run_cli(["import", "--arch", "torchvision:resnet18", "--weights", weights, "--num-classes", 5,
                         "--img-size", 32, "--out", tmp_path / "o"], capsys)
    line = one_error_line(err)
    assert code == 2 and "fc.weight (2, 512) vs (5, 512)" in line and "--num-classes" in line
    state = torch.load(weights, weights_only=True)
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, weights)
    code, _, err = run_cli(["import", "--arch", "torchvision:resnet18", "--weights", weights, "--num-classes", 2,
                         "--img-size", 32, "--out", tmp_path / "o"], capsys)
    assert code == 2 and "unexpected extra.weight" in one_error_line(err)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv, message", [
    (["--arch", "torchvision:nosuchnet"], "unknown torchvision model"),
    (["--class-names", "a,b,a"], "repeats a"),
    (["--class-names", "a,b", "--num-classes", "3"], "--num-classes is 3"),
    (["--in-chans", "2"], "--in-chans must be 1 or 3"),
    (["--mean", "0.1,0.2"], "--mean gives 2 values for 3 input channels"),
])
def test_bad_flags_one_line(tmp_path, capsys, argv, message):
    import timm

    weights = tmp_path / "w.safetensors"
    from safetensors.torch import save_file

    save_file(timm.create_model("test_resnet", num_classes=2).state_dict(), str(weights))
    base = {"--arch": "test_resnet", "--num-classes": "2"}
    for flag, value in zip(argv[::2], argv[1::2], strict=True):
        base[flag] = value
    args = [x for kv in base.items() for x in kv]
    code, _, err = run_cli(["import", *args, "--weights", weights, "--out", tmp_path / "o"], capsys)
    assert code == 2 and message in one_error_line(err)
