"""`medprune info`: size, compute and layers of a checkpoint or a freshly built model."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("info")
    def info_cmd(
        checkpoint: Path = typer.Option(None, "--checkpoint", "-c", help="model .safetensors (with its .json)"),
        model: str = typer.Option(None, "--model", "-m", help="build this architecture instead (random init)"),
        num_classes: int = typer.Option(2, "--num-classes", help="with --model"),
        in_chans: int = typer.Option(1, "--in-chans", help="with --model"),
        img_size: int = typer.Option(32, "--img-size", help="with --model"),
        build_arg: list[str] = typer.Option(None, "--build-arg", help="with --model: key=value (repeatable)"),
        layers: bool = typer.Option(True, "--layers/--no-layers", help="list every layer with its output shape"),
        json_out: Path = typer.Option(None, "--json", help="also write the summary as JSON here"),
        compare: bool = typer.Option(True, "--compare/--no-compare",
                                     help="for a pruned checkpoint: before/after params, MACs, size, eager latency"),
    ) -> None:
        """Parameters, MACs per image, on-disk size and the layer list of a model."""
        from rich.console import Console

        from ..atomic import ensure_writable_file
        from ..errors import ConfigError
        from ..models.summary import model_info, render_info

        if (checkpoint is None) == (model is None):
            raise ConfigError("give exactly one of --checkpoint or --model")
        if json_out is not None:
            ensure_writable_file(json_out, "--json")
        info = model_info(checkpoint=checkpoint, model=model, num_classes=num_classes, in_chans=in_chans,
                          img_size=img_size, build_args=build_arg, layers=layers)
        console = Console()
        render_info(info, console)
        if checkpoint is not None and compare:
            before_after = _pruned_vs_dense(checkpoint)
            if before_after is not None:
                info["pruned_vs_dense"] = before_after
                console.print(_compare_table(before_after))
        if json_out is not None:
            from ..atomic import atomic_file

            with atomic_file(json_out, "w") as fh:
                json.dump(info, fh, indent=1, default=str)


def _pruned_vs_dense(checkpoint: Path) -> dict | None:
    """Params/MACs/size/eager latency of a pruned checkpoint next to its dense architecture.

    The dense model is rebuilt from the sidecar (same architecture and build args); its weights do
    not matter for these numbers, so nothing but the pruned checkpoint is needed.
    """
    import torch

    from ..models import load_checkpoint
    from ..models.checkpoint import model_from_meta
    from ..removal import compare_models

    pruned, meta = load_checkpoint(checkpoint)
    if not meta.get("pruning"):
        return None
    dense = model_from_meta({k: v for k, v in meta.items() if k != "pruning"}).eval()
    size = int(meta["img_size"])
    example = torch.zeros(1, int(meta["in_chans"]), size, size)
    return compare_models(dense, pruned, example)


def _compare_table(cmp: dict):
    from rich.table import Table

    table = Table(title="pruned vs dense (eager PyTorch, this machine)")
    for col in ("", "dense", "pruned", "dense/pruned"):
        table.add_column(col, justify="right" if col else "left")
    for key, label in (("params", "parameters"), ("macs", "MACs / image"), ("size_bytes", "size on disk (bytes)")):
        row = cmp.get(key) or {}
        table.add_row(label, f"{row.get('dense', 0):,}", f"{row.get('pruned', 0):,}", f"{row.get('ratio', 0):.2f}")
    for batch, row in (cmp.get("latency") or {}).items():
        table.add_row(f"latency {batch} (median ms)", f"{row['dense']['median_ms']:.2f}",
                      f"{row['pruned']['median_ms']:.2f}", f"{row['speedup']:.2f}")
    return table
