"""``deploy(cfg)``: the stages in README order, top to bottom. Each stage module owns its inputs (= its
cache key) and outputs; this function only wires one stage's results into the next."""

from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict
from pathlib import Path

from toolchain.pipeline import Pipeline, digest

from .calibrate import calibrate_pruned
from .config import DeployConfig
from .explain_fidelity import measure_fidelity
from .export_bench import bench_export, export_deployed
from .holdout import report_phase, seal
from .packaging import build as build_package
from .pruning import Prune, prune_recipe
from .ratio import choose_ratio, ratio_evaluator
from .recover import budget_ratio, recover_pruned
from .report import clinical_gates, final_report
from .scoring import Importance, Reference, load_importance, reference_batch
from .training import train_checkpoint


def deploy(cfg: DeployConfig) -> dict:
    """Run the whole pipeline; returns the summary (package paths, metrics, per-stage timings)."""
    from devices.profiles import load_profile
    from toolchain.ordinal import is_ordinal
    from toolchain.prune_eval import load_context
    from toolchain.settings import cache_dir
    from toolchain.units import find_unit_layers

    started = time.perf_counter()
    cfg = cfg.resolved()
    if cfg.data_dir:
        # the bench harness loads its test set by name only; point it at the same data root
        os.environ["MEDPRUNE_DATA"] = str(Path(cfg.data_dir).expanduser())
    pipe = Pipeline(Path(cfg.cache) if cfg.cache else cache_dir() / "deploy")
    profile = load_profile(cfg.target)
    pipe.console.print(f"[bold]medprune deploy[/] {cfg.model} → {profile.name} ({profile.runtime}, {cfg.precision}); "
                       f"data {cfg.data}, criterion {cfg.criterion}, sampling {cfg.sampling}, ratio {cfg.ratio}, "
                       f"granularity {cfg.granularity}  [config {digest(asdict(cfg))[:12]}]")

    # 1 train (outside the seal: toolchain.train owns its own dataset)
    trained = train_checkpoint(cfg, pipe.console)
    ctx = load_context(trained.weights, cfg.data, data_dir=cfg.data_dir,
                       allow_missing_class=cfg.allow_missing_class or None, ordinal=cfg.ordinal or None)
    seal(ctx.ds)  # stages 2-7 choose on train/val only: reading test before the report phase raises
    layers = find_unit_layers(ctx.model)
    base = {"checkpoint": trained.sha256, "data": ctx.ds.fingerprint}
    # 2 reference, 3 importance
    ref = Reference(**base, sampling=cfg.sampling, n=cfg.n_per_class, seed=cfg.seed, pool=cfg.pool_per_class,
                    ctx=ctx)(pipe)
    x_ref, y_ref = reference_batch(ctx, ref.data["indices"])
    imp = Importance(**base, reference=ref.key_digest, criterion=cfg.criterion, ctx=ctx, x=x_ref, y=y_ref,
                     layers=layers)(pipe)
    scores, example = load_importance(imp), x_ref[:2]
    evaluator = ratio_evaluator(ctx, scores, layers, example, criterion=cfg.criterion,
                                granularity=cfg.granularity, round_to=cfg.round_to, seed=cfg.seed,
                                qwk_tolerance=cfg.qwk_tolerance * cfg.search_margin if is_ordinal(ctx.ds) else None)
    # 4 ratio (lossless rule on val), or the smallest ratio that meets a budget (recover.py)
    if cfg.budget() is not None:
        chosen, ratio = budget_ratio(cfg, pipe, imp, evaluator, scores, example, profile)
    else:
        chosen, ratio, selection = choose_ratio(cfg, pipe, imp, evaluator)
    # 5 prune
    def prune_at(r: float):
        return Prune(ratio_stage=chosen.key_digest, ratio=r, seed=cfg.seed, recipe=prune_recipe(cfg), ctx=ctx,
                     evaluator=evaluator, scores=scores, example=example)(pipe)

    pr = prune_at(ratio)
    unrecovered = None
    if cfg.budget() is not None:  # 5b recover: distillation from the dense model, judged on val (backs off)
        pr, selection, unrecovered = recover_pruned(cfg, pipe, ctx, pr, chosen, prune_at, example, profile)
    # 6 calibrate: the deployed weights are the calibrated ones when it runs
    cal = calibrate_pruned(cfg, pipe, ctx, pr)
    source, weights = (cal, cal.path / "calibrated.safetensors") if cal else (pr, pr.path / "pruned.safetensors")
    # 7 export
    exp = export_deployed(cfg, pipe, profile, source, weights)
    with report_phase():
        # 8 test-report: test read once; the clinical gates judge it (exit 3, no package)
        report = final_report(cfg, pipe, ctx, trained, pr, source, weights, unrecovered)
        gates = clinical_gates(cfg, report.data)
        # 9 fidelity, 10 bench, 11 package: reporting only
        fid = measure_fidelity(cfg, pipe, ctx, source, weights)
        bench = bench_export(cfg, pipe, exp)
        result = build_package(cfg, profile, pipe, ctx, pr=pr, exp=exp, bench=bench, fid=fid,
                               cal=cal.data if cal else None, test=report.data, gates=gates, selection=selection,
                               training=trained.config)
    package_seconds = result.pop("package_seconds")
    result["pruned_checkpoint"] = str(weights)
    result["checkpoint"] = str(trained.weights)
    result["checkpoint_sha256"] = trained.sha256  # the fingerprint a result citing this deploy names
    result["seconds"] = round(time.perf_counter() - started, 1)
    # train is cached by toolchain.train itself (or skipped with --checkpoint): its wall time tells which
    stages = {"train": {"source": trained.source, "seconds": trained.seconds}}
    stages.update(pipe.summary()["stages"])
    stages["package"] = {"cached": False, "seconds": package_seconds}
    result["stages"] = stages
    result["config"] = asdict(cfg)
    result["host"] = platform.node()
    return result
