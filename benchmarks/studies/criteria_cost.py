"""Scoring cost of every criterion relative to one forward+backward pass over the same references.

    medprune study criteria_cost [--n-per-class 10] [--criteria lrp,dlb,ig,taylor,magnitude,random]

For each PneumoniaMNIST baseline (benchmarks/results/baselines.json) and criterion: seconds to score all
units on 2 × n-per-class confidence-sampled train images, divided by the median of forward+backward
passes over the same images timed just before and after in the same process (so machine load cancels
as far as it can). Writes benchmarks/results/criteria_cost.{json,md}.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time

from .registry import RESULTS, StudyParser, command_line, study


@study("criteria_cost", outputs=("criteria_cost.json", "criteria_cost.md"))
def main(argv: list[str] | None = None) -> None:
    import torch

    from toolchain.importance import get_criterion
    from toolchain.prune_eval import forward_backward_seconds, load_context, reference_inputs, score_units
    from toolchain.units import find_unit_layers

    ap = StudyParser("criteria_cost", __doc__)
    ap.add_argument("--n-per-class", type=int, default=10)
    from toolchain.importance import available

    ap.add_list("--criteria", default="lrp,dlb,ig,taylor,magnitude,random", choices=available(), help="criteria")
    ap.add_list("--models", default="vgg19,resnet50,vit_b16", help="PneumoniaMNIST baselines (baselines.json)")
    args = ap.parse_args(argv)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    doc = json.loads((RESULTS / "baselines.json").read_text())
    ckpts = {r["model"]: r["checkpoint"] for r in doc["runs"] if r["data"] == "pneumoniamnist"}
    rows = []
    for model_name in args.models:
        ctx = load_context(ckpts[model_name], "pneumoniamnist")
        x, y, _ = reference_inputs(ctx, args.n_per_class, "confidence", 0, pool_per_class=200)
        layers = find_unit_layers(ctx.model)
        for name in args.criteria:
            before = [forward_backward_seconds(ctx.model, x) for _ in range(2)]
            # per-layer captum IG is ~layers x slower; the grids use the one-pass variant, timed here
            options = {"path": "input"} if name == "ig" else {}
            _, seconds = score_units(ctx.model, get_criterion(name, **options), x, y, layers)
            after = [forward_backward_seconds(ctx.model, x) for _ in range(2)]
            fb = statistics.median(before + after)
            rows.append({"model": model_name, "criterion": name, "n": len(x), "score_s": round(seconds, 3),
                         "fwd_bwd_s": round(fb, 3), "ratio": round(seconds / fb, 2),
                         "load_avg": os.getloadavg()[0]})
            print(f"{model_name:9s} {name:10s} {seconds:7.2f} s = {seconds / fb:6.2f} x fwd+bwd", flush=True)
    out = {"command": command_line("criteria_cost", argv), "created": time.strftime("%Y-%m-%d %H:%M:%S"),
           "machine": platform.machine(), "threads": torch.get_num_threads(), "rows": rows}
    (RESULTS / "criteria_cost.json").write_text(json.dumps(out, indent=1))
    lines = ["# Criterion scoring cost vs one forward+backward pass", "",
             f"Command: `{out['command']}` ({out['created']}, {out['threads']} threads). "
             f"{rows[0]['n'] if rows else 0} confidence-sampled PneumoniaMNIST train images per model; "
             "ratio = scoring seconds / median forward+backward seconds over the same images, timed in the "
             "same process before and after. `ig` is run as `path=input` (one pass for all layers, 32 steps), as "
             "in the paper grid.",
             "", "| model | criterion | score s | fwd+bwd s | × fwd+bwd | 1-min load |", "|---|---|---:|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['criterion']} | {r['score_s']:.2f} | {r['fwd_bwd_s']:.3f} | {r['ratio']:.2f} | "
              f"{r['load_avg']:.1f} |" for r in rows]
    (RESULTS / "criteria_cost.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS / 'criteria_cost.md'}")
