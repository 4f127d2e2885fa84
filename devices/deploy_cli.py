"""`medprune deploy` — the flags mirror `make deploy` (MODEL, TARGET, DATA, CRITERION, SAMPLING, RATIO,
GRANULARITY, PRECISION, OUT)."""

from __future__ import annotations

import json

import typer

from toolchain.commands.choices import Criterion, Granularity, Sampling, constant, one_of
from toolchain.commands.options import allow_missing_class_option, ordinal_option

from .profiles import PRECISIONS, profile_names

# read from source: importing devices.deploy loads the whole pipeline (torch), and --help must not
TARGET_ALIASES = constant("devices.deploy.config", "TARGET_ALIASES")
RECOVERY = constant("toolchain.recovery.finetune", "RECIPE")  # the one recovery recipe (prune and the study share it)
Target = one_of([*profile_names(), *TARGET_ALIASES])
Precision = one_of(["default", *PRECISIONS])


def deploy_cmd(
    model: str = typer.Option(None, help="vgg19, resnet50, vit_b16 or any timm name [default: the checkpoint's, "
                                         "else vgg19]"),
    target: Target = typer.Option("cpu", help="target profile (medprune devices); jetson = jetson-orin-nano"),
    data: str = typer.Option(None, help="MedMNIST name, .npz path or image folder [default: the checkpoint's, "
                                        "else pneumoniamnist]"),
    criterion: Criterion = typer.Option("lrp", help="importance criterion"),
    sampling: Sampling = typer.Option("clustering", help="reference sampling strategy"),
    n_per_class: int = typer.Option(10, help="reference images per class"),
    pool_per_class: int = typer.Option(256, help="train images per class the sampler scores (0: all)"),
    ratio: str = typer.Option("auto", help="'auto' (largest ratio passing the lossless rule on val: paired "
                                           "bootstrap bounds of the drops) or a float in [0, 1)"),
    granularity: Granularity = typer.Option("neuron", help="neuron (per-unit masks; what cannot be removed stays zeroed) or group (Torch-Pruning groups)"),
    precision: Precision = typer.Option("default", help="default: the target's"),
    out: str = typer.Option("dist", help="package folder root"),
    img_size: int = typer.Option(None, help="model input side in pixels [default: the checkpoint's, else 32]"),
    epochs: int = typer.Option(3, help="training epochs when no cached checkpoint exists"),
    seed: int = typer.Option(0),
    val_from_train: float = typer.Option(None, "--val-from-train",
                                         help="as `medprune train`: move this stratified fraction of train into the "
                                              "official val split before training (a larger selection split) "
                                              "[default: the checkpoint's, else 0]"),
    val_fraction: float = typer.Option(None, "--val-fraction",
                                       help="as `medprune train`: fraction of train cut into val when the data has "
                                            "no val split [default: the checkpoint's, else 0.1]"),
    tolerance: float = typer.Option(1.0, help="max accuracy drop (points): bound of the val drop when choosing, "
                                              "the test drop at the final gate"),
    sens_tolerance: float = typer.Option(2.0, help="max sensitivity drop (points) of any class, as --tolerance"),
    ordinal: bool = ordinal_option(),
    qwk_tolerance: float = typer.Option(2.0, help="with graded classes (--ordinal): max test QWK drop at the final "
                                                  "gate, points (100 x kappa)"),
    data_description: str = typer.Option(None, help="text file describing the data (population, sites, labels) "
                                                    "for the model card [default: DESCRIPTION.md beside the data]"),
    max_ratio: float = typer.Option(0.9, help="largest ratio the auto search tries"),
    search_margin: float = typer.Option(1.0, help="the val search uses tolerances x margin, in (0, 1]; < 1 demands "
                                                  "more val evidence where val may be optimistic about test (a val "
                                                  "split carved from train, a separate test cohort)"),
    round_to: int = typer.Option(-1, help="channel multiple (-1: the target's, 0: none)"),
    fidelity_images: int = typer.Option(16, help="test images for explanation fidelity (0: skip)"),
    calibrate: bool = typer.Option(True, "--calibrate/--no-calibrate",
                                   help="temperature-scale the pruned model on val (predictions unchanged)"),
    bench_runs: int = typer.Option(50, help="timed runs of the benchmark"),
    bench_cache: bool = typer.Option(True, "--bench-cache/--no-bench-cache",
                                     help="reuse a cached benchmark (off: measure again)"),
    samples: int = typer.Option(4, help="sample images carried in the package for its smoke test"),
    device: str = typer.Option("auto", help="training device: auto, cpu, cuda"),
    data_dir: str = typer.Option(None, help="data root (default: MEDPRUNE_DATA)"),
    name: str = typer.Option(None, help="package name (default: derived from the recipe)"),
    checkpoint: str = typer.Option(None, help="deploy this trained dense checkpoint (skips training)"),
    cache: str = typer.Option(None, help="stage cache folder (default: $MEDPRUNE_CACHE/deploy)"),
    sign_key: str = typer.Option(None, "--sign-key", help="Ed25519 private key (medprune keygen) to sign the "
                                                          "package with (manifest.sig)"),
    allow_missing_class: bool = allow_missing_class_option(),
    speedup: str = typer.Option(None, help="budget instead of a ratio: batch-1 speedup (e.g. 3), measured with "
                                           "ONNX Runtime here, roofline-predicted for a Jetson; pruned to it, "
                                           "recovered by distillation, judged on val"),
    macs_budget: str = typer.Option(None, help="budget: MACs (<=1: fraction of dense, or e.g. 120M)"),
    params_budget: str = typer.Option(None, help="budget: parameters (<=1: fraction of dense, or e.g. 2M)"),
    latency_ms: str = typer.Option(None, help="budget: batch-1 latency in ms on the target's runtime"),
    recover_epochs: int = typer.Option(RECOVERY["epochs"], help="distillation epochs after pruning to a budget"),
    kd_weight: float = typer.Option(None, help=f"budget: weight of the distillation (KL x T^2) term [recipe: "
                                               f"{RECOVERY['kd_weight']}]. Setting any of these four fixes the recovery "
                                               "recipe; unset, deploy tries pure distillation (the recipe), then "
                                               "CE + distillation with augmentation, first passing on val wins"),
    ce_weight: float = typer.Option(None, help=f"budget: weight of the class-weighted CE term [recipe: "
                                               f"{RECOVERY['ce_weight']}]"),
    kd_temperature: float = typer.Option(None, help=f"budget: distillation temperature [recipe: "
                                                    f"{RECOVERY['temperature']}]"),
    recover_augment: bool = typer.Option(None, "--recover-augment/--no-recover-augment",
                                         help=f"budget: augment recovery batches [recipe: {RECOVERY['augment']}]"),
    ship_best_passing: bool = typer.Option(False, "--ship-best-passing",
                                           help="budget: when no recovered model at the budget passes on val, package "
                                                "the best smaller budget that does (labelled; else exit 3, test unread)"),
    search_aware: bool = typer.Option(False, "--search-aware",
                                      help="judge the val search's candidates with simultaneous bounds (Bonferroni "
                                           "over the k ratios or budget back-offs it may try: each at 1 - 0.05/k) "
                                           "instead of 95 % each; off: the rule committed results used"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON on stdout"),
) -> None:
    """Train (cached) → sample → score → ratio (val) → remove → calibrate (val) → export → test report +
    gates (test read once) → fidelity → benchmark → package."""
    from .deploy import DeployConfig, DeployInterrupted, deploy

    cfg = DeployConfig(model=model, target=target, data=data, criterion=criterion, sampling=sampling,
                       n_per_class=n_per_class, pool_per_class=pool_per_class or None, ratio=ratio,
                       granularity=granularity, precision=precision, out=out, img_size=img_size, epochs=epochs,
                       seed=seed, val_from_train=val_from_train, val_fraction=val_fraction, tolerance=tolerance,
                       sens_tolerance=sens_tolerance, max_ratio=max_ratio, search_margin=search_margin,
                       ordinal=ordinal, qwk_tolerance=qwk_tolerance, data_description=data_description,
                       round_to=None if round_to < 0 else round_to, fidelity_images=fidelity_images,
                       calibrate=calibrate,
                       bench_runs=bench_runs, cache_bench=bench_cache, samples=samples, device=device,
                       data_dir=data_dir, name=name, checkpoint=checkpoint, cache=cache, sign_key=sign_key,
                       allow_missing_class=allow_missing_class, speedup=speedup, macs_budget=macs_budget,
                       params_budget=params_budget, latency_ms=latency_ms, recover_epochs=recover_epochs,
                       kd_weight=kd_weight, ce_weight=ce_weight, kd_temperature=kd_temperature,
                       recover_augment=recover_augment, ship_best_passing=ship_best_passing,
                       search_aware=search_aware)
    try:
        summary = deploy(cfg)
    except KeyboardInterrupt:
        # typer turns Ctrl-C into a silent exit 130; say what was kept instead
        raise DeployInterrupted("interrupted; finished stages stay cached (a rerun resumes), no partial stage "
                                "or package was kept") from None
    if as_json:
        print(json.dumps(summary, indent=2, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    from toolchain.metrics import metrics_table

    console = Console()
    columns = {"dense": summary["dense"], f"pruned {summary['ratio']:.0%}": summary["pruned"]}
    if summary.get("pruned_before_recovery"):  # a budget run: the pruned model before and after recovery
        columns = {"dense": summary["dense"], f"pruned {summary['ratio']:.0%}": summary["pruned_before_recovery"],
                   "recovered": summary["pruned"]}
    cal = summary.get("calibration") or {}
    if "fit_split" in cal:
        columns[f"deployed (T={cal['temperature']:.2f})"] = summary["deployed"]
    console.print(metrics_table(columns, title=f"test split (n={summary['dense']['n']}, read once after choosing "
                                               "on val; 95 % intervals)"))
    drop = (summary.get("gates") or {}).get("accuracy_drop_ci_pts")
    if drop:
        console.print(f"test accuracy drop {summary['gates']['accuracy_drop_pts']:.2f} pts "
                      f"[95% CI {drop[0]:.2f}, {drop[1]:.2f}] (gate: <= {summary['gates']['tolerance_pts']})")
    rec = summary.get("recovery")
    if rec:
        m = rec["measured"]
        console.print(f"budget {rec['budget']['kind']} {rec['budget']['value']:g} "
                      f"({'met' if rec['budget']['met'] else 'NOT met'}): {m['quantity']} {m['dense']:.4g} → "
                      f"{m['pruned']:.4g} (÷{m.get('speedup', m.get('reduction')):.2f}, {m['label']}); recovery "
                      + ", ".join(f"{k} {v}" for k, v in (rec.get("recipe") or {}).items()))
    for line in (summary.get("selection") or {}).get("warnings") or []:
        console.print(f"[yellow]warning:[/] {line}")
    cmp = summary.get("compare") or {}
    if cmp:
        params, macs = cmp.get("params", {}), cmp.get("macs", {})
        console.print(f"params {params.get('dense')} → {params.get('pruned')} (÷{params.get('ratio', 0):.2f}), "
                      f"MACs {macs.get('dense')} → {macs.get('pruned')} (÷{macs.get('ratio', 0):.2f})")
    for m in (summary.get("bench") or {}).get("measured") or []:
        lat = m.get("latency_ms") or {}
        console.print(f"latency (measured here, {m.get('runtime')}): p50 {lat.get('p50', float('nan')):.2f} ms")
    for p in (summary.get("bench") or {}).get("predicted") or []:
        if isinstance(p.get("latency_ms"), (int, float)):
            console.print(f"latency (roofline prediction for {p.get('target')}, batch {p.get('batch')}, "
                          f"{p.get('precision')}): {p['latency_ms']:.2f} ms")
    table = Table(title="stages", show_header=True)
    for col in ("stage", "cached", "seconds"):
        table.add_column(col)
    for stage, info in summary["stages"].items():
        table.add_row(stage, str(info.get("cached", info.get("source", ""))), f"{info.get('seconds', 0):.1f}")
    console.print(table)
    console.print(f"[green]package[/] {summary['package']}\n[green]tarball[/] {summary['tarball']}\n"
                  f"total {summary['seconds']:.0f} s")


def register(app) -> None:
    app.command("deploy")(deploy_cmd)
