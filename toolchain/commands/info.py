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
    ) -> None:
        """Parameters, MACs per image, on-disk size and the layer list of a model."""
        from rich.console import Console

        from ..errors import ConfigError
        from ..models.summary import model_info, render_info

        if (checkpoint is None) == (model is None):
            raise ConfigError("give exactly one of --checkpoint or --model")
        info = model_info(checkpoint=checkpoint, model=model, num_classes=num_classes, in_chans=in_chans,
                          img_size=img_size, build_args=build_arg, layers=layers)
        render_info(info, Console())
        if json_out is not None:
            from ..atomic import atomic_file

            with atomic_file(json_out, "w") as fh:
                json.dump(info, fh, indent=1, default=str)
