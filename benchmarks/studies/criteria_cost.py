"""Scoring cost of every criterion relative to one frozen-weight forward+backward pass over the same references.

    medprune study criteria_cost [--n-per-class 10] [--criteria lrp,dlb,ig,taylor,magnitude,random] [--threads 1]
                                 [--checkpoint MODEL=PATH ...]

For each PneumoniaMNIST baseline (benchmarks/results/baselines.json, or ``--checkpoint`` for a model
whose recorded checkpoint is not in this cache) and criterion: the whole criterion
call scoring all units on 2 x n-per-class confidence-sampled train images (as ``prune`` calls it:
targets are the labels), against the baseline of ``lrp_cost``: one batched forward+backward with the
parameters frozen (input gradient only), timed interleaved (``lrp_cost.interleaved``: baseline,
criterion, baseline, ...; the ratio of each pair, median over pairs) with each call's process CPU
time beside it. ``ig`` runs as the paper grid runs it (``path=input``, 32 steps). The focused
LRP / IG-vs-captum / DLB comparison is ``lrp_cost``; this study covers every criterion on the trained
checkpoints. Writes benchmarks/results/criteria_cost.{json,md}.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

from toolchain.atomic import atomic_file

from .lrp_cost import frozen_forward_backward, interleaved
from .registry import RESULTS, StudyParser, command_line, study


def _pairs(model, crit, x, y, layers, repeats: int):
    """``lrp_cost.interleaved`` of the frozen-weight baseline and the whole criterion call (as ``prune`` calls it)."""
    return interleaved(lambda: frozen_forward_backward(model, x, y),
                       lambda: crit(model, x if crit.needs_data else None, y, layers), repeats)


@study("criteria_cost", outputs=("criteria_cost.json", "criteria_cost.md"))
def main(argv: list[str] | None = None) -> None:
    import torch

    from toolchain.importance import available, get_criterion
    from toolchain.prune_eval import load_context, reference_inputs
    from toolchain.units import find_unit_layers

    ap = StudyParser("criteria_cost", __doc__)
    ap.add_argument("--n-per-class", type=int, default=10)
    ap.add_list("--criteria", default="lrp,dlb,ig,taylor,magnitude,random", choices=available(), help="criteria")
    ap.add_list("--models", default="vgg19,resnet50,vit_b16", help="PneumoniaMNIST baselines (baselines.json)")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved pairs per criterion (after one warm-up)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 on a machine shared with other jobs)")
    ap.add_argument("--checkpoint", action="append", default=[], metavar="MODEL=PATH",
                    help="score this PneumoniaMNIST checkpoint for MODEL instead of baselines.json's")
    args = ap.parse_args(argv)
    bad = [c for c in args.checkpoint if "=" not in c]
    if bad:
        ap.error(f"--checkpoint wants MODEL=PATH, got {bad[0]!r}")
    torch.set_num_threads(args.threads)
    doc = json.loads((RESULTS / "baselines.json").read_text())
    ckpts = {r["model"]: r["checkpoint"] for r in doc["runs"] if r["data"] == "pneumoniamnist"}
    ckpts.update(c.split("=", 1) for c in args.checkpoint)
    rows = []
    for model_name in args.models:
        ctx = load_context(ckpts[model_name], "pneumoniamnist")
        x, y, _ = reference_inputs(ctx, args.n_per_class, "confidence", 0, pool_per_class=200)
        model = ctx.model.eval()
        layers = find_unit_layers(model)
        for name in args.criteria:
            crit = get_criterion(name, **({"path": "input"} if name == "ig" else {}))
            load = [round(v, 2) for v in os.getloadavg()]
            base, score, cpu = _pairs(model, crit, x, y, layers, args.repeats)
            ratios = [s / b for b, s in zip(base, score, strict=True)]
            rows.append({"model": model_name, "checkpoint": ckpts[model_name], "checkpoint_sha256": ctx.sha256,
                         "criterion": name, "n": len(x),
                         "score_s": score, "frozen_fwd_bwd_s": base, "ratio_per_pair": ratios,
                         "ratio_median": statistics.median(ratios), "cpu_ratio_median": cpu["cpu_ratio_median"],
                         "load_average": load})
            print(f"{model_name:9s} {name:10s} {statistics.median(score):7.2f} s = "
                  f"{statistics.median(ratios):6.2f} x frozen fwd+bwd (CPU {cpu['cpu_ratio_median']:.2f})", flush=True)
    out = {"command": command_line("criteria_cost", argv), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "machine": platform.machine(), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "repeats": args.repeats, "rows": rows}
    with atomic_file(RESULTS / "criteria_cost.json", "w") as fh:
        fh.write(json.dumps(out, indent=1))
    write_md(out)
    print(f"wrote {RESULTS / 'criteria_cost.md'}")


def write_md(out: dict) -> None:
    """criteria_cost.md from the results dict (also re-renders a committed criteria_cost.json)."""
    rows = out["rows"]
    lines = ["# Criterion scoring cost vs one frozen-weight forward+backward pass", "",
             f"Command: `{out['command']}` ({out['created']}, torch {out['torch']}, {out['threads']} thread(s)). "
             f"{rows[0]['n'] if rows else 0} confidence-sampled PneumoniaMNIST train images per trained checkpoint "
             "(targets: the labels), each criterion with its default options as `prune` runs it (batches of 16 for "
             "DLB and Taylor, so 20 images are two batches; LRP one batch of up to 64). Baseline: one batched "
             "forward+backward with frozen parameters (input gradient "
             f"only), as in `lrp_cost.md`; baseline and criterion alternated {out['repeats']} times after one warm-up, "
             "ratio per pair, median reported; the CPU-time ratio counts this process's work only. "
             + ("`ig` runs as in the paper grid (`path=input`, 32 steps): its ratio is ~32 steps' worth of passes, not "
                "the captum comparison of `lrp_cost.md`." if "ig" in {r["criterion"] for r in rows} else
                "`ig` not measured here: its cost against a direct captum call is in `lrp_cost.md`."),
             "", "Checkpoints: " + ", ".join(f"{m} `{Path(c).parent.name}`" for m, c in
                                         dict((r["model"], r["checkpoint"]) for r in rows).items()) + ".",
             "", "| model | criterion | score median (s) | frozen fwd+bwd median (s) | × frozen fwd+bwd | CPU-time ratio "
             "| load average at start |", "|---|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['criterion']} | {statistics.median(r['score_s']):.3f} | "
              f"{statistics.median(r['frozen_fwd_bwd_s']):.3f} | {r['ratio_median']:.2f} | {r['cpu_ratio_median']:.2f} | "
              f"{r['load_average'][0]:.1f} |" for r in rows]
    with atomic_file(RESULTS / "criteria_cost.md", "w") as fh:
        fh.write("\n".join(lines) + "\n")
