"""Cost of LRP (and IG) unit scoring against what attribution needs: one frozen-weight forward+backward.

The baseline is one batched forward+backward pass over the reference images with the parameters
frozen (``requires_grad_(False)``): gradients w.r.t. the input only, what any attribution method
needs at least. The LRP time is the whole ``criterion(model, x, y, layers)`` call (the model
canonized or patched in place and restored, the tracing/reference pass on one image and the logit
check, one batched relevance pass; no deep copy). Both are timed in the same process,
interleaved (baseline, LRP, baseline, LRP, ...) so load from other processes hits both alike; the
ratio is taken per pair and its median reported (target: at most 2x).

IG is compared with a direct captum call doing the same integral: ``captum.attr.IntegratedGradients``
on the input, same steps and internal batch, against medprune's ``ig`` criterion (default
``path="input"``: conductance at every unit layer from one pass over the interpolation steps),
interleaved likewise (target: ratio at most 1).

    MEDPRUNE_DATA=/work/shared/data medprune study lrp_cost --archs vgg19,resnet50,vit_b16

Writes benchmarks/results/lrp_cost.{json,md}. Untrained 32 px models: cost does not depend on weights.
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


def frozen_forward_backward(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """The baseline: one batched forward+backward, parameters frozen, gradient w.r.t. the input only."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        xi = x.detach().requires_grad_(True)
        torch.autograd.grad(model(xi).gather(1, y[:, None]).sum(), xi)
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def interleaved(first, second, repeats: int) -> tuple[list[float], list[float]]:
    """Seconds of ``first()`` and ``second()``, alternated ``repeats`` times after one warm-up each."""
    first(), second()  # warm-up: lazy imports, allocator growth, kernel selection
    a, b = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        first()
        t1 = time.perf_counter()
        second()
        b.append(time.perf_counter() - t1)
        a.append(t1 - t0)
    return a, b


def _pairs(base: list[float], other: list[float]) -> dict:
    ratios = [o / b for b, o in zip(base, other, strict=True)]
    return {"ratio_per_pair": ratios, "ratio_median": statistics.median(ratios)}


def measure(arch: str, x: torch.Tensor, y: torch.Tensor, img_size: int, repeats: int, composite: str,
            ig_steps: int) -> dict:
    torch.manual_seed(0)
    model = build_model(arch, num_classes=2, in_chans=1, img_size=img_size).eval()
    layers = find_unit_layers(model)
    lrp = get_criterion("lrp", composite=composite, batch_size=len(x))
    base, lrp_s = interleaved(lambda: frozen_forward_backward(model, x, y), lambda: lrp(model, x, y, layers), repeats)
    row = {
        "arch": arch,
        "params": sum(p.numel() for p in model.parameters()),
        "unit_layers": len(layers),
        "units": sum(layer.size for layer in layers),
        "frozen_fwd_bwd_s": base,
        "lrp_s": lrp_s,
        **_pairs(base, lrp_s),
    }
    if ig_steps:
        from captum.attr import IntegratedGradients

        internal = get_criterion("ig").internal_batch_size
        ig = get_criterion("ig", n_steps=ig_steps, method="riemann_right")
        direct = IntegratedGradients(model)

        def captum_call():
            with torch.no_grad():
                target = model(x).argmax(1)  # as the criterion does without targets
            direct.attribute(x, baselines=torch.zeros_like(x), target=target, n_steps=ig_steps,
                             method="riemann_right", internal_batch_size=internal)

        captum_s, ig_s = interleaved(captum_call, lambda: ig(model, x, None, layers), repeats)
        row["ig"] = {"n_steps": ig_steps, "internal_batch_size": internal, "captum_input_ig_s": captum_s,
                     "ig_criterion_s": ig_s, **_pairs(captum_s, ig_s)}
    return row


def write(results: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    with atomic_file(RESULTS / "lrp_cost.json", "w") as fh:
        fh.write(json.dumps(results, indent=2))
    lines = [
        "# LRP scoring cost vs one frozen-weight forward+backward pass",
        "",
        f"Command: `{results['command']}`",
        "",
        f"{results['n_samples']} {results['dataset']} train images at {results['img_size']} px in one batch, "
        f"composite `{results['composite']}`, {results['repeats']} interleaved repeats, torch {results['torch']} on "
        f"{results['cpu']} ({results['threads']} threads, load average at start {results['load_average']}, "
        f"at end {results['load_average_end']}). Untrained weights (cost does not depend on their values). "
        "Baseline: one batched forward+backward with frozen parameters (input gradient only).",
        "",
        "| model | params | unit layers | frozen fwd+bwd median (s) | LRP median (s) | LRP / frozen fwd+bwd "
        "(median of pairs) | ≤ 2× |",
        "|---|---:|---:|---:|---:|---:|:---:|",
    ]
    for r in results["models"]:
        lines.append(
            f"| {r['arch']} | {r['params'] / 1e6:.1f}M | {r['unit_layers']} | "
            f"{statistics.median(r['frozen_fwd_bwd_s']):.3f} | {statistics.median(r['lrp_s']):.3f} | "
            f"{r['ratio_median']:.2f} | {'yes' if r['ratio_median'] <= 2 else 'NO'} |"
        )
    lines += ["", "The LRP time is the whole criterion call: canonizing (CNNs) or patching (ViT) the model in place "
              "and restoring it, the one-image tracing/reference pass and logit check, and one batched relevance "
              "pass (no deep copy, no input relevance)."]
    igs = [r for r in results["models"] if "ig" in r]
    if igs:
        lines += [
            "",
            f"IG: medprune's `ig` criterion (conductance at every unit layer, one pass over the steps) vs a direct "
            f"`captum.attr.IntegratedGradients` call on the input, {igs[0]['ig']['n_steps']} right-Riemann steps, "
            f"internal batch {igs[0]['ig']['internal_batch_size']} images, interleaved.",
            "",
            "| model | captum IG median (s) | `ig` criterion median (s) | criterion / captum (median of pairs) | ≤ 1× |",
            "|---|---:|---:|---:|:---:|",
        ]
        for r in igs:
            g = r["ig"]
            lines.append(f"| {r['arch']} | {statistics.median(g['captum_input_ig_s']):.3f} | "
                         f"{statistics.median(g['ig_criterion_s']):.3f} | {g['ratio_median']:.2f} | "
                         f"{'yes' if g['ratio_median'] <= 1 else 'NO'} |")
    with atomic_file(RESULTS / "lrp_cost.md", "w") as fh:
        fh.write("\n".join(lines) + "\n")


@study("lrp_cost", outputs=("lrp_cost.json", "lrp_cost.md"))
def main(argv: list[str] | None = None) -> dict:
    parser = StudyParser("lrp_cost", __doc__)
    parser.add_argument("--archs", default="vgg19")
    parser.add_argument("--dataset", default="pneumoniamnist")
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--img-size", type=int, default=32)
    parser.add_argument("--ig-steps", type=int, default=8, help="IG steps for the captum comparison (0: skip)")
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
        "composite": args.composite,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "models": [],
    }
    for arch in [a.strip() for a in args.archs.split(",") if a.strip()]:
        r = measure(arch, x, y, args.img_size, args.repeats, args.composite, args.ig_steps)
        print(f"{arch}: frozen fwd+bwd {statistics.median(r['frozen_fwd_bwd_s']):.3f}s, "
              f"LRP {statistics.median(r['lrp_s']):.3f}s, ratio {r['ratio_median']:.2f}"
              + (f"; IG/captum {r['ig']['ratio_median']:.2f}" if "ig" in r else ""), flush=True)
        results["models"].append(r)
        # written after every model, so a long run on a loaded machine leaves the finished models behind
        results["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
        write(results)
    return results
