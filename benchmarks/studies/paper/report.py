"""The paper-grid report: paper-shaped tables, fidelity tables, figures and the verdict on each claim.

Every number is read from the results JSON written by the sweep; the verdicts come from ``claims``.

    medprune study paper_grid --report-only     # re-render from benchmarks/results/paper_grid.json
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from toolchain.atomic import atomic_file, atomic_path

from .claims import (
    Row,
    _f,
    _mean,
    _ordered,
    _pct,
    judge_claims,
    rows_of,
)

# ---------------------------------------------------------------- tables


def _table(header: list[str], body: list[list[str]], text_columns: int = 2) -> list[str]:
    align = ["---" if i < text_columns else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return lines


def accuracy_table(rows: list[Row], dataset: str, ratios: list[float], field_name: str = "acc") -> list[str]:
    """Model x criterion rows, ratio columns: test metric averaged over samplings (the paper's table)."""
    rs = [r for r in rows if r.dataset == dataset]
    header = ["model", "criterion", "dense"] + [f"{r:g}" for r in ratios] + ["lossless (val-selected)"]
    body = []
    for model in _ordered((r.model for r in rs), MODEL_ORDER):
        for crit in _ordered((r.criterion for r in rs if r.model == model), CRITERION_ORDER):
            cell = [r for r in rs if r.model == model and r.criterion == crit]
            dense = cell[0].dense_acc if field_name == "acc" else cell[0].dense_bal
            vals = [_mean(getattr(r, field_name).get(ratio) for r in cell) for ratio in ratios]
            ll = _mean(r.lossless for r in cell)
            ll_acc = _mean((r.lossless_acc if field_name == "acc" else r.lossless_bal) for r in cell)
            body.append([model, crit, _f(dense)] + [_f(v) for v in vals] + [f"{_pct(ll)} → {_f(ll_acc)}"])
    return _table(header, body)


def lossless_table(rows: list[Row], dataset: str, samplings: list[str]) -> list[str]:
    rs = [r for r in rows if r.dataset == dataset]
    header = ["model", "criterion"] + samplings + ["mean"]
    body = []
    for model in _ordered((r.model for r in rs), MODEL_ORDER):
        for crit in _ordered((r.criterion for r in rs if r.model == model), CRITERION_ORDER):
            cells = {r.sampling: r for r in rs if r.model == model and r.criterion == crit}
            vals = [cells[s].lossless if s in cells else None for s in samplings]
            texts = [f"{_pct(cells[s].lossless)} ({_f(cells[s].lossless_acc)})" if s in cells else "—"
                     for s in samplings]
            free = " (data-free)" if any(c.data_free for c in cells.values()) else ""
            body.append([model, crit + free] + texts + [_pct(_mean(vals))])
    return _table(header, body)


def fidelity_table(rows: list[Row], dataset: str, ratios: list[float], measure: str) -> list[str]:
    rs = [r for r in rows if r.dataset == dataset and r.fidelity]
    keys = [f"{r:g}" for r in ratios] + ["lossless"]
    header = ["model", "criterion"] + [k if k == "lossless" else f"{k}" for k in keys]
    body = []
    for model in _ordered((r.model for r in rs), MODEL_ORDER):
        for crit in _ordered((r.criterion for r in rs if r.model == model), CRITERION_ORDER):
            cell = [r for r in rs if r.model == model and r.criterion == crit]
            texts = []
            for k in keys:
                means = [r.fidelity.get(k, {}).get(f"{measure}_mean") for r in cell]
                stds = [r.fidelity.get(k, {}).get(f"{measure}_std") for r in cell]
                m, s = _mean(means), _mean(stds)
                texts.append("—" if m is None else f"{m:.2f} ± {_f(s, 2)}")
            body.append([model, crit] + texts)
    return _table(header, body)


MODEL_ORDER = ("vgg19", "resnet50", "vit_b16")
CRITERION_ORDER = ("lrp", "dlb", "ig", "taylor", "magnitude", "random")
SAMPLING_ORDER = ("confidence", "random", "clustering")


# ---------------------------------------------------------------- figures


def plot_accuracy(rows: list[Row], dataset: str, ratios: list[float], path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rs = [r for r in rows if r.dataset == dataset]
    models = _ordered((r.model for r in rs), MODEL_ORDER)
    if not models:
        return False
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.4), squeeze=False, sharey=True)
    for ax, model in zip(axes[0], models, strict=True):
        mine = [r for r in rs if r.model == model]
        for crit in _ordered((r.criterion for r in mine), CRITERION_ORDER):
            cell = [r for r in mine if r.criterion == crit]
            ys = [_mean(r.acc.get(x) for r in cell) for x in ratios]
            ax.plot([0.0] + ratios, [cell[0].dense_acc] + ys, marker="o", ms=3, label=crit)
        ax.axhline(mine[0].dense_acc or 0, color="k", ls=":", lw=0.8)
        ax.set_title(model)
        ax.set_xlabel("pruning ratio (units masked)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (mean over samplings)")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"{dataset}: accuracy after masking")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return True


def plot_heatmaps(maps: dict[str, np.ndarray], title: str, path: Path, lossless: float | None) -> bool:
    """Rows: test X-rays; columns: the image, the dense LRP map, the pruned maps at each ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if "dense" not in maps or "images" not in maps:
        return False
    ratio_keys = sorted((k for k in maps if _is_ratio(k)), key=float)
    cols = ["images", "dense"] + ratio_keys + (["lossless"] if "lossless" in maps else [])
    n = len(maps["dense"])
    fig, axes = plt.subplots(n, len(cols), figsize=(1.6 * len(cols), 1.7 * n), squeeze=False)
    for i in range(n):
        for j, col in enumerate(cols):
            ax = axes[i][j]
            ax.set_xticks([]), ax.set_yticks([])
            if col == "images":
                img = maps["images"][i]
                ax.imshow(img[..., 0] if img.ndim == 3 and img.shape[-1] == 1 else img, cmap="gray")
                if "labels" in maps and "class_names" in maps:
                    ax.set_ylabel(str(maps["class_names"][int(maps["labels"][i])]), fontsize=8)
            else:
                m = maps[col][i]
                lim = float(np.abs(m).max()) or 1.0
                ax.imshow(m, cmap="bwr", vmin=-lim, vmax=lim)
            if i == 0:
                label = {"images": "X-ray", "dense": "dense"}.get(col)
                if label is None:
                    label = f"lossless {lossless:g}" if col == "lossless" and lossless is not None else f"pruned {col}"
                ax.set_title(label, fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return True


def _is_ratio(k: str) -> bool:
    try:
        float(k)
        return True
    except ValueError:
        return False


# ---------------------------------------------------------------- the report


def _figure_cell(results: dict, dataset: str, model: str) -> dict | None:
    """The cell whose heatmaps illustrate a model: LRP with clustering sampling when it ran."""
    cells = [c for c in results.get("cells", []) if c["dataset"] == dataset and c["model"] == model and c.get("result")]
    for crit in CRITERION_ORDER:
        for samp in ("clustering", "confidence", "random"):
            for c in cells:
                if c["criterion"] == crit and c["sampling"] == samp:
                    return c
    return None


def write_report(results: dict, out_dir: Path, name: str = "paper_grid",
                 heatmap_loader: Callable[[dict], dict | None] | None = None) -> Path:
    out_dir = Path(out_dir)
    md = render(results, out_dir, name, heatmap_loader)
    path = out_dir / f"{name}.md"
    with atomic_file(path, "w") as fh:
        fh.write(md)
    return path


def render(results: dict, out_dir: Path, name: str, heatmap_loader=None) -> str:
    rows = rows_of(results)
    grid = results.get("grid", {})
    ratios = [float(r) for r in grid.get("ratios", [])]
    samplings = _ordered(grid.get("samplings", []), SAMPLING_ORDER)
    sizes = results.get("sizes", {})
    lines = [f"# Paper grid: attribution-guided pruning at CPU scale ({', '.join(grid.get('datasets', []))})", ""]
    lines += ["Generated by `benchmarks/studies/paper/` from `" + f"{name}.json" + "` (every number below is read "
              "from it).", "", "```", results.get("command") or "(command not recorded)", "```", ""]
    runs = results.get("runs") or []
    n_cells = len(results.get("cells", []))
    done = sum(1 for c in results.get("cells", []) if c.get("result"))
    compute = sum(((c.get("result") or {}).get("timings") or {}).get("total_s", 0.0)
                  for c in _unique_cells(results))
    lines += [f"- cells: {done} of {n_cells} finished ({results.get('counts')} in the last invocation)",
              f"- wall time of the last invocation: {results.get('wall_s', 0):.0f} s; "
              f"all invocations of this grid: {sum(r.get('wall_s', 0) for r in runs):.0f} s over {len(runs)} run(s)"
              f" (interrupted runs resume from the per-cell cache)",
              f"- summed compute time of the distinct cells (one CPU each): {compute:.0f} s"]
    for ds, ds_runs in (results.get("runs_by_dataset") or {}).items():
        if ds_runs:
            lines.append(f"- {ds} swept on its own before: {sum(r.get('wall_s', 0) for r in ds_runs):.0f} s wall over "
                         f"{len(ds_runs)} invocation(s)")
    for ds in grid.get("datasets", []):
        ds_compute = sum(((c.get("result") or {}).get("timings") or {}).get("total_s", 0.0)
                         for c in _unique_cells(results) if c["dataset"] == ds)
        lines.append(f"- {ds}: summed cell compute {ds_compute:.0f} s")
    lines += [
              f"- machine: {results.get('machine', {}).get('processor') or results.get('machine', {}).get('platform')}, "
              f"{results.get('machine', {}).get('ray_cpus')} Ray CPUs ({results.get('machine', {}).get('ray_address')})",
              ""]
    if runs:
        lines += ["| invocation finished (UTC) | wall s | computed | cached | failed | interrupted |",
                  "|---|---:|---:|---:|---:|---|"]
        lines += [f"| {r.get('finished')} | {r.get('wall_s', 0):.0f} | {r.get('computed', 0)} | {r.get('cached', 0)} | "
                  f"{r.get('failed', 0)} | {'yes' if r.get('interrupted') else ''} |" for r in runs]
        lines.append("")
    lines += _method(sizes, results)
    failures = results.get("failures") or []
    missing = [c for c in results.get("cells", []) if not c.get("result")]
    if failures or missing:
        lines += ["## What did not run", ""]
        lines += [f"- {f['stage']} {f['cell']}: {f['error']}" for f in failures]
        if missing:
            lines.append(f"- {len(missing)} grid cells have no result: "
                         + ", ".join(f"{c['dataset']}/{c['model']}/{c['criterion']}/{c['sampling']}"
                                     for c in missing[:12]) + (" …" if len(missing) > 12 else ""))
        lines.append("")

    lines += _caveats(results, _beside(out_dir, "relevance_flow.json"),
                      _beside(out_dir, "baselines.json").get("runs") or [])
    lines += ["## The paper's claims", "", "| # | claim | verdict | measured |", "|---|---|---|---|"]
    claims = judge_claims(results)
    for c in claims:
        lines.append(f"| {c.number} | {c.text} | **{c.verdict}** | {c.evidence} |")
    lines += ["", "Rules (fixed in `benchmarks/studies/paper/claims.py`):", ""]
    lines += [f"{c.number}. {c.rule}." for c in claims]
    lines.append("")

    for ds in _ordered((r.dataset for r in rows), ("pneumoniamnist", "breastmnist", "chest_xray_224")):
        lines += [f"## {ds}", ""]
        lines += _dense_lines(results, ds)
        lines += [f"### Test accuracy per pruning ratio ({ds})", "",
                  "Mean over the sampling strategies; the last column is the lossless ratio selected on val "
                  "→ the test accuracy there.", ""]
        lines += accuracy_table(rows, ds, ratios) + [""]
        lines += [f"### Balanced accuracy per pruning ratio ({ds})", ""]
        lines += accuracy_table(rows, ds, ratios, "bal") + [""]
        lines += [f"### Lossless ratio per model × criterion × sampling ({ds})", "",
                  "Largest lossless ratio found on val (see Method); test accuracy at it in brackets.", ""]
        lines += lossless_table(rows, ds, samplings) + [""]
        lines += [f"### Explanation fidelity after pruning ({ds})", "",
                  "Input-level LRP heatmaps of the dense vs the masked model on the same test images "
                  f"(n = {sizes.get('fidelity_images')}); mean ± std over images, averaged over samplings.", "",
                  "Spearman rank correlation:", ""]
        lines += fidelity_table(rows, ds, ratios, "spearman") + ["", f"Top-{100 * sizes.get('top_fraction', 0.1):.0f} "
                                                                  "% IoU:", ""]
        lines += fidelity_table(rows, ds, ratios, "iou") + [""]
        png = f"{name}_{_slug(ds)}_accuracy.png"
        if plot_accuracy(rows, ds, ratios, out_dir / png):
            lines += [f"![accuracy vs ratio]({png})", ""]
        if heatmap_loader is not None:
            for model in _ordered((r.model for r in rows if r.dataset == ds), MODEL_ORDER):
                cell = _figure_cell(results, ds, model)
                maps = heatmap_loader(cell) if cell else None
                if not maps:
                    continue
                lossless = cell["result"]["lossless"]["ratio"]
                fig = f"{name}_{_slug(ds)}_{model}_heatmaps.png"
                title = (f"{ds} test images, {model}, {cell['criterion']}/{cell['sampling']}: "
                         "input LRP heatmaps, dense vs masked")
                if plot_heatmaps(maps, title, out_dir / fig, lossless if lossless > 0 else None):
                    lines += [f"![{model} heatmaps]({fig})", ""]
    return "\n".join(lines) + "\n"


def _slug(dataset: str) -> str:
    """A file-name-safe dataset name (a dataset given as a path becomes its stem)."""
    import re

    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(dataset).stem) or "data"


def _unique_cells(results: dict) -> list[dict]:
    seen, out = set(), []
    for c in results.get("cells", []):
        if c.get("key") and c["key"] not in seen:
            seen.add(c["key"])
            out.append(c)
    return out


def _dense_lines(results: dict, ds: str) -> list[str]:
    lines = ["| model | checkpoint | img | dense test acc | bal acc | AUC | dense val acc |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for model, m in (results.get("models", {}).get(ds) or {}).items():
        t = (m.get("dense") or {}).get("test") or {}
        v = (m.get("dense") or {}).get("val") or {}
        lines.append(f"| {model} | {m.get('source')} `{str(m.get('sha256'))[:12]}` | {m.get('img_size')} | "
                     f"{_f(t.get('accuracy'))} | {_f(t.get('balanced_accuracy'))} | {_f(t.get('auc'))} | "
                     f"{_f(v.get('accuracy'))} |")
    return lines + [""]


def _method(sizes: dict, results: dict) -> list[str]:
    test = "the whole test split" if not sizes.get("test_limit") else f"a stratified subset of {sizes['test_limit']}"
    val = "the whole val split" if not sizes.get("val_limit") else f"a stratified subset of {sizes['val_limit']}"
    pool = ("the whole train split" if not sizes.get("pool_per_class")
            else f"at most {sizes['pool_per_class']} seeded random train images per class")
    return [
        "## Method", "",
        f"- Reference images: {sizes.get('n_per_class')} per class chosen by each sampling strategy "
        f"(toolchain.sampling; confidence and clustering choose among {pool}). Data-free criteria (magnitude, "
        "random) ignore the references: they are computed once per model and shown under every sampling.",
        f"- Scores are computed once per cell; each ratio masks that fraction of all units ({sizes.get('scope')} "
        "ranking, toolchain.masking via toolchain.prune_eval.RatioEvaluator) and is evaluated on " + test + ".",
        f"- Lossless ratio (toolchain.prune_eval.find_lossless): searched on {val}, never on test, so the ratio is "
        "not selected on the data it is judged by. Lossless = val accuracy drops by at most "
        f"{sizes.get('lossless_tolerance')} points and no class's val sensitivity by more than "
        f"{sizes.get('lossless_sens_tolerance')} points; coarse scan every {sizes.get('lossless_coarse_step')} then "
        f"bisection to {sizes.get('lossless_resolution')}. Test metrics are then reported at that ratio.",
        f"- Fidelity: {sizes.get('fidelity_images')} class-balanced test images; input-level LRP relevance "
        "(summed over channels) of the dense and of the masked model for the true class; Spearman correlation "
        f"and IoU of the top {100 * sizes.get('top_fraction', 0.1):.0f} % pixels.",
        "- Masked models (units zeroed) are evaluated, not physically shrunk ones: a masked unit emits exactly 0, "
        "so the accuracy equals that of the removed model, and masking is what the paper evaluates.", "",
    ]


def _beside(out_dir: Path, name: str) -> dict:
    """Another benchmark's JSON results next to this report ({} when that benchmark has not been run)."""
    try:
        data = json.loads((Path(out_dir) / name).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _caveats(results: dict, flow: dict | None = None, baselines: list[dict] | None = None) -> list[str]:
    """What limits the comparison with the paper (CPU scale), derived from the recorded configs."""
    lines = ["## Caveats", ""]
    by_checkpoint = {run.get("checkpoint"): run for run in baselines or []}
    for ds, models in (results.get("models") or {}).items():
        for model, m in models.items():
            run = by_checkpoint.get(m.get("checkpoint"))
            if run and run.get("best_epoch") == 1 and (run.get("epochs_run") or 0) > 1:
                lines.append(f"- {ds}/{model}: the checkpoint's best validation epoch was its first (early stop "
                             f"after {run['epochs_run']}; test accuracy {run['test']['accuracy']:.3f}), so it is "
                             "barely trained and its robustness to pruning need not match a converged model's.")
    for run in (flow or {}).get("runs", []):
        share = (run.get("methods", {}).get("lrp:epsilon_plus_flat") or {}).get("corner_share_mean")
        gxi = (run.get("methods", {}).get("grad_x_input") or {}).get("corner_share_mean")
        if share is not None and gxi is not None and share > 2 / 16:
            lines.append(f"- {run['dataset']}/{run['model']}: its dense LRP heatmaps put {100 * share:.0f} % of "
                         f"|relevance| in the top-left 1/16 of the image (gradient x input: {100 * gxi:.0f} %), "
                         "because at this resolution its strided 1x1 shortcuts read only the top-left pixel of "
                         "each 2x2 (relevance_flow.md); its fidelity numbers compare maps dominated by that corner.")
    for ds, models in (results.get("models") or {}).items():
        for model, m in models.items():
            build = (m.get("train_config") or {}).get("build_args") or {}
            img = m.get("img_size")
            if "patch_size" in build and img:
                grid = int(img) // int(build["patch_size"])
                lines.append(f"- {ds}/{model}: {img} px input with {build['patch_size']} px patches = a {grid}x{grid} "
                             f"token grid (+ CLS); far fewer tokens than the paper's 224 px ViT (14x14), which "
                             "likely makes it easier to prune.")
    sizes = results.get("sizes") or {}
    lines += [
        f"- One seed ({sizes.get('seed')}), one trained checkpoint per model: differences of one or two test "
        "images are within noise.",
        f"- Ranking scope {sizes.get('scope')!r}, normalisation {sizes.get('normalize') or 'none'}: data-free criteria "
        "rank all layers' units together on raw scores, so a layer whose scores are small as a whole can lose "
        "(almost) all its units at low ratios — that, not the criterion alone, is why they can collapse early.",
        "- Lossless ratios are selected on the validation split (see Method), so they can differ from the "
        "ratio at which test accuracy actually starts to drop.", ""]
    return lines
