"""`medprune deploy` — the flags mirror `make deploy` (MODEL, TARGET, DATA, CRITERION, SAMPLING, RATIO,
GRANULARITY, PRECISION, OUT)."""

from __future__ import annotations

import json

import typer


def deploy_cmd(
    model: str = typer.Option("vgg19", help="vgg19, resnet50, vit_b16 or any timm name"),
    target: str = typer.Option("cpu", help="cpu, x86-edge, jetson (= jetson-orin-nano), jetson-agx-orin"),
    data: str = typer.Option("pneumoniamnist", help="MedMNIST name, .npz path or image folder"),
    criterion: str = typer.Option("lrp", help="lrp, dlb, ig, taylor, magnitude, random"),
    sampling: str = typer.Option("clustering", help="confidence, random, clustering"),
    n_per_class: int = typer.Option(10, help="reference images per class"),
    ratio: str = typer.Option("auto", help="'auto' (largest lossless on val) or a float in [0, 1)"),
    granularity: str = typer.Option("group", help="group (Torch-Pruning groups) or neuron"),
    precision: str = typer.Option("default", help="default (the target's), fp32, fp16, int8"),
    out: str = typer.Option("dist", help="package folder root"),
    img_size: int = typer.Option(32, help="model input side (pixels)"),
    epochs: int = typer.Option(3, help="training epochs when no cached checkpoint exists"),
    seed: int = typer.Option(0),
    tolerance: float = typer.Option(1.0, help="max accuracy drop (points) allowed by the gate"),
    sens_tolerance: float = typer.Option(2.0, help="max per-class sensitivity drop (points) allowed"),
    round_to: int = typer.Option(-1, help="channel multiple (-1: the target's, 0: none)"),
    device: str = typer.Option("auto", help="training device: auto, cpu, cuda"),
    data_dir: str = typer.Option(None, help="data root (default: MEDPRUNE_DATA)"),
    name: str = typer.Option(None, help="package name (default: derived from the recipe)"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
) -> None:
    """Train (cached) → score → prune → remove → gate → export → verify → benchmark → package."""
    from .deploy import DeployConfig, deploy

    cfg = DeployConfig(model=model, target=target, data=data, criterion=criterion, sampling=sampling,
                       n_per_class=n_per_class, ratio=ratio, granularity=granularity, precision=precision,
                       out=out, img_size=img_size, epochs=epochs, seed=seed, tolerance=tolerance,
                       sens_tolerance=sens_tolerance, round_to=None if round_to < 0 else round_to,
                       device=device, data_dir=data_dir, name=name)
    summary = deploy(cfg)
    if as_json:
        print(json.dumps(summary, indent=2, default=str))
        return
    from rich.console import Console

    from toolchain.metrics import metrics_table

    console = Console()
    console.print(metrics_table({"dense": summary["dense"], f"pruned {summary['ratio']:.0%}": summary["pruned"]}))
    cmp = summary.get("compare") or {}
    if cmp:
        console.print(f"params {cmp.get('dense', {}).get('params')} → {cmp.get('pruned', {}).get('params')}")
    console.print(f"[green]package[/] {summary['package']}\n[green]tarball[/] {summary['tarball']}\n"
                  f"total {summary['seconds']:.0f} s")


def register(app) -> None:
    app.command("deploy")(deploy_cmd)
