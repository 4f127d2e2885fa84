"""Recovery: criteria at equal MACs, with and without distillation recovery, measured ORT speedup.

    medprune study recovery --models vgg19,resnet50 --data pneumoniamnist,chest_xray_224 \\
        --criteria lrp,taylor,tp-magnitude,tp-taylor,random --model-macs vgg19=3/5/8,resnet50=2/3/5

For every model × criterion × MACs target (dense MACs ÷ S) the pruning ratio is searched on the
*physically removed* model (``toolchain.budget``; group granularity, one ``remove_units`` code path
for medprune's criteria and Torch-Pruning's own importances), then the pruned model is evaluated
as is and after distillation recovery (``toolchain.recovery``; same recipe for every criterion).
Batch-1 latency is measured with ONNX Runtime on this CPU, dense and pruned interleaved in one
process (``--threads`` intra-op threads). Reference images for scoring are the same for every
criterion. Nothing is chosen on test: the headline ``speedup_lossless`` is the most compressed
recovered model that passes deploy's lossless rule *on val* (``toolchain.lossless``: upper 95 % bounds
of the accuracy drop <= 1 pt and of every class's sensitivity drop <= 2 pts), then judged once on test;
the old point rule's choice is reported beside it. ``best_criterion`` is the highest mean val balanced
accuracy of the recovered models. ``--align`` adds the recovered model with a val-fitted per-class
logit offset (``toolchain.recovery.align``) as a third state; ``--recipe kd+align`` makes the headline
read that state (the choice between the two recipes is made on val: ``recovery.md`` counts, per recipe,
the models passing deploy's rule on val). Every cell is cached (``cache_dir()/studies/recovery``), so an
interrupted run resumes (``--workers N``: computed as Ray tasks, ``_recovery_parallel``); the report
(``_recovery_report``) computes paired bootstrap intervals over test images vs the dense model and between
criteria. ``--runtimes`` adds ORT/OpenVINO FP32 and INT8 columns (``_recovery_quant``) for the dense and the
val-chosen recovered model; ``--runtimes-per-cell`` for every recovered cell, cached per cell, with what pruning
adds on top of INT8 (``_recovery_quant_cells``).

Dense checkpoints follow one recipe (``RECIPE``: full train split, 3 epochs, each family's own lr)
through ``toolchain.train`` with the same cache as ``medprune train``; their sha256 is recorded.
Recovery (default): 2 distillation epochs on the full train split at the dense model's lr, best val
epoch kept; batches are not augmented, so the frozen teacher's logits are computed once per image
and shared by every student of the run (``toolchain.recovery.distill.TeacherMemo``; of a Ray worker with
``--workers``).
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._recovery_options import _model_targets, _subsets, parser  # noqa: F401 (the study's options)
from ._recovery_revisit import _probs, align_cell, recovered_checkpoint, retime_cell  # noqa: F401 (old home)
from .registry import command_line, study

# One documented dense recipe for every dataset (full train split, `medprune train` with these flags):
# 3 epochs at each family's own learning rate; chest_xray_224 is decoded at 64 px (the models train at
# the project's default 32 px anyway, as in the paper and baselines studies).
RECIPE: dict[str, dict[str, Any]] = {
    "vgg19": dict(model="vgg19", epochs=3, lr=1e-4, patience=5),
    "resnet50": dict(model="resnet50", epochs=3, lr=1e-3, patience=5),
    "vit_b16": dict(model="vit_b16", epochs=3, lr=1e-4, patience=5),
}
LOAD_SIZE = {"chest_xray_224": 64}
CELL_VERSION = 2  # 2: cells keyed by dataset too
# The device every cell computes on (dense model, scoring, search, recovery fit). The study has no device
# option: ORT latency is measured on this CPU anyway, so the torch side stays on CPU too (prepare).
CELL_DEVICE = "cpu"


def _cache_root() -> Path:
    from toolchain import settings

    root = settings.cache_dir() / "studies" / "recovery"
    root.mkdir(parents=True, exist_ok=True)
    return root


def train_recipe(model: str, data: str) -> dict[str, Any]:
    if model not in RECIPE:
        raise SystemExit(f"no dense training recipe for {model!r}; known: {', '.join(RECIPE)}")
    load = {"load_size": LOAD_SIZE[data]} if data in LOAD_SIZE else {}
    return {**RECIPE[model], "data": data, **load}


def _given(given: dict[str, str], data: str, model: str) -> str | None:
    """The ``--checkpoint`` path of ``data/model`` (a bare ``model=`` means PneumoniaMNIST)."""
    return given.get(f"{data}/{model}") or (given.get(model) if data == "pneumoniamnist" else None)


def dense_checkpoint(model: str, data: str, given: dict[str, str]) -> tuple[Path, str]:
    """The dense checkpoint (``--checkpoint [data/]model=path`` or trained/cached from ``RECIPE``) and
    the command that trains it.

    Training keys include the code version of the training modules, so on a tree that others keep
    editing a cached checkpoint is found again only by path: ``--checkpoint`` pins it.
    """
    from toolchain.train import TrainConfig, train

    recipe = train_recipe(model, data)
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in recipe.items())
    path = _given(given, data, model)
    if path:
        from toolchain.models import resolve_checkpoint

        return resolve_checkpoint(path), f"medprune train {flags}"
    return train(TrainConfig(**recipe, device="auto")), f"medprune train {flags}"


def train_command(train_config: dict | None, fallback: str) -> str:
    """The ``medprune train`` flags a checkpoint records (a ``--checkpoint`` may differ from ``RECIPE``, e.g.
    more epochs on a small dataset); ``fallback`` when it records none."""
    if not train_config or not train_config.get("model"):
        return fallback
    keys = [k for k in ("model", "epochs", "lr", "patience", "data", "load_size", "train_subset")
            if train_config.get(k) is not None]
    # the selection split, when it is not today's default (toolchain.data.splits)
    keys += [k for k, default in (("warmup_epochs", 1.0), ("val_fraction", 0.1), ("val_from_train", 0.0))
             if train_config.get(k, default) != default]
    build = [f"--build-arg {k}={v}" for k, v in (train_config.get("build_args") or {}).items()]  # e.g. ViT patch 16
    return "medprune train " + " ".join([f"--{k.replace('_', '-')} {train_config[k]}" for k in keys] + build)


def dense_probs_path(root: Path, sha256: str, fingerprint: str) -> Path:
    """Where :func:`_dense_probs` caches a dense checkpoint's val/test probabilities on one dataset."""
    return root / f"dense-{sha256[:16]}-{fingerprint[:12]}.json"


def _dense_probs(ctx) -> dict[str, dict]:
    """Dense val/test probabilities and labels, cached per checkpoint (parallel runs share them)."""
    path = dense_probs_path(_cache_root(), ctx.sha256, ctx.ds.fingerprint)
    if path.is_file():
        return json.loads(path.read_text())
    pairs = {s: _probs(ctx.model, ctx, s) for s in ("val", "test")}
    out = {"dense": {s: p for s, (p, _) in pairs.items()}, "labels": {s: y for s, (_, y) in pairs.items()}}
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(out))
    tmp.replace(path)
    return out


def run_cell(ctx, prune, example, target: float, rcfg, threads: int, repeats: int, log,
             align: bool = False) -> dict[str, Any]:
    """One (model, criterion, MACs target) cell: search, measure, evaluate, recover, evaluate."""
    from toolchain.budget import Budget, ort_latency_ms, search_budget
    from toolchain.models import count_macs, count_params
    from toolchain.recovery import recover_cached
    from toolchain.removal import pruning_meta

    t0 = time.perf_counter()
    found = search_budget(prune, ctx.model, example, Budget("macs", 1.0 / target), resolution=0.01)
    pruned, report = found.model, found.report
    load = os.getloadavg()[0]  # the machine is shared: the load is recorded with every timing
    lat = ort_latency_ms({"dense": ctx.model, "pruned": pruned}, example, repeats=repeats, threads=threads)
    cell = {
        "target_macs_div": target, "ratio": found.ratio, "met": found.met, "search_trace": found.trace,
        "macs": {"dense": count_macs(ctx.model, example), "pruned": count_macs(pruned, example)},
        "params": {"dense": count_params(ctx.model), "pruned": count_params(pruned)},
        "latency_ms": lat, "speedup_ort": lat["dense"]["median_ms"] / lat["pruned"]["median_ms"],
        "ort_threads": threads, "load_avg_1min": load, "units": report.get("units"), "probs": {}, "search_s": round(time.perf_counter() - t0, 1),
    }
    cell["macs"]["ratio"] = cell["macs"]["dense"] / cell["macs"]["pruned"]
    for split in ("val", "test"):
        cell["probs"][f"none/{split}"], _ = _probs(pruned, ctx, split)
    if rcfg is not None:
        t1 = time.perf_counter()
        meta = {**ctx.meta, "pruning": pruning_meta(report, {"ratio": found.ratio, "granularity": "group"})}
        model, info = recover_cached(copy.deepcopy(pruned), ctx.model, ctx.ds, ctx.preprocess, rcfg, meta=meta,
                                     teacher_sha=ctx.sha256)
        cell["recovery"] = {k: info.get(k) for k in ("key", "recipe", "summary", "history", "cached")}
        for split in ("val", "test"):
            cell["probs"][f"kd/{split}"], _ = _probs(model, ctx, split)
        cell["recover_s"] = round(time.perf_counter() - t1, 1)
        if align:
            align_cell(ctx, cell, model)
    log(f"÷{target:g}: ratio {found.ratio:.2f}, MACs ÷{cell['macs']['ratio']:.2f}, ORT speedup "
        f"×{cell['speedup_ort']:.2f} ({time.perf_counter() - t0:.0f}s)")
    return cell


def recovery_config(args, model: str):
    """The study's recovery recipe for ``model`` (its flags over ``RECIPE``), validated."""
    from toolchain.recovery import RecoveryConfig

    subset = args.recover_subset.get(model, args.recover_subset.get("*", 0))
    return RecoveryConfig(epochs=args.recover_epochs, train_subset=subset or None, lr=args.recover_lr,
                          augment=args.recover_augment, kd_weight=args.kd_weight, ce_weight=args.ce_weight,
                          seed=args.seed, device=CELL_DEVICE, quiet=True).validate()


@dataclass
class Prepared:
    """What every cell of one dataset x model shares: the dense model, its reference images, the recipe."""

    weights: Path
    train_cmd: str
    ctx: Any
    layers: list
    x: Any
    y: Any
    idx: Any
    rcfg: Any
    pruners: dict[str, Any] = field(default_factory=dict)  # criterion -> prune(ratio), scored once

    @property
    def example(self):
        return self.x[:1].detach()


def prepare(model: str, data: str, args) -> Prepared:
    """The dense checkpoint (trained when not given), loaded with its dataset, and its reference images."""
    from toolchain.prune_eval import load_context, reference_inputs
    from toolchain.units import find_unit_layers

    weights, train_cmd = dense_checkpoint(model, data, dict(c.split("=", 1) for c in args.checkpoint or []))
    # the checkpoint's own dataset, loaded as it was trained (load size, val cut), on the cells' device
    ctx = load_context(weights, device=CELL_DEVICE)
    if ctx.ds.name != data:
        raise SystemExit(f"checkpoint {weights} was trained on {ctx.ds.name}, not {data}")
    train_cmd = train_command(ctx.meta.get("train_config"), train_cmd)
    x, y, idx = reference_inputs(ctx, args.n_per_class, args.sampling, args.seed, pool_per_class=args.pool_per_class)
    rcfg = recovery_config(args, model) if args.recover_epochs else None
    return Prepared(weights, train_cmd, ctx, find_unit_layers(ctx.model), x, y, idx, rcfg)


def cell_path(prep: Prepared, data: str, model: str, name: str, target: float, args) -> Path:
    """The cache file of one cell; its key is every input that decides the cell's numbers."""
    key = cell_key(prep.ctx.sha256, name, target, prep.idx.tolist(), prep.rcfg.recipe() if prep.rcfg else None,
                   args.threads, prep.ctx.device)
    return _cache_root() / f"{data}-{model}-{name}-{target:g}-{key[:12]}.json"


def cell_key(sha256: str, criterion: str, target: float, refs: list[int], recipe: dict | None, threads: int,
             device: str) -> str:
    """Digest of a cell's inputs. Its code version is recorded in the cell and checked on reuse instead
    (``_recovery_versions``)."""
    from toolchain.pipeline import digest

    key = {"v": CELL_VERSION, "ckpt": sha256, "crit": criterion, "target": target, "refs": refs,
           "recovery": recipe, "threads": threads}
    if device != "cpu":
        # keyed only off CPU: every cell computed before the device was keyed ran on CPU, and adding the entry
        # for CPU too would change their keys and discard hours of computed cells
        key["device"] = device
    return digest(key)


def cached_cell(path: Path, version: str, args) -> tuple[dict | None, str | None, bool]:
    """``(cell, staleness, reuse)`` of a cell file: reused unless absent, or stale with ``--recompute-stale``."""
    from . import _recovery_versions as versions

    cell = json.loads(path.read_text()) if path.is_file() else None
    stale = versions.staleness(cell, version) if cell is not None else None
    return cell, stale, cell is not None and not (stale and getattr(args, "recompute_stale", False))


def compute_cell(prep: Prepared, model: str, name: str, target: float, args, version: str, path: Path,
                 log) -> dict[str, Any]:
    """Compute one cell (scoring its criterion once per ``prep``) and write it to ``path``."""
    from toolchain.importance import get_criterion
    from toolchain.recovery import masker_for, pruner_at

    if name not in prep.pruners:
        crit = get_criterion(name)
        t0 = time.perf_counter()
        scores = crit(prep.ctx.model, prep.x, prep.y, prep.layers)  # data-free criteria ignore x (peers trace with it)
        log(f"{model} · {name}: scored in {time.perf_counter() - t0:.1f}s")
        masker = masker_for(prep.ctx.model, crit, scores, prep.layers, prep.example)
        prep.pruners[name] = pruner_at(prep.ctx.model, masker, prep.example)
    cell = run_cell(prep.ctx, prep.pruners[name], prep.example, target, prep.rcfg, args.threads, args.repeats,
                    lambda m: log(f"{model} · {name} · {m}"), align=args.align)
    cell["criterion"], cell["code_version"], cell["device"] = name, version, prep.ctx.device
    _write_json(path, cell)
    return cell


def run_model(model: str, data: str, args, log) -> dict[str, Any]:
    from . import _recovery_versions as versions

    prep = prepare(model, data, args)
    ctx = prep.ctx
    out = {"model": model, "checkpoint": str(prep.weights), "checkpoint_sha256": ctx.sha256,
           "train_command": prep.train_cmd, "dataset": ctx.ds.name, "dataset_fingerprint": ctx.ds.fingerprint,
           "reference_indices": prep.idx.tolist(), **_dense_probs(ctx),
           "class_names": list(ctx.ds.class_names), "cells": {}, "code_versions": {}, "stale_cells": []}
    for name in args.criteria:
        version = out["code_versions"][name] = versions.cell_code_version(name)
        for target in targets_for(model, args, data):
            path = cell_path(prep, data, model, name, target, args)
            cell, stale, reuse = cached_cell(path, version, args)
            if reuse:
                log(f"{data}/{model} · {name} · ÷{target:g}: cached" + (f" ({stale} code version)" if stale else ""))
                if args.retime and "retimed" not in cell and retime_cell(ctx, cell, prep.example, args):
                    _write_json(path, cell)
                    log(f"{data}/{model} · {name} · ÷{target:g}: retimed ×{cell['speedup_ort']:.2f} "
                        f"(first ×{cell['latency_first']['speedup']:.2f})")
                if args.align and "kda/val" not in cell["probs"] and align_cell(ctx, cell):
                    _write_json(path, cell)
                    log(f"{data}/{model} · {name} · ÷{target:g}: aligned, offset "
                        f"{[round(v, 3) for v in cell['alignment']['offset']]}")
            elif args.cached_only:
                log(f"{data}/{model} · {name} · ÷{target:g}: not computed (--cached-only)")
                continue
            else:
                cell, stale = compute_cell(prep, model, name, target, args, version, path, log), None
            if stale:
                out["stale_cells"].append(versions.stale_entry(data, model, name, target, cell, stale, path))
            out["cells"][f"{name}/{target:g}"] = cell
    return out


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj))
    tmp.replace(path)


def macs_targets(model_macs: dict | None, data: str | None, model: str, macs) -> list[float]:
    """The MACs targets of ``data/model``: its ``data/model`` entry of ``model_macs`` (``--model-macs``), else its
    model's, else ``macs`` (``--macs``)."""
    given = model_macs or {}
    return list(given.get(f"{data}/{model}") or given.get(model) or macs or [])


def targets_for(model: str, args, data: str | None = None) -> list[float]:
    """The MACs targets of ``model`` (on ``data``): ``--model-macs`` when it names the pair or the model, else
    ``--macs``."""
    return macs_targets(getattr(args, "model_macs", {}), data, model, args.macs)


@study("recovery", outputs=("recovery.json", "recovery.md", "recovery.png", "recovery_int8.json"))
def main(argv: list[str] | None = None) -> int:
    from toolchain.train import configure_threads

    from . import _recovery_report as report

    p = parser()
    args = p.parse_args(argv)
    if args.recipe == "kd+align" and not args.align:
        p.error("--recipe kd+align needs --align")
    if args.recompute_stale and args.cached_only:
        p.error("--recompute-stale computes cells; it cannot go with --cached-only")
    if args.retime and args.workers > 1:
        p.error("--retime measures latency again, one cell at a time: run it without --workers")
    configure_threads()

    def log(msg: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)

    if args.workers > 1 and not args.cached_only:
        from ._recovery_parallel import compute_cells

        args, failed = compute_cells(args, log)  # the cells as Ray tasks, then assembled as --cached-only would
        if failed:
            log(f"{failed} cell(s) failed (above); the others are cached, a rerun computes the rest. No report written")
            return 1
    doc, runs = assemble(args, command_line("recovery", argv), log)
    report.write(doc, runs, Path(args.out))
    log(f"wrote {Path(args.out) / 'recovery.json'}")
    return 0


def assemble(args, command: str, log) -> tuple[dict[str, Any], list[dict]]:
    """``(doc, runs)``: every dataset x model of ``args`` run (or read, ``--cached-only``) and reported; the
    document ``_recovery_report.write`` writes (also the recovery_selection study's, under its own names)."""
    from . import _recovery_report as report

    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    pairs = [(d, m) for d in args.data for m in args.models]
    given = dict(c.split("=", 1) for c in args.checkpoint or [])
    # --cached-only computes nothing: a dataset x model without a --checkpoint would be trained, so it is skipped
    skipped = [f"{d}/{m}" for d, m in pairs if args.cached_only and not _given(given, d, m)]
    for pair in skipped:
        log(f"{pair}: not assembled (--cached-only and no --checkpoint for it)")
    runs = [run_model(m, d, args, log) for d, m in pairs if f"{d}/{m}" not in skipped]
    doc = report.build(runs, vars(args) | {"out": str(args.out), "skipped_pairs": skipped}, command, started)
    if args.runtimes:  # INT8 columns: the dense model and the val-chosen recovered model, per dataset x model
        from ._recovery_quant import quant_for_run

        for run in runs:
            m = doc["models"][f"{run['dataset']}:{run['model']}"]
            # measured even with --cached-only: --runtimes asks for it (cached per dense + chosen model)
            m["quant"] = quant_for_run(run, m["headline"], cache_root=_cache_root(), threads=args.threads,
                                       repeats=args.repeats, log=log)
    if getattr(args, "runtimes_per_cell", None):  # the same columns for every recovered cell, cached per cell
        from ._recovery_quant import quant_cells_for_run

        for run in runs:
            doc["models"][f"{run['dataset']}:{run['model']}"]["quant_cells"] = quant_cells_for_run(
                run, cache_root=_cache_root(), threads=args.threads, repeats=args.repeats, log=log,
                measure=args.runtimes_per_cell == "measure")
    from . import _recovery_versions as versions

    doc["cell_versions"] = versions.summary(runs)
    return doc, runs
