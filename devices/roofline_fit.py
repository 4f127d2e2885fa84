"""Fit the roofline model's efficiency factors on this machine (``medprune bench`` reads the cached fit;
``medprune study jetson_prediction`` writes the committed report).

A small suite of CNNs and ViTs (random weights: latency does not depend on them) spanning two orders
of magnitude in MACs is exported to ONNX, measured with the benchmark harness on ONNX Runtime at batch 1,
and the roofline's efficiency factors are fitted to those measurements against this machine's measured
peaks. The result is cached per machine (CPU model, threads, ORT version) under the medprune cache.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

from benchmarks.harness import BenchConfig, benchmark, machine_info
from toolchain.pipeline import digest
from toolchain.settings import cache_dir

from .roofline import (
    Calibration,
    DeviceFit,
    LayerCost,
    calibrate,
    fit_published,
    load_calibration,
    measure_peaks,
    onnx_layer_costs,
    save_calibration,
)


def _plain_cnn(width: int, size: int):
    from torch import nn

    layers, c = [], 1
    for w in (width, width * 2, width * 4):
        layers += [nn.Conv2d(c, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        c = w
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 2)]
    return nn.Sequential(*layers).eval(), (1, size, size)


def _resnet(width: int, size: int):
    from timm.models.resnet import Bottleneck, ResNet

    return ResNet(Bottleneck, [1, 1, 1, 1], num_classes=2, in_chans=1, stem_width=width,
                  channels=(width, width * 2, width * 4, width * 8)).eval(), (1, size, size)


def _vit(dim: int, size: int):
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=size, patch_size=8, in_chans=1, num_classes=2, embed_dim=dim, depth=4,
                             num_heads=max(dim // 32, 1), mlp_ratio=4.0).eval(), (1, size, size)


SUITE: dict[str, Callable] = {
    "cnn-w8-32": lambda: _plain_cnn(8, 32),
    "cnn-w16-64": lambda: _plain_cnn(16, 64),
    "cnn-w32-64": lambda: _plain_cnn(32, 64),
    "cnn-w32-128": lambda: _plain_cnn(32, 128),
    "resnet-w8-32": lambda: _resnet(8, 32),
    "resnet-w16-64": lambda: _resnet(16, 64),
    "resnet-w32-64": lambda: _resnet(32, 64),
    "vit-d64-32": lambda: _vit(64, 32),
    "vit-d128-64": lambda: _vit(128, 64),
}


def export_onnx(model, chw: tuple[int, int, int], path: Path) -> Path:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, torch.zeros(1, *chw), str(path), input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}}, dynamo=False)
    return path


def cache_key(threads: int) -> str:
    info = machine_info()
    return digest([info["cpu_model"], info["isa"], threads, info["versions"].get("onnxruntime"), sorted(SUITE)])[:16]


def run_calibration(threads: int, runs: int = 30, extra: list[tuple[str, Path]] | None = None,
                    progress=None) -> Calibration:
    """Measure the suite (plus ``extra`` ONNX files) with ORT at batch 1 (min of ``runs``) and fit the roofline."""
    say = progress or (lambda _m: None)
    say(f"measuring this machine's peaks at {threads} threads")
    peaks = measure_peaks(threads)
    samples = []
    config = BenchConfig(runs=runs, warmup=5, threads=threads, rss=False, throughput_runs=1, throughput_batch=1)
    with tempfile.TemporaryDirectory(prefix="medprune-calib-") as tmp:
        files = []
        for name, build in SUITE.items():
            model, chw = build()
            files.append((name, export_onnx(model, chw, Path(tmp) / f"{name}.onnx")))
        for name, path in files + list(extra or []):
            say(f"calibration run: {name}")
            # the minimum: contention from other processes only ever adds time, and the roofline models
            # the machine, not its neighbours (the harness reports p50 for the models themselves)
            measured = benchmark(path, "onnxruntime", config)["latency_ms"]["min"]
            samples.append((name, onnx_layer_costs(path, 1), measured))
    return calibrate(samples, peaks)


def cached_calibration(threads: int, refresh: bool = False, progress=None) -> Calibration:
    """This machine's calibration, measured once and cached under ``$MEDPRUNE_CACHE/roofline``."""
    path = cache_dir() / "roofline" / f"calibration-{cache_key(threads)}.json"
    if not refresh:
        cal = load_calibration(path)
        if cal is not None:
            return cal
    cal = run_calibration(threads, progress=progress)
    save_calibration(cal, path)
    return cal


# ---------------------------------------------------------------- published Jetson latencies

PUBLISHED = Path(__file__).parent / "profiles" / "published" / "jetson_latency.json"
COST_VERSION = 1  # part of the cached layer costs' key: bump when benchmarks.costs counts differently


def _torchvision(name: str):
    def build(classes: int):
        import torchvision

        return getattr(torchvision.models, name)(weights=None, num_classes=classes)
    return build


def _timm(name: str):
    def build(classes: int):
        import timm

        return timm.create_model(name, pretrained=False, num_classes=classes)
    return build


# the architectures of the published measurements (random weights: latency does not depend on them)
STANDARD_MODELS: dict[str, Callable] = {
    "resnet18": _torchvision("resnet18"), "resnet34": _torchvision("resnet34"), "resnet50": _torchvision("resnet50"),
    "mobilenetv3_small": _torchvision("mobilenet_v3_small"), "mobilenetv3_large": _torchvision("mobilenet_v3_large"),
    "mixnet_s": _timm("mixnet_s"), "mixnet_m": _timm("mixnet_m"), "mixnet_l": _timm("mixnet_l"),
    "efficientformer_l1": _timm("efficientformer_l1"), "vit_tiny": _timm("vit_tiny_patch16_224"),
    "mobilevit_s": _timm("mobilevit_s"),
}


def load_published(path: Path = PUBLISHED) -> dict:
    """The published measurements, each checked for the fields a fit needs and for a known source."""
    data = json.loads(Path(path).read_text())
    for m in data["measurements"]:
        missing = {"device", "model", "input", "classes", "batch", "precision", "latency_ms", "source"} - set(m)
        if missing or m["source"] not in data["sources"] or m["model"] not in STANDARD_MODELS:
            raise ValueError(f"{path}: measurement {m} lacks {sorted(missing)} or names an unknown source/model")
    return data


def _standard_costs(m: dict, work: Path) -> list:
    """Layer costs of a published model from its ONNX export (the path medprune's own models take), cached."""
    key = digest([m["model"], m["input"], m["classes"], m["batch"], COST_VERSION])
    path = cache_dir() / "roofline" / f"published-costs-{key[:16]}.json"
    try:
        return [LayerCost(**c) for c in json.loads(path.read_text())]
    except (OSError, ValueError, TypeError):
        pass
    model = STANDARD_MODELS[m["model"]](int(m["classes"])).eval()
    costs = onnx_layer_costs(export_onnx(model, tuple(m["input"]), work / f"{m['model']}.onnx"), int(m["batch"]))
    from toolchain.atomic import atomic_file

    with atomic_file(path, "w") as fh:
        json.dump([c.__dict__ for c in costs], fh)
    return costs



def fit_published_devices(targets: list[str], progress=None) -> list[DeviceFit]:
    """Fit each target's roofline to its published latencies (``PUBLISHED``) with leave-one-out errors."""
    from .profiles import load_profile

    say = progress or (lambda _m: None)
    data = load_published()
    fits = []
    with tempfile.TemporaryDirectory(prefix="medprune-published-") as tmp:
        for target in targets:
            rows = [m for m in data["measurements"] if m["device"] == target]
            samples, sources = [], []
            for m in rows:
                say(f"{target}: layer costs of {m['model']} ({m['precision']}, {m['source']})")
                name = f"{m['model']}@{m['precision']}/{m['source']}"
                samples.append((name, _standard_costs(m, Path(tmp)), float(m["latency_ms"]), m["precision"]))
                sources.append(data["sources"][m["source"]]["url"])
            if samples:
                fits.append(fit_published(load_profile(target), samples, sources))
    return fits
