"""`medprune train`: train a model from scratch (cached by config + data fingerprint)."""

from __future__ import annotations

from pathlib import Path

import typer

from .choices import SelectMetric
from .options import allow_missing_class_option, ordinal_option


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train_cmd(
        model: str = typer.Option("vgg19", "--model", "-m", help="vgg19, resnet50, vit_b16 or any timm model name"),
        data: str = typer.Option("pneumoniamnist", "--data", "-d", help="MedMNIST name, .npz path or image folder"),
        img_size: int = typer.Option(32, "--img-size", help="model input side in pixels"),
        in_chans: int = typer.Option(0, "--in-chans", help="model input channels (0: the dataset's)"),
        epochs: int = typer.Option(20, "--epochs"),
        batch_size: int = typer.Option(64, "--batch-size"),
        lr: float = typer.Option(1e-3, "--lr"),
        weight_decay: float = typer.Option(0.05, "--weight-decay"),
        optimizer: str = typer.Option("adamw", "--optimizer", help="adamw or sgd"),
        warmup_epochs: float = typer.Option(1.0, "--warmup-epochs"),
        patience: int = typer.Option(5, "--patience", help="early-stop patience in epochs (0: off)"),
        select: SelectMetric = typer.Option("balanced_accuracy", "--select", help="val metric choosing the best epoch"),
        class_weights: bool = typer.Option(True, "--class-weights/--no-class-weights"),
        augment: bool = typer.Option(True, "--augment/--no-augment"),
        label_smoothing: float = typer.Option(0.0, "--label-smoothing"),
        train_subset: int = typer.Option(0, "--train-subset", help="train on a stratified subset of N images"),
        load_size: int = typer.Option(0, "--load-size", help="resize images to this side while loading (0: off)"),
        seed: int = typer.Option(0, "--seed", help="seed of the weights, batch order and every split cut"),
        val_fraction: float = typer.Option(0.1, "--val-fraction",
                                           help="fraction of train cut into val when the data has no val split"),
        val_from_train: float = typer.Option(0.0, "--val-from-train",
                                             help="move this stratified fraction of train into the official val "
                                             "split (a larger selection split; 0: off)"),
        device: str = typer.Option("auto", "--device", help="auto, cpu or cuda"),
        build_arg: list[str] = typer.Option(None, "--build-arg", help="architecture override key=value (repeatable)"),
        class_names: str = typer.Option(None, "--class-names",
                                        help="comma-separated names for the dataset's classes, in label order"),
        data_dir: str = typer.Option(None, "--data-dir", help="data root (default: MEDPRUNE_DATA)"),
        allow_missing_class: bool = allow_missing_class_option(),
        ordinal: bool = ordinal_option(),
        out: Path = typer.Option(None, "--out", help="also copy the checkpoint here (.safetensors or a folder)"),
        force: bool = typer.Option(False, "--force", help="retrain even if a cached checkpoint exists"),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress output"),
    ) -> None:
        """Train a model from scratch; prints val/test metrics and the checkpoint path."""
        from rich.console import Console

        from ..data.class_names import parse_class_names
        from ..metrics import metrics_table
        from ..models import checkpoint_meta, parse_build_args
        from ..train import TrainConfig, copy_checkpoint, train

        cfg = TrainConfig(
            model=model, data=data, img_size=img_size, in_chans=in_chans or None, epochs=epochs,
            batch_size=batch_size, lr=lr, weight_decay=weight_decay, optimizer=optimizer.lower(),
            warmup_epochs=warmup_epochs, patience=patience, select_metric=select, class_weighting=class_weights,
            augment=augment, label_smoothing=label_smoothing, train_subset=train_subset or None,
            load_size=load_size or None, seed=seed, val_fraction=val_fraction, val_from_train=val_from_train,
            device=device, build_args=parse_build_args(build_arg),
            data_dir=data_dir, quiet=quiet, allow_missing_class=allow_missing_class,
            class_names=parse_class_names(class_names), ordinal=ordinal,
        )
        cfg.validate()  # a bad flag fails in one line before the cache folder is touched
        _check_outputs(out)
        weights = train(cfg, force=force)
        meta = checkpoint_meta(weights)
        console = Console()
        console.print(metrics_table(meta.get("metrics") or {}))
        if "test" not in (meta.get("metrics") or {}):  # deploy trains without reading test (its cache is shared)
            console.print(f"[dim]no test metrics in this checkpoint (trained without reading test, as deploy does, or "
                          f"no separate test split): `medprune evaluate -c {weights} --split test` reports them[/dim]")
        if out is not None:
            weights = copy_checkpoint(weights, out)
        print(f"checkpoint: {weights}")  # plain print: one unwrapped line scripts can parse


def _check_outputs(out: Path | None) -> None:
    """A read-only cache or --out fails now, not after the training it would have held."""
    from ..atomic import ensure_writable_dir, ensure_writable_file
    from ..settings import cache_dir

    ensure_writable_dir(cache_dir(), "cache folder (MEDPRUNE_CACHE)")
    if out is not None:
        if out.suffix == ".safetensors":
            ensure_writable_file(out, "--out")
        else:
            ensure_writable_dir(out, "--out")
