"""Every stage at 224 px on the three paper architectures: scoring (LRP, DLB, IG, Taylor), masking,
physical removal parity, one recovery step, export parity (ONNX Runtime and OpenVINO vs torch), bench.

The models are the real timm entry points (``vgg19``, ``resnet50``, ``vit_b16``) at 224 px, made cheap
enough for CI on two CPU cores without changing what 224 px changes:

* vgg19: the VGG19 layer layout (16 convs, 5 pools) at one eighth of the width; at 224 px the 7x7
  ``pre_logits`` conv sees a real 7x7 map (at 32 px it sees a pooled-up 1x1 one);
* resnet50: the full [3, 4, 6, 3] bottleneck depth at one eighth of the width (stem and every stage);
* vit_b16: full ViT-B width (768, 12 heads, patch 16, so 14x14 patches + CLS = 197 tokens) with
  ``depth=1`` instead of 12 blocks (every block is the same code; twelve of them cost ~12x the time).

Batches are one or two images and IG takes two steps, so the file runs in well under a minute.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import write_tiny_npz
from toolchain.importance import get_criterion
from toolchain.masking import apply_masks, build_masks
from toolchain.models import build_model
from toolchain.units import find_unit_layers

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SIZE = 224
VGG19_EIGHTH = [8, 8, "M", 16, 16, "M", 32, 32, 32, 32, "M", 64, 64, 64, 64, "M", 64, 64, 64, 64, "M"]
BUILD_ARGS = {
    "vgg19": {"cfg": VGG19_EIGHTH, "mlp_ratio": 0.125},
    "resnet50": {"stem_width": 8, "channels": [8, 16, 32, 64]},
    "vit_b16": {"depth": 1},
}
ARCHS = list(BUILD_ARGS)
BN_RANGES = {"running_mean": (-0.1, 0.1), "running_var": (0.5, 2.0), "weight": (0.5, 1.5), "bias": (-0.1, 0.1)}
CRITERIA = {"lrp": {}, "dlb": {}, "taylor": {}, "ig": {"n_steps": 2}}


def _build(arch: str) -> nn.Module:
    torch.manual_seed(0)
    model = build_model(arch, 2, in_chans=1, img_size=SIZE, **BUILD_ARGS[arch]).eval()
    gen = torch.Generator().manual_seed(1)
    # non-trivial BatchNorm (timm zero-initialises each bottleneck's last BN weight, which would leave
    # every residual branch without gradient or relevance) so a forgotten fold or shift shows
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        for attr, (lo, hi) in BN_RANGES.items():
            getattr(bn, attr).data.uniform_(lo, hi, generator=gen)
    return model


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    """Two grey 224 px images through Preprocess, as every command feeds them: a 1-channel batch with
    channels-last strides (the input that made ResNet50 removal trace an AsStrided op at 224 px)."""
    from toolchain.data import Preprocess

    images = np.random.default_rng(0).integers(0, 256, (2, SIZE, SIZE), dtype=np.uint8)
    return Preprocess(SIZE, 1, (0.5,), (0.25,))(images)


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    return {arch: _build(arch) for arch in ARCHS}


@pytest.fixture(scope="module")
def lrp_scores(models, x) -> dict[str, dict[str, torch.Tensor]]:
    return {arch: get_criterion("lrp", batch_size=2)(m, x, torch.tensor([0, 1]), find_unit_layers(m))
            for arch, m in models.items()}


@pytest.fixture(scope="module")
def pruned(models, lrp_scores, x) -> dict[str, tuple]:
    """(masks, removed model, removal report) at ratio 0.5 of the LRP ranking, per architecture."""
    from toolchain.removal import remove_units

    out = {}
    for arch, model in models.items():
        masks = build_masks(lrp_scores[arch], find_unit_layers(model), 0.5)
        removed, report = remove_units(model, masks, x[:1])
        out[arch] = (masks, removed, report)
    return out


def test_vit_b16_sees_197_tokens(models, x):
    model = models["vit_b16"]
    seen = []
    handle = model.blocks[0].register_forward_hook(lambda _m, inp, _o: seen.append(tuple(inp[0].shape)))
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        handle.remove()
    assert seen == [(1, 197, 768)] and model.blocks[0].attn.num_heads == 12


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", list(CRITERIA))
def test_scores_at_224(models, lrp_scores, x, arch, name):
    model = models[arch]
    layers = find_unit_layers(model)
    if name == "lrp":
        scores = lrp_scores[arch]
    else:
        n = 2 if name == "taylor" else 1  # IG and DLB cost several passes per image
        scores = get_criterion(name, batch_size=n, **CRITERIA[name])(model, x[:n], torch.tensor([0, 1])[:n], layers)
    assert set(scores) == {ly.name for ly in layers}
    for ly in layers:
        s = scores[ly.name]
        assert s.shape == (ly.size,) and torch.isfinite(s).all() and (s >= 0).all(), ly.name
    # a ranking, not a constant: scoring saw the 224 px activations
    assert sum(float(scores[ly.name].std()) > 0 for ly in layers) >= len(layers) // 2 + 1
    if arch == "vit_b16":
        assert {ly.kind for ly in layers} == {"head", "mlp"}
        assert scores["blocks.0.attn"].shape == (12,)


@pytest.mark.parametrize("arch", ARCHS)
def test_masking_and_removal_parity_at_224(models, pruned, x, arch):
    model = models[arch]
    masks, removed, report = pruned[arch]
    assert masks.meta["effective_ratio"] == pytest.approx(0.5, abs=0.01)
    masked = apply_masks(model, masks)
    with torch.no_grad():
        dense_out, masked_out, removed_out = model(x), masked(x), removed(x)
    assert not torch.allclose(dense_out, masked_out)  # the masks change the model ...
    assert float((masked_out - removed_out).abs().max()) <= 1e-4  # ... and removal computes what masking does
    assert report["params_after"] < report["params_before"] and report["units"]["removed"] > 0


@pytest.mark.parametrize("arch", ARCHS)
def test_one_recovery_step_at_224(models, pruned, tmp_path, monkeypatch, arch):
    from toolchain.data import Preprocess, load_dataset
    from toolchain.recovery import RecoveryConfig, recover

    monkeypatch.setenv("MEDPRUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MEDPRUNE_THREADS", "2")
    ds = load_dataset(str(write_tiny_npz(tmp_path / "tiny224.npz", n=(2, 2, 2), size=SIZE)))
    student = copy.deepcopy(pruned[arch][1])
    before = {k: v.clone() for k, v in student.state_dict().items()}
    cfg = RecoveryConfig(epochs=1, batch_size=2, lr=1e-3, augment=False, patience=0, quiet=True)
    result = recover(student, models[arch], ds, Preprocess.for_dataset(ds, SIZE, 1), cfg,
                     dict(models[arch].medprune_spec))
    assert len(result["history"]) == 1 and np.isfinite(result["history"][0]["train_loss"])
    assert any(not torch.equal(before[k], v) for k, v in student.state_dict().items())


@pytest.mark.parametrize("arch", ARCHS)
def test_export_parity_and_bench_at_224(pruned, x, tmp_path, arch):
    from benchmarks.harness import BenchConfig, benchmark
    from export.exporter import export_model
    from export.verify import TOLERANCES

    removed = pruned[arch][1]
    meta = {**removed.medprune_spec, "class_names": ["normal", "pneumonia"],
            "preprocess": {"img_size": SIZE, "in_chans": 1, "mean": [0.5], "std": [0.25]}}
    xs, ys = x.numpy(), np.array([0, 1])
    onnx = export_model(removed, meta, tmp_path, "onnx", "fp32", name=arch, eval_x=xs, eval_y=ys,
                        simplify_mode="off")  # onnxslim is a no-op on VGG/ResNet and costs seconds
    ov = export_model(removed, meta, tmp_path, "openvino", "fp32", name=arch, eval_x=xs, eval_y=ys,
                      base_onnx=onnx.path)
    for res in (onnx, ov):
        v = res.verification
        assert v["passed"] and v["max_abs_logit"] <= TOLERANCES["fp32"]["max_abs_logit"], v
    for path, runtime in ((onnx.path, "onnxruntime"), (ov.path, "openvino")):
        row = benchmark(path, runtime, BenchConfig(runs=2, warmup=1, threads=2, throughput_batch=2,
                                                   throughput_runs=1, rss=False))
        assert row["input_shape"] == [1, SIZE, SIZE] and row["latency_ms"]["p50"] > 0
