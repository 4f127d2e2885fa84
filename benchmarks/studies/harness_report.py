"""``make bench``: dense vs group-pruned (50 %) VGG19, ResNet50 and ViT-B/16 at 64 px, measured here.

For each family: the trained checkpoint from the training cache when one exists for the image size
(``$MEDPRUNE_CACHE/checkpoints/<family>-<data>-*``, or ``--checkpoint family=PATH``), else random
weights (latency, memory and size do not depend on the weights; accuracy is then not reported).
Units are scored by weight magnitude (L1), masked at ``--ratio`` with coupled-group removal
(``toolchain.removal.group_masks`` + ``remove_units(granularity="group")``), both models are exported
to ONNX and OpenVINO IR (``export``) and benchmarked with the harness on ONNX Runtime and OpenVINO at
batch 1 (plus OpenVINO's benchmark_app on the same IR as a cross-check). The exported ONNX files stay in
``$MEDPRUNE_CACHE/bench_models`` for ``python -m devices.roofline_fit``, which calibrates the roofline on
them and predicts their Jetson latency (``make bench`` runs both).

    medprune study harness_report [--families vgg19,resnet50,vit_b16] [--size 64] [--ratio 0.5]
        [--runs 50] [--data pneumoniamnist] [--checkpoint vgg19=PATH] [--out benchmarks/results]

Writes ``<out>/bench.{json,md,html}`` and ``bench_*.png``.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path

import torch

from benchmarks.costs import onnx_layer_costs, total_macs
from benchmarks.harness import BenchConfig, benchmark, cross_check_benchmark_app, machine_info
from benchmarks.report import compare, write_report
from toolchain.settings import cache_dir, data_dir

from .registry import StudyParser, command_line, study

FAMILIES = ("vgg19", "resnet50", "vit_b16")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def find_checkpoint(family: str, size: int, data: str) -> Path | None:
    """A trained dense checkpoint of ``family`` at ``size`` px on ``data`` from the training cache."""
    root = cache_dir() / "checkpoints"
    for weights in sorted(root.glob(f"{family}-{data}*/model.safetensors")):
        try:
            meta = json.loads(weights.with_suffix(".json").read_text())
        except (OSError, ValueError) as exc:  # said, so that a random-weights fallback is never a surprise
            warnings.warn(f"skipping {weights}: unreadable sidecar ({exc})", stacklevel=2)
            continue
        if int(meta.get("img_size", -1)) == size and not meta.get("pruning"):
            return weights
    return None


def dense_model(family: str, size: int, in_chans: int, checkpoint: Path | None) -> tuple[torch.nn.Module, dict]:
    from toolchain.models import build_model, load_checkpoint

    if checkpoint is not None:
        return load_checkpoint(checkpoint)
    torch.manual_seed(0)
    model = build_model(family, num_classes=2, in_chans=in_chans, img_size=size).eval()
    return model, {"arch": family, "num_classes": 2, "in_chans": in_chans, "img_size": size,
                   "class_names": ["normal", "pneumonia"], "weights": "random-init"}


def group_prune(model: torch.nn.Module, chw: tuple[int, int, int], ratio: float) -> tuple[torch.nn.Module, dict]:
    from toolchain.importance.magnitude import unit_weight_l1
    from toolchain.removal import group_masks, remove_units
    from toolchain.units import find_unit_layers

    layers = find_unit_layers(model)
    scores = {layer.name: unit_weight_l1(model, layer) for layer in layers}
    example = torch.randn(2, *chw)
    masks = group_masks(model, scores, layers, ratio, example)
    pruned, report = remove_units(model, masks, example, granularity="group")
    report.pop("keep", None)
    return pruned.eval(), report


def export_both(model: torch.nn.Module, meta: dict, chw: tuple[int, int, int], stem: Path) -> tuple[Path, Path]:
    from export.metadata import build_metadata
    from export.onnx import export_onnx
    from export.openvino import export_openvino

    stem.parent.mkdir(parents=True, exist_ok=True)
    onnx_path, xml_path = stem.with_suffix(".onnx"), stem.with_suffix(".xml")
    metadata = build_metadata(meta)
    export_onnx(model, onnx_path, chw, metadata=metadata)
    export_openvino(onnx_path, xml_path, "fp32", metadata)
    return onnx_path, xml_path


@study("harness_report", outputs=("bench.json", "bench.md", "bench.html", "bench_*.png"))
def main(argv: list[str] | None = None) -> None:
    p = StudyParser("harness_report", __doc__)
    p.add_list("--families", default=",".join(FAMILIES), choices=FAMILIES, help="model families")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--in-chans", type=int, default=1)
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--data", default="pneumoniamnist")
    p.add_argument("--checkpoint", action="append", default=[], help="family=PATH (trained dense checkpoint)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "results")
    p.add_argument("--stem", default="bench")
    a = p.parse_args(argv)
    command = command_line("harness_report", argv)
    given = dict(item.split("=", 1) for item in a.checkpoint)
    have_data = data_dir() is not None or Path(a.data).exists()
    work = cache_dir() / "bench_models"
    models, comparisons, notes = [], [], []
    t_start = time.time()

    for family in a.families:
        ckpt = Path(given[family]) if family in given else find_checkpoint(family, a.size, a.data)
        log(f"{family}@{a.size}: {'checkpoint ' + str(ckpt) if ckpt else 'random-init weights'}")
        dense, meta = dense_model(family, a.size, a.in_chans, ckpt)
        chw_f = (int(meta.get("in_chans", a.in_chans)), int(meta.get("img_size", a.size)),
                 int(meta.get("img_size", a.size)))
        log(f"{family}: group pruning {a.ratio:.0%} by weight magnitude")
        pruned, prune_report = group_prune(dense, chw_f, a.ratio)
        pct = int(round(a.ratio * 100))
        variants = {"dense": (dense, meta), f"pruned-{pct}%": (pruned, {**meta, "pruning": {"recipe": {
            "criterion": "magnitude", "ratio": a.ratio, "granularity": "group"}}})}
        data = a.data if (ckpt and have_data) else None
        if not ckpt:
            notes.append(f"{family}: no trained {a.size}px checkpoint found, random-init weights: latency, memory "
                         "and size are valid, accuracy is not reported")
        group = f"{family}@{a.size}"
        by_runtime: dict[str, dict[str, dict]] = {"onnxruntime": {}, "openvino": {}}
        for variant, (model, vmeta) in variants.items():
            log(f"{group} {variant}: export ONNX + OpenVINO IR")
            onnx_path, xml_path = export_both(model, vmeta, chw_f, work / f"{family}_{a.size}_{variant.strip('%')}")
            params = int(sum(t.numel() for t in model.parameters()))
            for runtime, path in (("onnxruntime", onnx_path), ("openvino", xml_path)):
                log(f"{group} {variant}: {runtime} ({a.runs} runs, threads {a.threads})")
                config = BenchConfig(runs=a.runs, warmup=5, threads=a.threads, data=data)
                r = benchmark(path, runtime, config, meta=vmeta, name=f"{family}-{variant}-{runtime}")
                r.update({"group": group, "variant": variant, "params": params,
                          "macs": total_macs(onnx_layer_costs(onnx_path))})
                if runtime == "openvino":
                    log(f"{group} {variant}: benchmark_app cross-check")
                    r["cross_check"] = cross_check_benchmark_app(
                        xml_path, a.threads, seconds=max(3, round(a.runs * r["latency_ms"]["p50"] / 1e3)),
                        harness_p50_ms=r["latency_ms"]["p50"])
                if variant != "dense":
                    r["pruning"] = {k: prune_report[k] for k in ("granularity", "params_before", "params_after")
                                    if k in prune_report}
                by_runtime[runtime][variant] = r
                models.append(r)
        for runtime, rs in by_runtime.items():
            comparisons.append(compare(rs["dense"], rs[f"pruned-{pct}%"], group=f"{group} {runtime}"))
        log(f"{group}: done ({time.time() - t_start:.0f} s so far)")

    for c in comparisons:
        if c["mac_ratio"] and c["speedup_p50"]:
            verdict = "below" if c["speedup_p50"] < c["mac_ratio"] else "at or above"
            notes.append(f"{c['group']}: measured batch-1 speedup {c['speedup_p50']:.2f}x for a "
                         f"{c['mac_ratio']:.2f}x MAC reduction ({verdict} the MAC ratio)")
    notes.append(f"machine has {os.cpu_count()} logical cores shared with other jobs; each runtime used "
                 f"{a.threads} intra-op threads; total wall time {time.time() - t_start:.0f} s")
    report = {"title": f"medprune bench: dense vs group-pruned {a.ratio:.0%} at {a.size}px",
              "command": command, "machine": machine_info(), "target": None, "models": models,
              "comparisons": comparisons, "calibration": None, "predictions": [],
              "device_commands": {}, "notes": notes}
    paths = write_report(report, a.out, stem=a.stem)
    log("wrote " + ", ".join(str(p) for p in paths.values()))
