"""Bring your own 224 px model: a timm and a torchvision classifier trained outside medprune, saved as a
state dict (.safetensors / .pt), go through `medprune import` → `medprune prune` → `medprune deploy`
→ `medprune verify-package` on a tiny 224 px PNG folder.

"Trained outside medprune" is simulated cheaply: the convolutional features keep their random
initialisation and only the classifier is fitted (a linear probe on the pooled features), which
separates the brightness classes of the tiny folder. The refusal of a pickled whole module is tested in
tests/toolchain/test_import.py::test_pickled_module_is_refused (same code path at every size).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tests.toolchain._byom_data import run_cli, write_png_folder

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
SIZE = 224


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_png_folder(tmp_path_factory.mktemp("byom224") / "xray", per_class=10, size=SIZE)


@pytest.fixture(autouse=True)
def _env(cli_env):
    """Private cache, one thread, no debug tracebacks (tests/conftest.py)."""


def _grey_224(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image of the folder as (N, 1, 224, 224) in [0, 1] with ImageNet-grey normalisation, labels."""
    from PIL import Image

    files = sorted(folder.glob("*/*.png"))
    x = np.stack([np.asarray(Image.open(f), dtype=np.float32) / 255.0 for f in files])[:, None]
    return (torch.from_numpy(x) - 0.45) / 0.225, torch.tensor([int(f.parent.name) for f in files])


def _fit_classifier(model: nn.Module, classifier: nn.Linear, x: torch.Tensor, y: torch.Tensor) -> nn.Module:
    """Fit only ``classifier`` on the features it receives (the rest stays as initialised)."""
    feats = []
    handle = classifier.register_forward_hook(lambda _m, inp, _o: feats.append(inp[0].detach()))
    with torch.no_grad():
        model.eval()(x)
    handle.remove()
    f = feats[0]
    f = (f - f.mean(0)) / (f.std(0) + 1e-6)  # fitted on standardised features, folded back below
    torch.manual_seed(0)
    probe = nn.Linear(f.shape[1], 2)
    opt = torch.optim.Adam(probe.parameters(), lr=0.05)
    for _ in range(100):
        opt.zero_grad()
        nn.functional.cross_entropy(probe(f), y).backward()
        opt.step()
    mu, sd = feats[0].mean(0), feats[0].std(0) + 1e-6
    with torch.no_grad():
        classifier.weight.copy_(probe.weight / sd)
        classifier.bias.copy_(probe.bias - (probe.weight * mu / sd).sum(1))
        logits = model(x)
        assert (logits.argmax(1) == y).float().mean() == 1.0  # the brightness classes are separated
        # logits of a trained classifier's size (|z| <= 8), not the ~100 of an unregularised probe
        scale = 8.0 / float(logits.abs().max())
        classifier.weight.mul_(scale)
        classifier.bias.mul_(scale)
    return model


def _import_prune_deploy(arch: str, weights: Path, folder: Path, tmp_path: Path, capsys) -> None:
    ckpt = tmp_path / "imported"
    code, out, err = run_cli(["import", "--arch", arch, "--weights", weights, "--class-names", "normal,pneumonia",
                              "--img-size", SIZE, "--in-chans", 1, "--mean", "0.45", "--std", "0.225",
                              "--data", folder, "--out", ckpt, "--device", "cpu"], capsys)
    assert code == 0, err
    meta = json.loads((ckpt / "model.json").read_text())["meta"]
    assert meta["img_size"] == SIZE and meta["preprocess"]["img_size"] == SIZE
    assert meta["metrics"]["val"]["accuracy"] == 1.0  # the imported weights work at 224 px as trained

    js = tmp_path / "prune.json"
    code, out, err = run_cli(["prune", "-c", ckpt, "--criterion", "lrp", "--sampling", "random", "--n-per-class", 1,
                              "--ratios", "0.2", "--json", js, "--device", "cpu", "-q"], capsys)
    assert code == 0, err
    assert json.loads(js.read_text())["ratios"]["0.20"]["mask_report"]["units_pruned"] > 0

    code, out, err = run_cli(["deploy", "--checkpoint", ckpt, "--data", folder, "--out", tmp_path / "dist",
                              "--cache", tmp_path / "deploy_cache", "--ratio", "0.2", "--n-per-class", 1,
                              "--pool-per-class", 4, "--fidelity-images", 0, "--bench-runs", 3, "--samples", 2,
                              "--no-calibrate", "--json"], capsys)
    assert code == 0, err
    summary = json.loads(out[out.index("{"):])
    pkg = Path(summary["package"])
    manifest = json.loads((pkg / "manifest.json").read_text())
    assert manifest["input"]["shape"] == [None, 1, SIZE, SIZE] and manifest["preprocess"]["img_size"] == SIZE
    assert manifest["class_names"] == ["normal", "pneumonia"]
    # the package is built from the imported checkpoint, and its removal matched masking at 224 px
    assert manifest["source_checkpoint_sha256"] == hashlib.sha256((ckpt / "model.safetensors").read_bytes()).hexdigest()
    assert manifest["pruning"]["parity_masked_vs_removed"] <= 1e-4
    assert manifest["pruning"]["compare"]["params"]["pruned"] < manifest["pruning"]["compare"]["params"]["dense"]

    code, out, err = run_cli(["verify-package", summary["tarball"], "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["ok"] and report["top1_agreement"] == report["samples"] == 2


def test_timm_safetensors_import_prune_deploy_224(folder, tmp_path, capsys):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=2, in_chans=1)
    _fit_classifier(model, model.get_classifier(), *_grey_224(folder))
    weights = tmp_path / "timm_resnet.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    _import_prune_deploy("test_resnet", weights, folder, tmp_path, capsys)


@pytest.mark.slow  # an 11M-parameter ResNet-18 at 224 px through import, LRP, removal, export and bench
def test_torchvision_state_dict_import_prune_deploy_224(folder, tmp_path, capsys):
    from toolchain.models import build_model

    model = build_model("torchvision:resnet18", 2, in_chans=1, img_size=SIZE)
    _fit_classifier(model, model.fc, *_grey_224(folder))
    weights = tmp_path / "tv_resnet18.pt"
    torch.save(model.state_dict(), weights)
    _import_prune_deploy("torchvision:resnet18", weights, folder, tmp_path, capsys)
