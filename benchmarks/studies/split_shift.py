"""Val vs test of the selection-split design's dense models: how far each moves from its val split to its test set.

    MEDPRUNE_DATA=/work/shared/data medprune study split_shift [--checkpoint data/model=PATH ...] [--n-boot 2000]

A report, nothing is chosen from it. The recovery_selection design (``selection_split_preregistration.md``)
chooses every pruned model on a val split carved from train (PneumoniaMNIST: official val + 20 % of train;
chest_xray_224: 25 % of train). Its chest_xray_224 ResNet50 models chosen on val fail on test, and the dense
model itself is much weaker on Kermany's test set than on that val. This study measures that shift for
each of the design's four dense checkpoints (each loaded with its recorded split: ``load_context`` and the
loaders' ``check_split``; the design's split is checked with ``recovery_selection.check_design_split``).

For each model, on val and on test: per-class sensitivity (exact Clopper-Pearson 95 % interval, n = the
class's images), accuracy (Clopper-Pearson), balanced accuracy and AUC (class-stratified bootstrap), all
from ``toolchain.metrics.compute_metrics``; the predicted-class mix (share of images predicted as each
class, Clopper-Pearson) beside the true mix; and each val − test difference with a 95 % percentile
interval from bootstrapping the two splits independently (class-stratified within each: the splits are
different images, so there is no pairing; the class counts of each split stay fixed, as in every
interval of this project, ``toolchain.intervals``).

Writes benchmarks/results/split_shift.{json,md,png}.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from toolchain.errors import ConfigError

from ._pairs import publish, save_png
from .registry import StudyParser, command_line, study

# the design's dense checkpoints (recovery_selection.md), under $MEDPRUNE_CACHE/checkpoints/
DESIGN_CHECKPOINTS = {"pneumoniamnist/vgg19": "vgg19-pneumoniamnist-77f2cb2c5c0f",
                      "pneumoniamnist/resnet50": "resnet50-pneumoniamnist-06f2bd045960",
                      "chest_xray_224/vgg19": "vgg19-chest_xray_224-997b1508c809",
                      "chest_xray_224/resnet50": "resnet50-chest_xray_224-527167e69c44"}
N_BOOT = 2000
SENS_TOLERANCE_PTS = 2.0  # deploy's per-class sensitivity tolerance (DeployConfig.sens_tolerance), for scale


def predicted_share(c: int):
    """The share of images predicted as class ``c``, as a weighted metric (``toolchain.metrics.Metric``)."""
    def share(y: np.ndarray, probs: np.ndarray, w: np.ndarray) -> np.ndarray:
        return w @ (probs.argmax(axis=1) == c) / w.sum(axis=1)
    return share


def _unpaired_diff(fn, val: tuple, test: tuple, n_boot: int, seed: int) -> list[float] | None:
    """95 % percentile interval of ``fn(val) - fn(test)``, each split resampled on its own (class-stratified)."""
    from toolchain.intervals import bootstrap_replicates, percentile_interval

    (yv, pv), (yt, pt) = val, test
    a = bootstrap_replicates(yv, lambda w: fn(yv, pv, w), n_boot, seed)
    b = bootstrap_replicates(yt, lambda w: fn(yt, pt, w), n_boot, seed + 1)
    ci = percentile_interval(a - b)
    return list(ci) if ci else None


def _figure(value, ci, n) -> dict:
    return {"value": value, "ci": list(ci) if ci else None, "n": int(n)}


def split_shift(y_val, p_val, y_test, p_test, class_names: Sequence[str], *, n_boot: int = N_BOOT,
                seed: int = 0) -> dict:
    """Val vs test of one model's class probabilities: ``rows`` of figures (value, 95 % interval, n per split,
    and the val − test difference with its interval), the true and predicted class mix, both splits' metrics.

    >>> y = np.array([0, 0, 1, 1]); p = np.eye(2)[[0, 0, 1, 1]]
    >>> split_shift(y, p, y, p, ["a", "b"], n_boot=50)["rows"][0]["diff"]
    {'value': 0.0, 'ci': [0.0, 0.0]}
    """
    from toolchain.metrics import compute_metrics

    names = list(class_names)
    if len(set(names)) != len(names) or len(names) < 2:
        raise ValueError(f"class_names must be >= 2 distinct names, got {names}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    splits = {"val": (np.asarray(y_val), np.asarray(p_val, dtype=np.float64)),
              "test": (np.asarray(y_test), np.asarray(p_test, dtype=np.float64))}
    metrics = {s: compute_metrics(y, p, names, n_boot=n_boot, seed=seed) for s, (y, p) in splits.items()}
    return {"rows": _rows(names, splits, metrics, n_boot, seed), "mix": _mix(names, splits), "metrics": metrics}


def _rows(names, splits, metrics, n_boot, seed) -> list[dict]:
    """Accuracy, balanced accuracy, AUC and each class's sensitivity: val, test and val − test."""
    from toolchain.metrics import metric_function

    figures = [("accuracy", "accuracy", None), ("balanced accuracy", "balanced_accuracy", None),
               ("AUC", "auc", None)] + [(f"sensitivity {c}", f"sensitivity:{c}", c) for c in names]
    rows = []
    for label, metric, cls in figures:
        row = {"figure": label, "metric": metric, "class": cls}
        for s, m in metrics.items():
            src = m if cls is None else m["per_class"][cls]
            key = "sensitivity" if cls else metric
            row[s] = _figure(src[key], src.get(f"{key}_ci"), src["support"] if cls else m["n"])
        value = (None if row["val"]["value"] is None or row["test"]["value"] is None
                 else row["val"]["value"] - row["test"]["value"])
        row["diff"] = {"value": value, "ci": _unpaired_diff(metric_function(metric, names), splits["val"],
                                                            splits["test"], n_boot, seed)}
        rows.append(row)
    return rows


def _mix(names, splits) -> list[dict]:
    """Per class and split: the true share (the split's prevalence) and the predicted share with its interval."""
    from toolchain.intervals import clopper_pearson

    out = []
    for c, name in enumerate(names):
        row = {"class": name}
        for s, (y, p) in splits.items():
            n, said = len(y), int((p.argmax(axis=1) == c).sum())
            row[s] = {"true": float((y == c).mean()), "predicted": _figure(said / n, clopper_pearson(said, n), n)}
        out.append(row)
    return out


def resolve_checkpoints(given: Sequence[str]) -> dict[str, str]:
    """``data/model -> path``: the design's four checkpoints, ``--checkpoint data/model=PATH`` replacing
    any of them; ConfigError (one line) before any work when one is malformed, missing or off the design."""
    from toolchain.models.checkpoint import resolve_checkpoint
    from toolchain.settings import cache_dir

    from .recovery_selection import check_design_split

    pairs = dict(item.split("=", 1) for item in given if "=" in item)
    if len(pairs) != len(given):
        raise ConfigError("--checkpoint takes data/model=PATH")
    unknown = sorted(set(pairs) - set(DESIGN_CHECKPOINTS))
    if unknown:
        raise ConfigError(f"--checkpoint {unknown[0]}: not one of the design's {', '.join(DESIGN_CHECKPOINTS)}")
    out = {}
    for pair, name in DESIGN_CHECKPOINTS.items():
        path = str(resolve_checkpoint(pairs.get(pair) or cache_dir() / "checkpoints" / name / "model.safetensors"))
        check_design_split(path, pair.split("/")[0])
        out[pair] = path
    return out


def measure(pair: str, path: str, n_boot: int, seed: int) -> dict:
    """Predict val and test with the dense checkpoint (its recorded split) and compute their shift."""
    from toolchain.evaluate import predict
    from toolchain.prune_eval import load_context

    ctx = load_context(path)
    (pv, yv), (pt, yt) = (predict(ctx.model, ctx.ds, split, ctx.preprocess) for split in ("val", "test"))
    data, model = pair.split("/")
    tc = ctx.meta.get("train_config") or {}
    shift = split_shift(yv, pv, yt, pt, list(ctx.ds.class_names), n_boot=n_boot, seed=seed)
    return {"data": data, "model": model, "checkpoint": path, "sha256": ctx.sha256,
            "split": {k: tc.get(k) for k in ("val_from_train", "val_fraction", "seed")},
            "class_names": list(ctx.ds.class_names), **shift}


def _pts(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:+.1f}"


def _row(run: dict, cls: str) -> dict:
    return next(r for r in run["rows"] if r["class"] == cls)


def findings(report: dict) -> list[str]:
    """Conclusions read from the numbers; a shift counts only where the difference's interval excludes 0."""
    out, shifted = [], []
    for run in report["runs"]:
        sens = [r for r in run["rows"] if r["class"]]
        worst = max(sens, key=lambda r: r["diff"]["value"] or 0.0)
        ci = worst["diff"]["ci"] or [None, None]
        real = ci[0] is not None and ci[0] > 0
        shifted += [run] if real else []
        mix = next(m for m in run["mix"] if m["class"] == worst["class"])
        out.append(f"{run['data']} {run['model']}: {worst['figure']} {worst['val']['value']:.3f} on val "
                   f"(n={worst['val']['n']}) vs {worst['test']['value']:.3f} on test (n={worst['test']['n']}), "
                   f"val − test {_pts(worst['diff']['value'])} pts [95 % CI {_pts(ci[0])}, {_pts(ci[1])}]"
                   + (" — lower on test beyond the interval" if real else " — no drop beyond the interval")
                   + f"; {worst['class']} is {mix['test']['true']:.0%} of test and predicted for "
                     f"{mix['test']['predicted']['value']:.0%} of it (val: {mix['val']['true']:.0%} true, "
                     f"{mix['val']['predicted']['value']:.0%} predicted).")
    aucs = [(run, next(r for r in run["rows"] if r["metric"] == "auc")) for run in report["runs"]]
    lower = [run for run, r in aucs if r["diff"]["ci"] and r["diff"]["ci"][0] > 0]
    out.append("AUC (ranking, no threshold) val → test: " + "; ".join(
        f"{run['data']} {run['model']} {r['val']['value']:.3f} → {r['test']['value']:.3f} "
        f"(val − test {_pts(r['diff']['value'])} pts [95 % CI {_pts((r['diff']['ci'] or [None])[0])}, "
        f"{_pts((r['diff']['ci'] or [None, None])[1])}])" for run, r in aucs)
        + f". It is lower on test beyond the interval for {len(lower)} of {len(aucs)} models"
        + (": the shift is not only an operating point that a threshold could move back, the models also "
           "rank the test images less well." if lower else "."))
    out.append(f"{len(shifted)} of {len(report['runs'])} dense models lose sensitivity on some class from val to "
               "test beyond the interval; the largest of these drops is "
               + (f"{max(100 * _worst_drop(r) for r in shifted):.0f} pts, against deploy's "
                  f"{SENS_TOLERANCE_PTS:g}-pt per-class tolerance." if shifted else "none."))
    out.append("Implication: a val carved from train is drawn from the training distribution, so a model chosen "
               "on it (a pruning ratio, a recovered model, a temperature) is chosen for that distribution; it "
               "cannot select against a shift that only the test set shows, whatever its cause (a different site, "
               "period, scanner or labelling)"
               + ("; where the dense model itself moves this far, a pruned model's extra disagreements with it on "
                  "the shifted images are not visible on val either." if shifted else "."))
    out.append("What a user can do: take val from the target site or distribution (deploy --data pointing at "
               "site data with its own val split); calibrate on site data (deploy's temperature is fit on val, "
               "so a site val makes it a site calibration); fit per-class decision thresholds on a site val "
               "and report them on separate site test images. None of these is done here: the test sets "
               "above were read to report the shift, not to choose anything.")
    return out


def _worst_drop(run: dict) -> float:
    return max(r["diff"]["value"] or 0.0 for r in run["rows"] if r["class"])


def _cell(f: dict) -> str:
    ci = f["ci"]
    return f"{f['value']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] ({f['n']})" if ci else f"{f['value']:.3f} ({f['n']})"


def to_markdown(report: dict) -> str:
    lines = ["# Split shift: the selection-split design's dense models on val vs test", "",
             "Generated by `benchmarks/studies/split_shift.py`:", "", "```", report["command"], "```", "",
             "A report: nothing is chosen from it. Each dense checkpoint is loaded with its recorded split. "
             "Cells: value [95 % interval] (n). Sensitivity and accuracy: exact Clopper-Pearson; balanced "
             "accuracy and AUC: class-stratified bootstrap. val − test: percentile interval of "
             f"{report['n_boot']} independent class-stratified bootstraps of each split (seed {report['seed']}). "
             "Predicted mix: share of the split predicted as the class (Clopper-Pearson) beside its true share.",
             "", "## Reading", ""] + [f"- {f}" for f in report["findings"]] + [""]
    for run in report["runs"]:
        lines += [f"## {run['data']} / {run['model']}", "",
                  f"Checkpoint `{Path(run['checkpoint']).parent.name}` (sha256 {run['sha256'][:12]}), split "
                  + ", ".join(f"{k} {v}" for k, v in run["split"].items()) + ".", "",
                  "| figure | val | test | val − test (95 % CI) |", "|---|---:|---:|---:|"]
        for r in run["rows"]:
            d = r["diff"]
            ci = f" [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]" if d["ci"] else ""
            lines.append(f"| {r['figure']} | {_cell(r['val'])} | {_cell(r['test'])} | {d['value']:+.3f}{ci} |")
        lines += ["", "| class | val true | val predicted | test true | test predicted |", "|---|---:|---:|---:|---:|"]
        for m in run["mix"]:
            lines.append(f"| {m['class']} | {m['val']['true']:.3f} | {_cell(m['val']['predicted'])} | "
                         f"{m['test']['true']:.3f} | {_cell(m['test']['predicted'])} |")
        lines.append("")
    lines += ["![per-class sensitivity, val vs test](split_shift.png)", ""]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = report["runs"]
    fig, axes = plt.subplots(1, len(runs), figsize=(3.2 * len(runs), 3.4), squeeze=False, sharey=True)
    for ax, run in zip(axes[0], runs, strict=True):
        sens = [r for r in run["rows"] if r["class"]]
        x = np.arange(len(sens))
        for shift, split, style in ((-0.12, "val", "o"), (0.12, "test", "s")):
            vals = np.array([r[split]["value"] for r in sens])
            lo = np.array([r[split]["ci"][0] for r in sens])
            hi = np.array([r[split]["ci"][1] for r in sens])
            ax.errorbar(x + shift, vals, yerr=[vals - lo, hi - vals], fmt=style, capsize=3,
                        label=f"{split} (n per class: {', '.join(str(r[split]['n']) for r in sens)})")
        ax.set_xticks(x, [r["class"] for r in sens], fontsize=8)
        ax.set_title(f"{run['model']} / {run['data']}", fontsize=9)
        ax.legend(fontsize=6, loc="lower right")
    axes[0][0].set_ylabel("sensitivity (95 % CI)")
    fig.suptitle("Dense models of the selection-split design: per-class sensitivity, val vs test", fontsize=10)
    save_png(fig, path)


@study("split_shift", outputs=("split_shift.json", "split_shift.md", "split_shift.png"))
def main(argv: list[str] | None = None) -> dict:
    p = StudyParser("split_shift", __doc__)
    p.add_argument("--checkpoint", action="append", default=[], metavar="DATA/MODEL=PATH",
                   help=f"replace one of the design's dense checkpoints ({', '.join(DESIGN_CHECKPOINTS)})")
    p.add_argument("--n-boot", type=int, default=N_BOOT, help="bootstrap replicates per split [default: %(default)s]")
    p.add_argument("--seed", type=int, default=0)
    p.add_out()
    a = p.parse_args(argv)
    if a.n_boot < 100:
        raise ConfigError(f"--n-boot must be >= 100 for a 95 % percentile interval, got {a.n_boot}")
    paths = resolve_checkpoints(a.checkpoint)
    runs = []
    for pair, path in paths.items():
        print(f"== {pair}: {path}", flush=True)
        runs.append(measure(pair, path, a.n_boot, a.seed))
    report = {"schema": "medprune.split_shift/1", "command": command_line("split_shift", argv),
              "generated": time.strftime("%Y-%m-%d %H:%M:%S"), "n_boot": a.n_boot, "seed": a.seed, "runs": runs}
    return publish(a.out, "split_shift", report, findings, to_markdown, plot)
