"""How far the criteria agree on which units matter, each read at the same point (issue #15, re-measured).

    MEDPRUNE_DATA=/work/shared/data medprune study criteria_agreement [--models vgg19,resnet50,vit_b16]
        [--criteria lrp,dlb,ig,taylor,tp-taylor,tp-magnitude] [--checkpoint pneumoniamnist/vgg19=PATH ...]

Issue #15 found LRP and DLB reading a conv unit after its BatchNorm while Taylor and IG read it before (on
ResNet50, Taylor vs LRP per-layer median Spearman 0.75). ``toolchain/units.py`` now gives every criterion
one read point per unit layer (``UnitLayer.hook``); this study measures the agreement that remains.

For each PneumoniaMNIST model (VGG19 and ResNet50: the selection-split design's dense checkpoints,
``split_shift.DESIGN_CHECKPOINTS``; ViT-B/16: the recovery study's, read from ``recovery.json``), every
criterion scores every prunable unit on the same reference images (by default those of the recovery
studies, read from ``recovery_selection.json``'s arguments: ``clustering``, 10 per class, the labels as
targets). Per pair of criteria: Spearman rho over all units, the median and range of the per-layer rho
(layers with more than 2 units and non-constant scores under both), and the Jaccard overlap of the 50 %
lowest units, ranked globally on the raw scores (``prune``'s default global scope) and within each layer.
Two controls (``--no-controls`` leaves them out): ``lrp-epsilon`` (epsilon-LRP, which equals gradient x
activation on a ReLU network) must agree with ``taylor`` at rho 1 where both read the same tensor; and
``taylor-pre-bn``, Taylor read at the conv's own output as before the fix, gives the before on the same
checkpoint and references.
Writes benchmarks/results/criteria_agreement.{json,md,png} with the command, the commit, each checkpoint's
weights sha256 and the reference indices.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from toolchain.errors import ConfigError

from ._pairs import publish, save_png
from .registry import RESULTS, StudyParser, command_line, study

NAME = "criteria_agreement"
CRITERIA = "lrp,dlb,ig,taylor,tp-taylor,tp-magnitude"
MODELS = "vgg19,resnet50,vit_b16"
DATA = "pneumoniamnist"
ISSUE_RESNET50_TAYLOR_LRP = 0.75  # issue #15's per-layer median before the read point was unified


@dataclass(frozen=True)
class Variant:
    """A registered criterion with options, read at the unit layer's hook or (``at_conv``) at the conv's own output."""
    name: str
    options: dict = field(default_factory=dict)
    at_conv: bool = False

    def layers(self, layers: Sequence) -> list:
        return [replace(ly, hook=ly.name) if self.at_conv and ly.kind == "conv" else ly for ly in layers]


# controls (--controls): epsilon-LRP (eps -> 0) equals gradient x activation at every layer of a piecewise-linear
# network (Ancona et al. 2018), so read at the same point it must rank units exactly as Taylor does; Taylor read
# at the conv's own output, before its BatchNorm, is the read point issue #15 measured against LRP
CONTROLS = {"lrp-epsilon": Variant("lrp", {"composite": "epsilon"}), "taylor-pre-bn": Variant("taylor", at_conv=True)}
READ_POINT = ("a unit is read where removing it takes effect, after its normalisation and before its "
              "nonlinearity")  # toolchain/units.py's module docstring, quoted in the report


# ---- agreement of two score sets (pure, tested on hand-made scores) ---------------------------------
def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman rho with average ranks for ties; None when either side is constant (no ranking to compare)."""
    from scipy.stats import rankdata

    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(np.corrcoef(rankdata(a), rankdata(b))[0, 1])


def lowest_half(scores: np.ndarray) -> set[int]:
    """Indices of the ``len // 2`` lowest scores (ties broken by index: a stable sort, so reproducible)."""
    return set(np.argsort(scores, kind="stable")[: len(scores) // 2].tolist())


def lowest_half_per_layer(scores: Mapping[str, np.ndarray], layers: Sequence[str]) -> set[tuple[str, int]]:
    """``(layer, unit)`` of the lowest half of every layer (``prune --scope layer`` at ratio 0.5)."""
    return {(ly, i) for ly in layers for i in lowest_half(scores[ly])}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def pair_agreement(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray], layers: Sequence[str]) -> dict:
    """Agreement of two criteria's per-layer unit scores over ``layers`` (names, in model order)."""
    flat_a, flat_b = (np.concatenate([s[ly] for ly in layers]) for s in (a, b))
    per_layer = {ly: spearman(a[ly], b[ly]) for ly in layers if len(a[ly]) > 2}
    finite = [r for r in per_layer.values() if r is not None]
    return {"units": len(flat_a), "spearman_all_units": spearman(flat_a, flat_b),
            "per_layer": per_layer, "layers_compared": len(finite),
            "layers_skipped": sorted(ly for ly, r in per_layer.items() if r is None),
            "spearman_per_layer_median": float(np.median(finite)) if finite else None,
            "spearman_per_layer_min": min(finite) if finite else None,
            "spearman_per_layer_max": max(finite) if finite else None,
            "jaccard_lowest_half_global": jaccard(lowest_half(flat_a), lowest_half(flat_b)),
            "jaccard_lowest_half_per_layer": jaccard(lowest_half_per_layer(a, layers), lowest_half_per_layer(b, layers))}


def agreement(scores: Mapping[str, Mapping[str, np.ndarray]], layers: Sequence[str]) -> list[dict]:
    """One row per unordered pair of the criteria in ``scores`` (in their order)."""
    return [{"a": ca, "b": cb, **pair_agreement(scores[ca], scores[cb], layers)}
            for ca, cb in itertools.combinations(scores, 2)]


# ---- scoring one checkpoint ---------------------------------------------------------------------------
def read_points(layers) -> dict:
    """How each kind of unit layer is read (which module's tensor), counted over the model's layers."""
    out: dict[str, dict[str, int]] = {}
    for ly in layers:
        where = ("BatchNorm output" if ly.hook != ly.name and ly.kind == "conv" else
                 f"{ly.hook.rsplit('.', 1)[-1]} {ly.port}" if ly.kind == "head" else f"own {ly.port}")
        out.setdefault(ly.kind, {}).setdefault(where, 0)
        out[ly.kind][where] += 1
    return out


def score_model(model, x, y, criteria: Mapping[str, Variant], log=print) -> dict:
    """Every criterion's unit scores of ``model`` on the same references ``x, y`` and their pairwise agreement
    (``criteria``: label -> what to score), with each unit layer's read point."""
    from toolchain.importance import get_criterion
    from toolchain.units import find_unit_layers

    layers = find_unit_layers(model)  # as prune and the recovery study find them
    scores, seconds = {}, {}
    for label, v in criteria.items():
        t0 = time.perf_counter()
        got = get_criterion(v.name, **v.options)(model, x, y, v.layers(layers))  # data-free peers trace with x
        seconds[label] = round(time.perf_counter() - t0, 2)
        scores[label] = {ly.name: got[ly.name].double().numpy() for ly in layers}
        log(f"{label} scored {sum(ly.size for ly in layers)} units in {seconds[label]:.1f} s")
    return {"img_size": int(x.shape[-1]), "n_images": len(x), "n_per_class": np.bincount(y.cpu().numpy()).tolist(),
            "units": sum(ly.size for ly in layers), "unit_layers": len(layers), "read_points": read_points(layers),
            "layers": [ly.to_dict() for ly in layers], "score_seconds": seconds,
            "pairs": agreement(scores, [ly.name for ly in layers])}


def score_checkpoint(model: str, checkpoint: str, criteria: Mapping[str, Variant], ref: Mapping,
                     log) -> dict:
    """:func:`score_model` of a PneumoniaMNIST checkpoint on its references, with the fingerprints."""
    from toolchain.prune_eval import load_context, reference_inputs

    ctx = load_context(checkpoint, DATA)
    x, y, idx = reference_inputs(ctx, ref["n_per_class"], ref["sampling"], ref["seed"],
                                 pool_per_class=ref["pool_per_class"])
    return {"model": model, "checkpoint": ctx.checkpoint, "checkpoint_sha256": ctx.sha256, "dataset": ctx.ds.name,
            "dataset_fingerprint": ctx.ds.fingerprint, "reference_indices": idx.tolist(),
            **score_model(ctx.model, x, y, criteria, lambda msg: log(f"{model}: {msg}"))}


# ---- which checkpoints and references (read from the committed results, not copied) -------------------
def _recorded_args(name: str) -> dict:
    path = RESULTS / name
    if not path.exists():
        raise ConfigError(f"{path} is missing: give --checkpoint and the reference options explicitly")
    return json.loads(path.read_text())["args"]


def default_checkpoints() -> dict[str, str]:
    """``model -> path``: the design's PneumoniaMNIST checkpoints, else the recovery study's (ViT-B/16)."""
    from toolchain.settings import cache_dir

    from .split_shift import DESIGN_CHECKPOINTS

    out = dict(c.split("=", 1) for c in _recorded_args("recovery.json")["checkpoint"])
    out.update({pair: str(cache_dir() / "checkpoints" / folder / "model.safetensors")
                for pair, folder in DESIGN_CHECKPOINTS.items()})
    return {pair.split("/", 1)[1]: path for pair, path in out.items() if pair.startswith(f"{DATA}/")}


def resolve_checkpoints(models: Sequence[str], given: Sequence[str]) -> dict[str, str]:
    """``--checkpoint DATA/MODEL=PATH`` over the defaults; a one-line error for a malformed or missing one."""
    bad = [c for c in given if "=" not in c or not c.split("=", 1)[0].startswith(f"{DATA}/")]
    if bad:
        raise ConfigError(f"--checkpoint wants {DATA}/MODEL=PATH, got {bad[0]!r}")
    chosen = {m: p for m, p in default_checkpoints().items() if m in models}
    chosen.update((c.split("=", 1)[0].split("/", 1)[1], c.split("=", 1)[1]) for c in given)
    missing = [m for m in models if m not in chosen]
    if missing:
        raise ConfigError(f"no {DATA} checkpoint for {missing[0]}: give --checkpoint {DATA}/{missing[0]}=PATH")
    return {m: chosen[m] for m in models}


# ---- report ---------------------------------------------------------------------------------------------
def _pair(run: dict, a: str, b: str) -> dict | None:
    return next((p for p in run["pairs"] if {p["a"], p["b"]} == {a, b}), None)


def _summary(pair: dict) -> str:
    return (f"per-layer median rho {_fmt(pair['spearman_per_layer_median'])} [{_fmt(pair['spearman_per_layer_min'])}, "
            f"{_fmt(pair['spearman_per_layer_max'])}] over {pair['layers_compared']} layers, "
            f"rho over all units {_fmt(pair['spearman_all_units'])}")


def findings(report: dict) -> list[str]:
    out = []
    for run in report["runs"]:
        ranked = [p for p in run["pairs"] if p["spearman_per_layer_median"] is not None
                  and not {p["a"], p["b"]} & CONTROLS.keys()]
        if not ranked:
            continue
        best = max(ranked, key=lambda p: p["spearman_per_layer_median"])
        worst = min(ranked, key=lambda p: p["spearman_per_layer_median"])
        out.append(f"{run['model']}: per-layer median rho from {worst['spearman_per_layer_median']:.2f} "
                   f"({worst['a']} vs {worst['b']}) to {best['spearman_per_layer_median']:.2f} "
                   f"({best['a']} vs {best['b']}) over {run['units']} units, {run['n_images']} images")
        for label, what in (("lrp-epsilon", "control, lrp-epsilon vs taylor"),
                            ("taylor-pre-bn", "lrp vs taylor read before the BatchNorm (the pre-fix read point)")):
            ctl = _pair(run, label, "lrp" if label == "taylor-pre-bn" else "taylor")
            if ctl and ctl["spearman_per_layer_median"] is not None and (
                    label != "taylor-pre-bn" or "BatchNorm output" in run["read_points"].get("conv", {})):
                out.append(f"{run['model']} {what}: {_summary(ctl)}")
    res = next((r for r in report["runs"] if r["model"] == "resnet50"), None)
    tl = _pair(res, "taylor", "lrp") if res else None
    if tl and tl["spearman_per_layer_median"] is not None:
        m = tl["spearman_per_layer_median"]
        verdict = "above" if m > ISSUE_RESNET50_TAYLOR_LRP else "not above"
        out.append(f"resnet50 lrp vs taylor, both at the shared read point: {_summary(tl)}; {verdict} the "
                   f"{ISSUE_RESNET50_TAYLOR_LRP:.2f} issue #15 quoted before the read point was unified (measured "
                   "on an earlier checkpoint and references, so the pre-bn row above is the like-for-like before)")
    return out


def _skipped(pair: dict) -> str:
    return f" ({len(pair['layers_skipped'])} constant)" if pair["layers_skipped"] else ""


def _fmt(v: float | None) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.2f}"


def markdown(report: dict) -> str:
    ref = report["references"]
    lines = [f"# Criteria agreement at one read point ({DATA})", "",
             f"Command: `{report['command']}` (commit `{report['commit']}`, {report['created']}, "
             f"{report['threads']} torch thread(s), {report['seconds']:.0f} s).", "",
             f"Read point (`toolchain/units.py`, the same for every criterion): \"{READ_POINT}\". A conv unit "
             "followed by a BatchNorm is read at the BatchNorm's output, an MLP unit at `fc1`'s output, a head at "
             "`attn.proj`'s input (its score: the mean over its channels). Torch-Pruning's peers (`tp-*`) score "
             "each coupled group from its weights/gradients as Torch-Pruning does and write the group's score to "
             "every member layer, so they have no read point of their own.", "",
             "Controls. `lrp-epsilon` (`lrp` with `composite=epsilon`): epsilon-LRP with a vanishing epsilon "
             "equals gradient x activation at every layer of a piecewise-linear network (Ancona et al. 2018), so "
             "read at the same point as `taylor` it must rank every layer's units identically (rho 1). That is a "
             "test of the CNNs only: ViT-B/16's LRP (`_lrp_vit`: CP-LRP through attention, identity rule through "
             "LayerNorm and GELU) takes no composite (`lrp` = `lrp-epsilon` there) and does not reduce to the "
             "gradient. Where the control is 1, what remains between `lrp` and `taylor` is `lrp`'s rules "
             "(`epsilon_plus_flat`: flat on the first conv, z+ on the other convs, epsilon on linear layers), not "
             "where they read. `taylor-pre-bn`: `taylor` read at each conv's own output, before its BatchNorm: "
             "the read point issue #15 measured against LRP, re-run on the same checkpoint and references as the "
             "like-for-like before (identical to `taylor` on VGG19, which has no BatchNorm, and on ViT-B/16, which has no conv units).", "",
             f"References: `{ref['sampling']}`, {ref['n_per_class']} per class from a pool of "
             f"{ref['pool_per_class']} train images per class, seed {ref['seed']}, targets = labels "
             f"(read from `{ref['source']}`); every criterion scores the same images.", "",
             "Per pair: Spearman rho over all units (average ranks), the per-layer rho's median and range over "
             "the layers with > 2 units whose scores are not constant under either criterion, and the Jaccard "
             "overlap of the 50 % lowest units (global: all units ranked together on the raw scores, as `prune`'s "
             "default global scope ranks them; per layer: the lowest half of each layer, pooled); two unrelated "
             "halves overlap by 1/3 on average. Each figure is exact for these references; how it would move with "
             "another draw of references is not measured (no interval: that needs every criterion rescored per "
             "image); n (units, layers, images) is stated.", ""]
    lines += [f"- {f}" for f in report["findings"]] + [""]
    for run in report["runs"]:
        rp = "; ".join(f"{k}: " + ", ".join(f"{w} ({n})" for w, n in v.items()) for k, v in run["read_points"].items())
        lines += [f"## {run['model']}", "",
                  f"Checkpoint `{Path(run['checkpoint']).parent.name}` (sha256 `{run['checkpoint_sha256'][:12]}…`), "
                  f"{run['img_size']} px, n = {run['n_images']} images ({run['n_per_class']} per class), "
                  f"{run['units']} units in {run['unit_layers']} layers. Read at: {rp}. Scoring seconds: "
                  + ", ".join(f"{k} {v}" for k, v in run["score_seconds"].items()) + ".", "",
                  "| a | b | rho all units | per-layer median [min, max] | layers | Jaccard lowest 50 % global | "
                  "Jaccard lowest 50 % per layer |", "|---|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {p['a']} | {p['b']} | {_fmt(p['spearman_all_units'])} | {_fmt(p['spearman_per_layer_median'])} "
                  f"[{_fmt(p['spearman_per_layer_min'])}, {_fmt(p['spearman_per_layer_max'])}] | "
                  f"{p['layers_compared']}{_skipped(p)} | "
                  f"{p['jaccard_lowest_half_global']:.2f} | {p['jaccard_lowest_half_per_layer']:.2f} |"
                  for p in run["pairs"]]
        lines.append("")
    return "\n".join(lines)


METRICS = (("spearman_all_units", "rho, all units"), ("spearman_per_layer_median", "per-layer median rho"),
           ("jaccard_lowest_half_global", "Jaccard lowest 50 % (global)"))


def matrix(run: dict, key: str) -> tuple[list[str], np.ndarray]:
    """Symmetric criterion x criterion matrix of ``key`` (diagonal 1)."""
    names = list(dict.fromkeys([p["a"] for p in run["pairs"]] + [p["b"] for p in run["pairs"]]))
    m = np.eye(len(names))
    for p in run["pairs"]:
        i, j = names.index(p["a"]), names.index(p["b"])
        m[i, j] = m[j, i] = np.nan if p[key] is None else p[key]
    return names, m


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = report["runs"]
    fig, axes = plt.subplots(len(runs), len(METRICS), figsize=(4.2 * len(METRICS), 3.8 * len(runs)), squeeze=False)
    for row, run in zip(axes, runs, strict=True):
        for ax, (key, title) in zip(row, METRICS, strict=True):
            names, m = matrix(run, key)
            im = ax.imshow(m, vmin=-1 if "spearman" in key else 0, vmax=1, cmap="RdBu_r" if "spearman" in key
                           else "viridis")
            ax.set_xticks(range(len(names)), names, rotation=60, fontsize=7)
            ax.set_yticks(range(len(names)), names, fontsize=7)
            for (i, j), v in np.ndenumerate(m):
                ax.text(j, i, _fmt(v), ha="center", va="center", fontsize=6)
            ax.set_title(f"{run['model']}: {title}", fontsize=8)
            fig.colorbar(im, ax=ax, fraction=0.046)
    save_png(fig, path)


@study(NAME, outputs=(f"{NAME}.json", f"{NAME}.md", f"{NAME}.png"))
def main(argv: list[str] | None = None) -> dict:
    import torch

    from toolchain.importance import available

    p = StudyParser(NAME, __doc__)
    p.add_list("--models", default=MODELS, help=f"{DATA} models")
    p.add_list("--criteria", default=CRITERIA, choices=available(), help="criteria compared pairwise")
    p.add_argument("--checkpoint", action="append", default=[], metavar=f"{DATA}/MODEL=PATH",
                   help="score this checkpoint for MODEL (default: the design's, ViT-B/16: recovery.json's)")
    p.add_argument("--sampling", default=None, help="reference sampling [default: recovery_selection.json's]")
    p.add_argument("--n-per-class", type=int, default=None)
    p.add_argument("--pool-per-class", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--controls", action=argparse.BooleanOptionalAction, default=True,
                   help=f"also score the controls ({', '.join(CONTROLS)}; see the module docstring)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared machine)")
    p.add_out()
    a = p.parse_args(argv)
    if len(a.criteria) < 2:
        p.error("--criteria needs at least two criteria to compare")
    checkpoints = resolve_checkpoints(a.models, a.checkpoint)
    recorded = _recorded_args("recovery_selection.json")
    ref = {k: getattr(a, k) if getattr(a, k) is not None else recorded[k]
           for k in ("sampling", "n_per_class", "pool_per_class", "seed")}
    ref["source"] = "recovery_selection.json" if any(getattr(a, k) is None for k in ref) else "the command line"
    torch.set_num_threads(a.threads)
    start = time.perf_counter()
    criteria = {c: Variant(c) for c in a.criteria} | (CONTROLS if a.controls else {})
    runs = [score_checkpoint(m, checkpoints[m], criteria, ref,
                             lambda msg: print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)) for m in a.models]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    report = {"command": command_line(NAME, argv), "commit": commit, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "threads": torch.get_num_threads(), "seconds": round(time.perf_counter() - start, 1),
              "read_point": READ_POINT, "references": ref, "criteria": {k: asdict(v) for k, v in criteria.items()}, "runs": runs}
    return publish(a.out, NAME, report, findings, markdown, plot)
