"""Does pruning break calibration, and does temperature scaling (fit on val) repair it?

    MEDPRUNE_DATA=/work/shared/data medprune study ece_study \
        [--pairs pneumoniamnist:vgg19,pneumoniamnist:resnet50,pneumoniamnist:vit_b16] \
        [--criterion lrp] [--sampling clustering] [--ratios 0.3,0.5,0.7]

For each baseline checkpoint: units scored once (criterion, 10 reference images per class), the
model masked at each ratio, and on the test split (never used for fitting) the ECE, NLL and Brier
score of (a) the model as is and (b) the model with one temperature fit on the validation split
and folded into its classifier (``toolchain.temperature``, what ``medprune deploy`` packages).
Accuracy is the same for (a) and (b) by construction, so it is reported once.

Writes benchmarks/results/ece_study.{json,md,png}.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from toolchain.errors import ConfigError

from ._pairs import add_pair_arguments, publish, resolve_pairs, save_png
from .registry import StudyParser, command_line, study

DEFAULT_PAIRS = ("pneumoniamnist:vgg19", "pneumoniamnist:resnet50", "pneumoniamnist:vit_b16")


def scores_of(z: np.ndarray, y: np.ndarray) -> dict:
    """Calibration and accuracy of logits ``z`` for labels ``y``."""
    from toolchain.metrics import expected_calibration_error
    from toolchain.temperature import nll, softmax

    p = softmax(z)
    onehot = np.eye(z.shape[1])[y]
    return {"accuracy": float((p.argmax(1) == y).mean()), "ece": expected_calibration_error(y, p),
            "nll": nll(z, y),
            "brier": float(((p - onehot) ** 2).sum(1).mean()),
            "mean_confidence": float(p.max(1).mean())}


def reliability(z: np.ndarray, y: np.ndarray, bins: int = 10) -> dict:
    """Per confidence bin: mean confidence, accuracy, count (for the reliability diagram)."""
    from toolchain.temperature import softmax

    p = softmax(z)
    conf, correct = p.max(1), p.argmax(1) == y
    edges = np.linspace(0, 1, bins + 1)
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            rows.append({"lo": float(lo), "hi": float(hi), "n": int(sel.sum()),
                         "confidence": float(conf[sel].mean()), "accuracy": float(correct[sel].mean())})
    return {"bins": rows}


def measure(dataset: str, model_name: str, checkpoint: str, criterion: str, sampling: str, ratios: list[float],
            n_per_class: int, seed: int) -> dict:
    from toolchain.evaluate import predict_logits
    from toolchain.importance import get_criterion
    from toolchain.masking import apply_masks
    from toolchain.prune_eval import RatioEvaluator, load_context, reference_inputs, score_units
    from toolchain.temperature import choose_temperature
    from toolchain.units import find_unit_layers

    ctx = load_context(checkpoint)
    layers = find_unit_layers(ctx.model)
    x, y, _ = reference_inputs(ctx, n_per_class, sampling, seed, pool_per_class=256)
    scores, seconds = score_units(ctx.model, get_criterion(criterion), x, y, layers)
    ev = RatioEvaluator(ctx, scores, layers)
    rows = []
    for ratio in [0.0, *ratios]:
        model = ctx.model if ratio == 0 else apply_masks(ctx.model, ev.masks(ratio))
        zv, yv = predict_logits(model, ctx.ds, "val", ctx.preprocess)
        zt, yt = predict_logits(model, ctx.ds, "test", ctx.preprocess)
        zt = zt.astype(np.float64)
        choice = choose_temperature(zv, yv)
        t = choice["temperature"]
        rows.append({"ratio": ratio, "temperature": t, "fitted_temperature": choice["fitted_temperature"],
                     "applied": choice["applied"], "uncalibrated": scores_of(zt, yt),
                     "calibrated": scores_of(zt / t, yt),
                     "reliability": {"uncalibrated": reliability(zt, yt), "calibrated": reliability(zt / t, yt)}})
        print(f"   {model_name} ratio {ratio:.2f}: T {t:.3f} (fitted {choice['fitted_temperature']:.3f}), test ECE {rows[-1]['uncalibrated']['ece']:.3f} → "
              f"{rows[-1]['calibrated']['ece']:.3f}", flush=True)
    return {"dataset": dataset, "model": model_name, "checkpoint": checkpoint, "sha256": ctx.sha256,
            "criterion": criterion, "sampling": sampling, "score_seconds": round(seconds, 2), "rows": rows}


def findings(report: dict) -> list[str]:
    """Conclusions read from the numbers (a claim that fails is stated as such)."""
    out = []
    pruned = [(run, row) for run in report["runs"] for row in run["rows"] if row["ratio"] > 0]
    if not pruned:
        return out
    worse = [(run, row) for run, row in pruned
             if row["uncalibrated"]["ece"] > run["rows"][0]["uncalibrated"]["ece"]]
    applied = [(run, row) for run, row in pruned if row.get("applied", True)]
    fixed = [(run, row) for run, row in applied if row["calibrated"]["ece"] < row["uncalibrated"]["ece"]]
    nll_fixed = [(run, row) for run, row in applied if row["calibrated"]["nll"] <= row["uncalibrated"]["nll"] + 1e-12]
    out.append(f"Pruning raised test ECE above the dense model's in {len(worse)} of {len(pruned)} pruned "
               f"models.")
    out.append(f"The fitted temperature lowered val ECE, and so was applied, in {len(applied)} of {len(pruned)} "
               f"pruned models (elsewhere T = 1 is kept). Where applied, it lowered test ECE in {len(fixed)} of "
               f"{len(applied)} and test NLL in {len(nll_fixed)} of {len(applied)}.")
    for run, row in applied:
        if row["calibrated"]["ece"] >= row["uncalibrated"]["ece"]:
            out.append(f"Not improved: {run['dataset']}/{run['model']} at {row['ratio']:.0%} (test ECE "
                       f"{row['uncalibrated']['ece']:.3f} → {row['calibrated']['ece']:.3f}, T "
                       f"{row['temperature']:.2f}): the temperature that is best on val does not transfer to "
                       "test for this model.")
    mean_u = np.mean([row["uncalibrated"]["ece"] for _, row in pruned])
    mean_c = np.mean([row["calibrated"]["ece"] for _, row in pruned])
    out.append(f"Mean test ECE over all pruned models: {mean_u:.3f} as pruned → {mean_c:.3f} with the policy.")
    return out


def to_markdown(report: dict) -> str:
    lines = ["# Calibration after pruning: temperature scaling", "",
             "Generated by `benchmarks/studies/ece_study.py`:", "", "```", report["command"], "```", "",
             f"Criterion `{report['criterion']}`, `{report['sampling']}` sampling ({report['n_per_class']} "
             "reference images per class); masked models (units zeroed, identical outputs to removed ones). "
             "T is fit on the validation split (minimum NLL) and applied only when it also lowers the validation ECE "
             "(the `medprune deploy` policy, toolchain.temperature.choose_temperature); every number below is on "
             "the test split. ECE: 15 equal-width "
             "bins of the top-class probability. Ratio 0 is the dense model.", "",
             "| dataset | model | ratio | accuracy | T fitted | applied | ECE | ECE (T) | NLL | NLL (T) | Brier | "
             "Brier (T) |",
             "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for run in report["runs"]:
        for row in run["rows"]:
            u, c = row["uncalibrated"], row["calibrated"]
            lines.append(f"| {run['dataset']} | {run['model']} | {row['ratio']:.2f} | {u['accuracy']:.4f} | "
                         f"{row.get('fitted_temperature', row['temperature']):.3f} | "
                         f"{'yes' if row.get('applied', True) else 'no (T = 1)'} | {u['ece']:.4f} | {c['ece']:.4f} | {u['nll']:.4f} | "
                         f"{c['nll']:.4f} | {u['brier']:.4f} | {c['brier']:.4f} |")
    lines += ["", "## Reading", ""] + [f"- {f}" for f in report["findings"]]
    lines += ["", "![ECE vs ratio and reliability](ece_study.png)", ""]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = report["runs"]
    fig, axes = plt.subplots(2, len(runs), figsize=(3.4 * len(runs), 6.4), squeeze=False)
    for col, run in enumerate(runs):
        ax = axes[0][col]
        ratios = [r["ratio"] for r in run["rows"]]
        ax.plot(ratios, [r["uncalibrated"]["ece"] for r in run["rows"]], "o-", label="as pruned")
        ax.plot(ratios, [r["calibrated"]["ece"] for r in run["rows"]], "s--", label="+ temperature (val)")
        ax.set_title(f"{run['model']} ({run['dataset']})", fontsize=9)
        ax.set_xlabel("pruning ratio")
        ax.set_ylabel("test ECE")
        ax.legend(fontsize=7)
        ax = axes[1][col]
        worst = max((r for r in run["rows"] if r["ratio"] > 0), key=lambda r: r["uncalibrated"]["ece"],
                    default=run["rows"][0])
        for key, style in (("uncalibrated", "o-"), ("calibrated", "s--")):
            bins = worst["reliability"][key]["bins"]
            ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], style, label=key)
        ax.plot([0.5, 1], [0.5, 1], color="grey", lw=0.8)
        ax.set_title(f"reliability at {worst['ratio']:.0%} (T={worst['temperature']:.2f})", fontsize=9)
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        ax.legend(fontsize=7)
    save_png(fig, path, dpi=110)


@study("ece_study", outputs=("ece_study.json", "ece_study.md", "ece_study.png"))
def main(argv: list[str] | None = None) -> dict:
    from toolchain.importance import available
    from toolchain.sampling import STRATEGIES

    p = StudyParser("ece_study", __doc__)
    add_pair_arguments(p, DEFAULT_PAIRS)
    p.add_argument("--criterion", default="lrp", choices=available())
    p.add_argument("--sampling", default="clustering", choices=list(STRATEGIES))
    p.add_list("--ratios", default="0.3,0.5,0.7", kind=float, help="pruning ratios in (0, 1)")
    p.add_argument("--n-per-class", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_out()
    a = p.parse_args(argv)
    ratios = a.ratios
    if not all(0 < r < 1 for r in ratios):
        raise ConfigError(f"--ratios must lie in (0, 1), got {ratios}")
    pairs = resolve_pairs(a.pairs, a.checkpoint)
    torch.manual_seed(a.seed)
    runs = []
    for dataset, model, checkpoint in pairs:
        print(f"== {dataset}:{model}", flush=True)
        runs.append(measure(dataset, model, checkpoint, a.criterion, a.sampling, ratios, a.n_per_class, a.seed))
    report = {"schema": "medprune.calibration/1", "command": command_line("ece_study", argv),
              "generated": time.strftime("%Y-%m-%d %H:%M:%S"), "criterion": a.criterion, "sampling": a.sampling,
              "n_per_class": a.n_per_class, "runs": runs}
    return publish(a.out, "ece_study", report, findings, to_markdown, plot)
