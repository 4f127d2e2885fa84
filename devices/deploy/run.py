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
from .export_bench import export_and_bench
from .packaging import build as build_package
from .pruning import Prune, clinical_gates, prune_recipe
from .ratio import choose_ratio, ratio_evaluator
from .scoring import Importance, Reference, load_importance, reference_batch
from .training import train_checkpoint


def deploy(cfg: DeployConfig) -> dict:
    """Run the whole pipeline; returns the summary (package paths, metrics, per-stage timings)."""
    from devices.profiles import load_profile
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

    # 1 train
    trained = train_checkpoint(cfg, pipe.console)
    ctx = load_context(trained.weights, cfg.data, data_dir=cfg.data_dir)
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
                                granularity=cfg.granularity, round_to=cfg.round_to)
    # 4 ratio, 5 gate-check
    chosen, ratio, gate_check = choose_ratio(cfg, pipe, imp, evaluator)
    # 6 prune + clinical gates
    pr = Prune(ratio_stage=chosen.key_digest, ratio=ratio, seed=cfg.seed, recipe=prune_recipe(cfg), ctx=ctx,
               evaluator=evaluator, scores=scores, example=example)(pipe)
    gates = clinical_gates(cfg, pr.data["dense"], pr.data["pruned"])
    # 7 calibrate: the deployed weights are the calibrated ones when it runs
    cal = calibrate_pruned(cfg, pipe, ctx, pr)
    source, weights = (cal, cal.path / "calibrated.safetensors") if cal else (pr, pr.path / "pruned.safetensors")
    # 8 fidelity, 9 export, 10 bench
    fid = measure_fidelity(cfg, pipe, ctx, source, weights)
    exp, bench = export_and_bench(cfg, pipe, profile, source, weights)
    # 11 package
    result = build_package(cfg, profile, pipe, ctx, pr=pr, exp=exp, bench=bench, fid=fid,
                           cal=cal.data if cal else None, gates=gates, gate_check=gate_check,
                           training=trained.config)
    package_seconds = result.pop("package_seconds")
    result["pruned_checkpoint"] = str(weights)
    result["checkpoint"] = str(trained.weights)
    result["seconds"] = round(time.perf_counter() - started, 1)
    # train is cached by toolchain.train itself (or skipped with --checkpoint): its wall time tells which
    stages = {"train": {"source": trained.source, "seconds": trained.seconds}}
    stages.update(pipe.summary()["stages"])
    stages["package"] = {"cached": False, "seconds": package_seconds}
    result["stages"] = stages
    result["config"] = asdict(cfg)
    result["host"] = platform.node()
    return result
