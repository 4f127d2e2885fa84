"""Importance criteria x reference sampling on the baseline checkpoints: accuracy vs pruning ratio.

    MEDPRUNE_DATA=/work/shared/data medprune study importance_grid                  # full grid (make importance)
    medprune study importance_grid --models vgg19 --criteria lrp,taylor --samplings clustering
    medprune study importance_grid --checkpoint path/model.safetensors              # any checkpoint (dev)

For every model (baseline checkpoints from ``benchmarks/results/baselines.json``), criterion and
sampling strategy: the criterion scores every unit on N reference images per class, the lowest
``ratio`` of units is masked (global ranking), and the masked model is evaluated on the test split
at 0, 0.15, 0.3, 0.5, 0.7 and at the largest lossless ratio (searched on the val split: accuracy drop
<= 1 pt and per-class sensitivity drop <= 2 pts; see ``toolchain.prune_eval``). Scoring time is
reported relative to one forward+backward pass over the same reference images, timed in the same
process (median of two passes before and two after scoring, after a warm-up) so that machine load
affects both alike.

Data-free criteria (magnitude, random) do not depend on the references: they are run once
(sampling "n/a"). Criteria take options as ``name[key=value,...]``; the default grid runs IG as
``ig[path=input]`` (layer conductance along the image path: n_steps passes for all layers) because
captum's per-layer LayerIntegratedGradients costs ``layers x n_steps`` passes per image; add ``ig``
to the grid to run the per-layer form as well.

Caching (under ``$MEDPRUNE_CACHE/importance``): reference indices, scores and every evaluation per
(checkpoint sha256, criterion+options, sampling, N, seed, pool), so reruns and extended grids only
compute what is new. Results are merged into ``benchmarks/results/importance.{json,md,png}`` after
every cell, keyed by (model, criterion, sampling), so partial and per-model runs accumulate.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from toolchain.atomic import atomic_file
from toolchain.errors import ConfigError
from toolchain.pipeline import code_version
from toolchain.sampling import STRATEGIES
from toolchain.settings import cache_dir

from ._importance_report import markdown, plot
from .registry import RESULTS, StudyParser, command_line, study

SCHEMA = "medprune.importance/1"
MODELS = ("vgg19", "resnet50", "vit_b16")
RATIOS = (0.0, 0.15, 0.3, 0.5, 0.7)
OUT = {"stem": RESULTS / "importance"}  # --out changes it (dev runs must not touch the real report)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def parse_criterion(spec: str) -> tuple[str, dict, str]:
    """``"ig[path=input,n_steps=16]"`` → ``("ig", {"path": "input", "n_steps": 16}, "ig[n_steps=16,path=input]")``."""
    m = re.fullmatch(r"\s*([\w-]+)\s*(?:\[(.*)\])?\s*", spec)
    if not m:
        raise ConfigError(f"bad criterion spec {spec!r}: use name or name[key=value,...]")
    name, body = m.group(1), m.group(2)
    opts: dict[str, Any] = {}
    for pair in filter(None, (p.strip() for p in (body or "").split(","))):
        key, sep, raw = pair.partition("=")
        if not sep:
            raise ConfigError(f"bad criterion option {pair!r} in {spec!r}: use key=value")
        try:
            opts[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            opts[key.strip()] = raw.strip()
    label = name + (f"[{','.join(f'{k}={opts[k]}' for k in sorted(opts))}]" if opts else "")
    return name, opts, label


def default_criteria() -> list[str]:
    from toolchain.importance import available

    return ["ig[path=input]" if n == "ig" else n for n in available()]


def split_specs(text: str) -> list[str]:
    """Comma-separated specs whose options may contain commas inside brackets."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    return [s.strip() for s in out + [cur] if s.strip()]


def baseline_checkpoints(models: list[str], data: str) -> dict[str, str]:
    path = RESULTS / "baselines.json"
    if not path.exists():
        raise ConfigError(f"{path} not found: run `make baselines` first or pass --checkpoint")
    runs = json.loads(path.read_text()).get("runs", [])
    found = {}
    for model in models:
        match = [r for r in runs if r.get("model") == model and str(r.get("data", "")).startswith(data)
                 and r.get("checkpoint") and Path(r["checkpoint"]).exists()]
        if match:
            found[model] = match[0]["checkpoint"]
        else:
            log(f"no baseline checkpoint for {model} on {data} yet; skipped")
    return found


# ---- small JSON caches ---------------------------------------------------------------------------
class JsonCache:
    def __init__(self, path: Path):
        self.path = path
        try:
            self.data = json.loads(path.read_text())
        except (OSError, ValueError):
            self.data = {}

    def get(self, key: str):
        return self.data.get(key)

    def put(self, key: str, value) -> None:
        self.data[key] = value
        with atomic_file(self.path, "w") as fh:
            json.dump(self.data, fh, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))


def _slug(text: str) -> str:
    return re.sub(r"[^\w.=-]+", "_", text)[:80] + "-" + hashlib.sha256(text.encode()).hexdigest()[:8]


# ---- one model -----------------------------------------------------------------------------------
def run_model(model_key: str, checkpoint: str, args, specs: list[str], report: dict) -> None:
    from toolchain.importance import get_criterion
    from toolchain.prune_eval import (
        RatioEvaluator,
        find_lossless,
        forward_backward_seconds,
        load_context,
        load_scores,
        lossless_evaluator,
        save_scores,
        score_units,
    )
    from toolchain.sampling import select_reference
    from toolchain.units import find_unit_layers

    log(f"{model_key}: loading {checkpoint}")
    ctx = load_context(checkpoint, args.data)
    layers = find_unit_layers(ctx.model)
    # scores and evaluations are reused only for the same checkpoint, device (cpu) and code (criteria included)
    root = cache_dir() / "importance" / f"{ctx.sha256[:16]}-cpu-{code_version(run_model)[:12]}"
    root.mkdir(parents=True, exist_ok=True)
    refs_cache = JsonCache(root / "references.json")
    evals = JsonCache(root / "evaluations.json")
    pool = args.pool_per_class or None
    log(f"{model_key}: {ctx.meta.get('arch')} · {sum(ly.size for ly in layers)} units in {len(layers)} layers "
        f"· threads {torch.get_num_threads()}")

    def cached_evaluator(scores_key: str, scores) -> RatioEvaluator:
        # the point rule (no interval), as the results it wrote were searched; its evaluation cache holds metrics
        ev = lossless_evaluator("point", ctx, scores, layers, scope="global", normalize=None,
                                batch_size=args.batch_size, log=lambda m: log(f"    {m}"))
        for key, value in (evals.get(scores_key) or {}).items():
            ratio, split = key.split("|")
            ev._cache[(float(ratio), split)] = value
        for key, value in (evals.get("dense") or {}).items():
            ev._cache[(0.0, key)] = value
        return ev

    def persist(scores_key: str, ev: RatioEvaluator) -> None:
        evals.put("dense", {s: m for (r, s), m in ev._cache.items() if r == 0.0})
        evals.put(scores_key, {f"{r}|{s}": m for (r, s), m in ev._cache.items() if r != 0.0})

    data_free_done: set[str] = set()
    for sampling in args.samplings:
        ref_key = f"{sampling}|n={args.n_per_class}|seed={args.seed}|pool={pool}"
        x = y = None
        for spec in specs:
            name, opts, label = parse_criterion(spec)
            crit = get_criterion(name, **opts)
            cell_sampling = sampling if crit.needs_data else "n/a"
            if not crit.needs_data and label in data_free_done:
                continue
            cell = f"{model_key}|{label}|{cell_sampling}"
            if x is None and crit.needs_data:
                idx = refs_cache.get(ref_key)
                if idx is None:
                    log(f"{model_key}: selecting {args.n_per_class}/class references by {sampling} "
                        f"(pool {pool or 'all'} per class)")
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always")
                        idx = select_reference(ctx.model, ctx.ds, ctx.preprocess, args.n_per_class, sampling,
                                               args.seed, "train", ctx.device, pool_per_class=pool).tolist()
                    for w in caught:
                        log(f"  warning: {w.message}")
                    refs_cache.put(ref_key, idx)
                train = ctx.ds.split("train")
                x = ctx.preprocess(train.images[idx])
                y = torch.as_tensor(train.labels[idx], dtype=torch.long)
            scores_key = _slug(f"{label}|{ref_key if crit.needs_data else 'data-free'}")
            cached = load_scores(root / f"scores-{scores_key}")
            if cached is not None:
                scores, smeta = cached
                log(f"{cell}: cached scores ({smeta['scoring_seconds']:.1f}s when computed)")
            else:
                log(f"{cell}: scoring with {crit!r} on {0 if x is None else len(x)} references")
                fbs = []
                if x is not None:  # warm-up, then passes before and after scoring: load drifts hit both
                    forward_backward_seconds(ctx.model, x)
                    fbs += [forward_backward_seconds(ctx.model, x) for _ in range(2)]
                scores, seconds = score_units(ctx.model, crit, x, y, layers)
                if x is not None:
                    fbs += [forward_backward_seconds(ctx.model, x) for _ in range(2)]
                fb = statistics.median(fbs) if fbs else None
                smeta = {"criterion": label, "sampling": cell_sampling, "scoring_seconds": seconds,
                         "fwd_bwd_seconds": fb, "n_refs": 0 if x is None else len(x),
                         "threads": torch.get_num_threads()}
                save_scores(root / f"scores-{scores_key}", scores, smeta)
                log(f"{cell}: scored in {seconds:.1f}s" + (f" = {seconds / fb:.1f}x fwd+bwd ({fb:.2f}s)" if fb else ""))
            ev = cached_evaluator(scores_key, scores)
            curve = {}
            for r in args.ratios:
                m = ev.metrics(r, args.split)
                curve[f"{r:.2f}"] = summarize(m)
            persist(scores_key, ev)
            lossless = None
            if not args.no_lossless:
                key = f"lossless|{args.tolerance}|{args.sens_tolerance}|{args.search_split}"
                lossless = (evals.get(scores_key + "|" + key) or None)
                if lossless is None:
                    log(f"{cell}: lossless search on {args.search_split}")
                    found = find_lossless(ev, args.tolerance, args.sens_tolerance, search_split=args.search_split)
                    found["test"] = summarize(ev.metrics(found["ratio"], args.split))
                    found["mask"] = {k: v for k, v in ev.report(found["ratio"]).items() if k != "per_layer"}
                    lossless = found
                    evals.put(scores_key + "|" + key, lossless)
                    persist(scores_key, ev)
                log(f"{cell}: lossless ratio {lossless['ratio']:.2f} "
                    f"(test accuracy {lossless['test']['accuracy']:.4f})")
            fb = smeta.get("fwd_bwd_seconds")
            report["cells"][cell] = {
                "model": model_key, "checkpoint": checkpoint, "checkpoint_sha256": ctx.sha256,
                "arch": ctx.meta.get("arch"), "img_size": ctx.meta.get("img_size"), "criterion": label,
                "sampling": cell_sampling, "n_per_class": args.n_per_class if crit.needs_data else None,
                "seed": args.seed, "pool_per_class": pool, "split": args.split,
                "dense": summarize(ev.metrics(0.0, args.split)), "curve": curve, "lossless": lossless,
                "scoring_seconds": smeta["scoring_seconds"], "fwd_bwd_seconds": fb,
                "relative_cost": (smeta["scoring_seconds"] / fb) if fb else None, "threads": smeta.get("threads"),
            }
            if not crit.needs_data:
                data_free_done.add(label)
            write_report(report)


def summarize(m: dict) -> dict:
    return {"accuracy": m["accuracy"], "balanced_accuracy": m["balanced_accuracy"], "auc": m["auc"],
            "sensitivity": {k: v["sensitivity"] for k, v in m["per_class"].items()},
            "specificity": {k: v["specificity"] for k, v in m["per_class"].items()}}


# ---- report --------------------------------------------------------------------------------------
def load_report() -> dict:
    path = OUT["stem"].with_suffix(".json")
    if not path.is_file():
        return {"schema": SCHEMA, "cells": {}, "commands": []}
    try:  # cells accumulate across runs: a damaged report is not silently started afresh (and overwritten)
        doc = json.loads(path.read_text())
    except ValueError as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc}); restore it or pass another --out") from None
    if doc.get("schema") != SCHEMA:
        raise ConfigError(f"{path} has schema {doc.get('schema')!r}, not {SCHEMA}; pass another --out")
    return doc


def write_report(report: dict) -> None:
    report["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    report["machine"] = {"platform": platform.platform(), "python": platform.python_version(),
                         "torch": torch.__version__, "cpu_threads": torch.get_num_threads()}
    stem = OUT["stem"]
    with atomic_file(stem.with_suffix(".json"), "w") as fh:
        json.dump(report, fh, indent=1, default=str)
    with atomic_file(stem.with_suffix(".md"), "w") as fh:
        fh.write(markdown(report, stem))
    try:
        plot(report, stem)
    except Exception as exc:  # a plot problem must not lose the measured numbers
        log(f"plot failed: {exc}")


@study("importance_grid", outputs=("importance.json", "importance.md", "importance.png"))
def main(argv: list[str] | None = None) -> None:
    p = StudyParser("importance_grid", __doc__)
    p.add_list("--models", default=",".join(MODELS), help="baseline models (keys in baselines.json)")
    p.add_argument("--checkpoint", default=None, help="use this checkpoint instead of the baselines")
    p.add_argument("--criteria", default=None, help="criteria, e.g. lrp,taylor,ig[path=layer] (default: all)")
    p.add_list("--samplings", default=",".join(STRATEGIES), choices=STRATEGIES, help="reference samplings")
    p.add_argument("--data", default="pneumoniamnist")
    p.add_list("--ratios", default=",".join(str(r) for r in RATIOS), kind=float, help="pruning ratios")
    p.add_argument("--n-per-class", type=int, default=10)
    p.add_argument("--pool-per-class", type=int, default=300,
                   help="confidence/clustering score a seeded subset of this many train images per class (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="test")
    p.add_argument("--search-split", default="val", help="split the lossless ratio is searched on (never test)")
    p.add_argument("--tolerance", type=float, default=1.0)
    p.add_argument("--sens-tolerance", type=float, default=2.0)
    p.add_argument("--no-lossless", action="store_true")
    p.add_argument("--batch-size", type=int, default=256, help="evaluation batch size")
    p.add_argument("--out", default=str(RESULTS / "importance"), help="report path stem (.json/.md/.png)")
    args = p.parse_args(argv)
    if args.search_split == "test":  # choosing on the split the result is read on would grade its own answer
        raise ConfigError("--search-split test: the lossless ratio is chosen on val (or train), never on test")
    OUT["stem"] = Path(args.out).with_suffix("") if Path(args.out).suffix in (".json", ".md") else Path(args.out)
    specs = split_specs(args.criteria) if args.criteria else default_criteria()
    for s in specs:
        parse_criterion(s)
    models = args.models

    if args.checkpoint:
        checkpoints = {Path(args.checkpoint).parent.name or "checkpoint": args.checkpoint}
    else:
        checkpoints = baseline_checkpoints(models, args.data)
    report = load_report()
    command = command_line("importance_grid", argv)
    if command not in report["commands"]:
        report["commands"].append(command)
    log(f"grid: models {list(checkpoints)} × criteria {specs} × samplings {args.samplings}")
    for key, ckpt in checkpoints.items():
        run_model(key, ckpt, args, specs, report)
    write_report(report)
    log(f"wrote {OUT['stem']}.json, .md, .png")
