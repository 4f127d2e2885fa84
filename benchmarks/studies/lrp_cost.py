"""Cost of LRP unit scoring relative to one forward+backward pass over the same reference images.

The issue's requirement: scoring 20 samples on VGG19 at 32 px costs at most 3x a plain
forward+backward pass over them. Both are timed in the same process, interleaved (baseline, LRP,
baseline, LRP, ...) so that load from other processes hits both alike; the ratio is taken per
pair and its median reported. The LRP time is the whole ``criterion(model, x, y, layers)`` call:
deep copy, canonization, the logit check, and propagation.

    MEDPRUNE_DATA=/work/shared/data medprune study lrp_cost [--archs vgg19,resnet50,vit_b16]

Writes benchmarks/results/lrp_cost.{json,md}.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from toolchain.atomic import atomic_file
from toolchain.data import Preprocess, load_dataset
from toolchain.importance import get_criterion
from toolchain.models import build_model
from toolchain.units import find_unit_layers

from .registry import StudyParser, command_line, study

RESULTS = Path(__file__).resolve().parents[1] / "results"


def reference_images(dataset: str, n: int, img_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` train images, balanced over classes, preprocessed for a 1-channel model."""
    ds = load_dataset(dataset)
    split = ds.split("train")
    rng = np.random.default_rng(seed)
    classes = np.unique(split.labels)
    per_class = -(-n // len(classes))
    idx = np.concatenate([rng.choice(np.flatnonzero(split.labels == c), per_class, replace=False) for c in classes])[:n]
    pre = Preprocess.for_dataset(ds, img_size, 1)
    return pre(split.images[idx]), torch.as_tensor(split.labels[idx], dtype=torch.long)


def forward_backward(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> None:
    """The baseline: one ordinary training-style pass (gradients of all parameters) over ``x``."""
    model.zero_grad(set_to_none=True)
    for start in range(0, len(x), batch_size):
        logits = model(x[start:start + batch_size])
        logits.gather(1, y[start:start + batch_size, None]).sum().backward()


def measure(arch: str, x: torch.Tensor, y: torch.Tensor, img_size: int, repeats: int, batch_size: int,
            composite: str) -> dict:
    torch.manual_seed(0)
    model = build_model(arch, num_classes=2, in_chans=1, img_size=img_size).eval()
    layers = find_unit_layers(model)
    criterion = get_criterion("lrp", composite=composite, batch_size=batch_size)
    # warm-up: first calls pay for lazy imports and allocator growth
    forward_backward(model, x, y, batch_size)
    criterion(model, x, y, layers)
    base, lrp = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        forward_backward(model, x, y, batch_size)
        t1 = time.perf_counter()
        criterion(model, x, y, layers)
        t2 = time.perf_counter()
        base.append(t1 - t0)
        lrp.append(t2 - t1)
    ratios = [b / a for a, b in zip(base, lrp, strict=True)]
    return {
        "arch": arch,
        "params": sum(p.numel() for p in model.parameters()),
        "unit_layers": len(layers),
        "units": sum(layer.size for layer in layers),
        "forward_backward_s": base,
        "lrp_s": lrp,
        "ratio_per_pair": ratios,
        "ratio_median": statistics.median(ratios),
        "ratio_of_medians": statistics.median(lrp) / statistics.median(base),
    }


def write(results: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    with atomic_file(RESULTS / "lrp_cost.json", "w") as fh:
        fh.write(json.dumps(results, indent=2))
    lines = [
        "# LRP scoring cost vs one forward+backward pass",
        "",
        f"Command: `{results['command']}`",
        "",
        f"{results['n_samples']} {results['dataset']} train images at {results['img_size']} px, batch size "
        f"{results['batch_size']}, composite `{results['composite']}`, {results['repeats']} interleaved repeats, "
        f"torch {results['torch']} on {results['cpu']} ({results['threads']} threads, load average at start "
        f"{results['load_average']}). Untrained weights (cost does not depend on their values).",
        "",
        "| model | params | unit layers | fwd+bwd median (s) | LRP median (s) | ratio (median of pairs) | ≤ 3x |",
        "|---|---:|---:|---:|---:|---:|:---:|",
    ]
    for r in results["models"]:
        lines.append(
            f"| {r['arch']} | {r['params'] / 1e6:.1f}M | {r['unit_layers']} | "
            f"{statistics.median(r['forward_backward_s']):.3f} | {statistics.median(r['lrp_s']):.3f} | "
            f"{r['ratio_median']:.2f} | {'yes' if r['ratio_median'] <= 3 else 'NO'} |"
        )
    lines += ["", "The LRP time includes deep-copying and canonizing the model (done once per call)."]
    with atomic_file(RESULTS / "lrp_cost.md", "w") as fh:
        fh.write("\n".join(lines) + "\n")


@study("lrp_cost", outputs=("lrp_cost.json", "lrp_cost.md"))
def main(argv: list[str] | None = None) -> dict:
    parser = StudyParser("lrp_cost", __doc__)
    parser.add_argument("--archs", default="vgg19")
    parser.add_argument("--dataset", default="pneumoniamnist")
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--img-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--composite", default="epsilon_plus_flat")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    x, y = reference_images(args.dataset, args.n, args.img_size, seed=0)
    results = {
        "command": command_line("lrp_cost", argv),
        "dataset": args.dataset,
        "n_samples": len(x),
        "img_size": args.img_size,
        "batch_size": args.batch_size,
        "composite": args.composite,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "models": [],
    }
    for arch in [a.strip() for a in args.archs.split(",") if a.strip()]:
        r = measure(arch, x, y, args.img_size, args.repeats, args.batch_size, args.composite)
        print(f"{arch}: fwd+bwd {statistics.median(r['forward_backward_s']):.3f}s, "
              f"LRP {statistics.median(r['lrp_s']):.3f}s, ratio {r['ratio_median']:.2f}")
        results["models"].append(r)
    write(results)
    return results
