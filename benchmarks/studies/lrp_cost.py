"""Cost of LRP (and IG) unit scoring against what attribution needs: one frozen-weight forward+backward.

The baseline is one batched forward+backward pass over the reference images with the parameters
frozen (``requires_grad_(False)``): gradients w.r.t. the input only, what any attribution method
needs at least. The LRP time is the whole ``criterion(model, x, y, layers)`` call (the model
canonized or patched in place and restored, the tracing/reference pass on one image and the logit
check, one batched relevance pass; no deep copy). Both are timed in the same process,
interleaved (baseline, LRP, baseline, LRP, ...) so load from other processes hits both alike; the
ratio is taken per pair and its median reported (target: at most 2x).

IG is compared with a direct captum call doing the same integral: ``captum.attr.IntegratedGradients``
on the input, same steps, internal batch, zero baseline and targets (the labels, as ``prune`` passes
them), against medprune's ``ig`` criterion (default ``path="input"``: conductance at every unit layer
from one pass over the interpolation steps), interleaved likewise (target: ratio at most 1).

DL-Backtrace (``dlb``) is timed like LRP: the whole criterion call (the model set up in place, the
forward pass under its rule mode, one relevance pass) against the frozen-weight baseline, one batch,
interleaved. Every part also records each call's process CPU time and the median CPU-time ratio of
the pairs: on a shared machine it counts this process's work, not the time it waited for a core.

On a machine whose cores are shared with other jobs, run ``--threads 1``: a 2-thread OpenMP pool
under load times its barrier stalls (one per small op: IG's per-layer arithmetic, DLB's rules) more
than their work.

    MEDPRUNE_DATA=/work/shared/data medprune study lrp_cost --archs vgg19,resnet50,vit_b16 [--parts lrp,ig,dlb]

Writes benchmarks/results/lrp_cost.{json,md}. ``--parts`` measures some parts only: the results file is
re-read and the other parts of each model kept, each part recording the command, time and load it ran
under. Untrained 32 px models: cost does not depend on weights.
"""

from __future__ import annotations

import json
import math
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


def interleaved(first, second, repeats: int) -> tuple[list[float], list[float], dict]:
    """Seconds of ``first()`` and ``second()``, alternated ``repeats`` times after one warm-up each, and the
    process CPU seconds of each call with their per-pair ratios (``cpu``)."""
    first(), second()  # warm-up: lazy imports, allocator growth, kernel selection
    a, b, ca, cb = [], [], [], []
    for _ in range(repeats):
        for fn, wall, cpu in ((first, a, ca), (second, b, cb)):
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            cpu.append(time.process_time() - c0)
            wall.append(time.perf_counter() - t0)
    cpu = _pairs(ca, cb)
    return a, b, {"cpu_s": [ca, cb], "cpu_ratio_per_pair": cpu["ratio_per_pair"], "cpu_ratio_median": cpu["ratio_median"]}


def median_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float, float] | None:
    """Distribution-free interval for the median of exchangeable values: the order statistics ``x_(k)`` and
    ``x_(n+1-k)`` with the largest ``k`` whose coverage ``1 - 2 P(Bin(n, 1/2) < k)`` is at least ``confidence``,
    and that coverage (n = 9 at 95 %: 2nd and 8th of 9, 0.961). None when even ``[min, max]`` falls short
    (fewer than 6 values at 95 %)."""
    xs, n = sorted(values), len(values)
    best = None
    for k in range(1, n // 2 + 1):
        coverage = 1 - 2 * sum(math.comb(n, j) for j in range(k)) / 2**n
        if coverage < confidence:
            break
        best = (xs[k - 1], xs[n - k], coverage)
    return best


def _pairs(base: list[float], other: list[float]) -> dict:
    ratios = [o / b for b, o in zip(base, other, strict=True)]
    ci = median_interval(ratios)
    return {"ratio_per_pair": ratios, "ratio_median": statistics.median(ratios),
            "ratio_ci95": None if ci is None else [ci[0], ci[1]], "ratio_ci95_coverage": None if ci is None else ci[2]}


def _part(arch: str, argv_command: str, **timings) -> dict:
    return {"command": argv_command, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "load_average": [round(v, 2) for v in os.getloadavg()], **timings}


def measure(arch: str, x: torch.Tensor, y: torch.Tensor, args, parts: list[str], command: str) -> dict:
    """The requested parts for one model: {"lrp": ..., "ig": ..., "dlb": ...} (only those asked for)."""
    torch.manual_seed(0)
    model = build_model(arch, num_classes=2, in_chans=1, img_size=args.img_size).eval()
    layers = find_unit_layers(model)
    row = {
        "arch": arch,
        "params": sum(p.numel() for p in model.parameters()),
        "unit_layers": len(layers),
        "units": sum(layer.size for layer in layers),
    }
    if "lrp" in parts:
        start = _part(arch, command)
        lrp = get_criterion("lrp", composite=args.composite, batch_size=len(x))
        base, lrp_s, cpu = interleaved(lambda: frozen_forward_backward(model, x, y), lambda: lrp(model, x, y, layers),
                                       args.repeats)
        # the LRP part stays at the row's top level (the headline keys read it there)
        row.update({"frozen_fwd_bwd_s": base, "lrp_s": lrp_s, **_pairs(base, lrp_s), "lrp_run": {**start, **cpu}})
    if "ig" in parts and args.ig_steps:
        from captum.attr import IntegratedGradients

        start = _part(arch, command)
        internal = get_criterion("ig").internal_batch_size
        ig = get_criterion("ig", n_steps=args.ig_steps, method="riemann_right")
        direct = IntegratedGradients(model)

        def captum_call():  # captum's IG as its docs use it: one call, steps batched by internal_batch_size
            direct.attribute(x, baselines=torch.zeros_like(x), target=y, n_steps=args.ig_steps,
                             method="riemann_right", internal_batch_size=internal)

        captum_s, ig_s, cpu = interleaved(captum_call, lambda: ig(model, x, y, layers), args.repeats)
        row["ig"] = {**start, "n_steps": args.ig_steps, "internal_batch_size": internal, "targets": "labels",
                     "captum_input_ig_s": captum_s, "ig_criterion_s": ig_s, **_pairs(captum_s, ig_s), **cpu}
    if "dlb" in parts:
        start = _part(arch, command)
        dlb = get_criterion("dlb", batch_size=len(x))
        base, dlb_s, cpu = interleaved(lambda: frozen_forward_backward(model, x, y), lambda: dlb(model, x, y, layers),
                                       args.repeats)
        row["dlb"] = {**start, "frozen_fwd_bwd_s": base, "dlb_s": dlb_s, **_pairs(base, dlb_s), **cpu}
    return row


def merge(previous: dict | None, results: dict, row: dict) -> None:
    """Put ``row`` into ``results["models"]``, keeping the parts an earlier run measured and this one did not."""
    old = next((r for r in (previous or {}).get("models", []) if r["arch"] == row["arch"]), None)
    if old is not None:
        legacy = {"command": previous.get("command"), "load_average": previous.get("load_average")}
        kept = {k: v for k, v in old.items() if k not in row}
        if "ratio_median" in kept and "lrp_run" not in kept:
            kept["lrp_run"] = legacy  # written before parts were recorded: the whole run's command
        if "ig" in kept and "command" not in kept["ig"]:
            kept["ig"] = {**legacy, **kept["ig"]}
        row = {**kept, **row}
    archs = [r["arch"] for r in results["models"]]  # a model measured before keeps its place in the tables
    if row["arch"] in archs:
        results["models"][archs.index(row["arch"])] = row
    else:
        results["models"].append(row)


def _runs(rows: list[dict], part: str) -> list[str]:
    """One line per model: the command, time and load its ``part`` was measured under."""
    lines = []
    for r in rows:
        run = r.get("lrp_run") if part == "lrp" else r.get(part)
        if run and run.get("command"):
            when = f"{run['created']}, " if run.get("created") else ""
            lines.append(f"- {r['arch']}: `{run['command']}` ({when}load average at start {run.get('load_average')})")
    return lines


def _cpu(part: dict | None) -> str:
    """The median CPU-time ratio of a part's pairs ('—' for runs that did not record it)."""
    return f"{part['cpu_ratio_median']:.2f}" if part and "cpu_ratio_median" in part else "—"


def _ci(ratios: list[float]) -> str:
    """The 95 % interval of the median ratio (``median_interval``) with the number of pairs behind it."""
    ci = median_interval(ratios)
    return f"{ci[0]:.2f}–{ci[1]:.2f} (n = {len(ratios)})" if ci else f"— (n = {len(ratios)}, too few)"


def _rows(rows: list[dict], part: str, base: str, other: str, target: float) -> list[str]:
    """Table rows of one part (median seconds of both sides, median ratio of pairs with its interval, target
    met), then its runs."""
    out = []
    for r in rows:
        d = r[part]
        out.append(f"| {r['arch']} | {statistics.median(d[base]):.3f} | {statistics.median(d[other]):.3f} | "
                   f"{d['ratio_median']:.2f} | {_ci(d['ratio_per_pair'])} | {_cpu(d)} | "
                   f"{'yes' if d['ratio_median'] <= target else 'NO'} |")
    return out + ["", *_runs(rows, part)]


def write(results: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    with atomic_file(RESULTS / "lrp_cost.json", "w") as fh:
        fh.write(json.dumps(results, indent=2))
    rows = results["models"]
    lines = [
        "# LRP, IG and DL-Backtrace scoring cost vs one frozen-weight forward+backward pass",
        "",
        f"{results['n_samples']} {results['dataset']} train images at {results['img_size']} px in one batch, "
        f"{results['repeats']} interleaved repeats after one warm-up each, torch {results['torch']} on "
        f"{results['cpu']} ({results['threads']} threads). Untrained weights (cost does not depend on their values). "
        "Baseline: one batched forward+backward with frozen parameters (input gradient only). Each part of each "
        "model records the command and load it ran under (below its table); the ratio of each pair is taken "
        "within the pair, so load that hits both alike cancels. The CPU-time ratio is the median over pairs of the "
        "process CPU seconds (this process's work, not the time it waited for a core); the target is judged on "
        "wall time. The 95 % interval of a median ratio is distribution-free (order statistics of the pairs' "
        "ratios, treated as exchangeable: with 9 pairs the 2nd and 8th smallest, coverage 0.961); an interval "
        "that holds the target says the pairs cannot tell the median from it.",
        "",
        f"LRP, composite `{results['composite']}`:",
        "",
        "| model | params | unit layers | frozen fwd+bwd median (s) | LRP median (s) | LRP / frozen fwd+bwd "
        "(median of pairs) | 95 % CI (pairs) | CPU-time ratio | ≤ 2× |",
        "|---|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for r in rows:
        if "ratio_median" in r:
            lines.append(
                f"| {r['arch']} | {r['params'] / 1e6:.1f}M | {r['unit_layers']} | "
                f"{statistics.median(r['frozen_fwd_bwd_s']):.3f} | {statistics.median(r['lrp_s']):.3f} | "
                f"{r['ratio_median']:.2f} | {_ci(r['ratio_per_pair'])} | {_cpu(r.get('lrp_run'))} | "
                f"{'yes' if r['ratio_median'] <= 2 else 'NO'} |"
            )
    lines += ["", "The LRP time is the whole criterion call: canonizing (CNNs) or patching (ViT) the model in place "
              "and restoring it, the one-image tracing/reference pass and logit check, and one batched relevance "
              "pass (no deep copy, no input relevance).", "", *_runs(rows, "lrp")]
    igs = [r for r in rows if "ig" in r]
    if igs:
        lines += [
            "",
            f"IG: medprune's `ig` criterion (conductance at every unit layer, one pass over the steps) vs a direct "
            f"`captum.attr.IntegratedGradients` call on the input, {igs[0]['ig']['n_steps']} right-Riemann steps, "
            f"internal batch {igs[0]['ig']['internal_batch_size']} images, zero baseline, targets: "
            f"{igs[0]['ig'].get('targets', 'predicted class')}, interleaved. Both run the same forward and "
            "input-gradient passes over the steps (the criterion carries the baseline as one more row and stops "
            "its backward pass at the first unit layers); one kernel differs: where a conv's kernel covers its "
            "whole input (VGG's `ConvMlp.fc1`, a 7x7 conv on a 7x7 map at 32 px; ResNet50's last-stage 1x1 convs "
            "on 1x1 maps) the criterion takes its input gradient as one matrix product "
            "(`toolchain/importance/_whole_input_conv.py`), where captum runs torch's oneDNN backward-data.",
            "",
            "| model | captum IG median (s) | `ig` criterion median (s) | criterion / captum (median of pairs) | "
            "95 % CI (pairs) | CPU-time ratio | ≤ 1× |",
            "|---|---:|---:|---:|---:|---:|:---:|",
        ]
        lines += _rows(igs, "ig", "captum_input_ig_s", "ig_criterion_s", 1)
    dlbs = [r for r in rows if "dlb" in r]
    if dlbs:
        lines += [
            "",
            "DL-Backtrace: the whole `dlb` criterion call (the model set up in place, eval and frozen, and restored; "
            "forward pass under its rule mode; one relevance pass to the input) vs the same frozen-weight baseline, "
            "interleaved.",
            "",
            "| model | frozen fwd+bwd median (s) | DLB median (s) | DLB / frozen fwd+bwd (median of pairs) | "
            "95 % CI (pairs) | CPU-time ratio | ≤ 2× |",
            "|---|---:|---:|---:|---:|---:|:---:|",
        ]
        lines += _rows(dlbs, "dlb", "frozen_fwd_bwd_s", "dlb_s", 2)
    with atomic_file(RESULTS / "lrp_cost.md", "w") as fh:
        fh.write("\n".join(lines) + "\n")


PARTS = ("lrp", "ig", "dlb")


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
    parser.add_list("--parts", default=",".join(PARTS), choices=list(PARTS), help="what to measure")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    x, y = reference_images(args.dataset, args.n, args.img_size, seed=0)
    settings = {"dataset": args.dataset, "n_samples": len(x), "img_size": args.img_size,
                "composite": args.composite, "repeats": args.repeats, "threads": torch.get_num_threads()}
    path = RESULTS / "lrp_cost.json"
    previous = json.loads(path.read_text()) if path.exists() else None
    if previous is not None and any(previous.get(k) != v for k, v in settings.items()):
        previous = None  # measured under other settings: not merged
    command = command_line("lrp_cost", argv)
    results = {"command": command, **settings, "torch": torch.__version__,
               "cpu": platform.processor() or platform.machine(),
               "models": list((previous or {}).get("models", []))}
    for arch in [a.strip() for a in args.archs.split(",") if a.strip()]:
        row = measure(arch, x, y, args, args.parts, command)
        print(f"{arch}: " + "; ".join(
            f"{name} {part['ratio_median']:.2f}" for name, part in
            (("LRP/frozen", row if "ratio_median" in row else None), ("IG/captum", row.get("ig")),
             ("DLB/frozen", row.get("dlb"))) if part), flush=True)
        # merged and written after every model, so a long run on a loaded machine leaves the finished models
        merge(previous, results, row)
        write(results)
    return results
