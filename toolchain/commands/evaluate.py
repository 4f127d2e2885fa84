"""`medprune evaluate`: metrics of a checkpoint on a dataset split."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from .choices import Split
from .options import allow_missing_class_option, ordinal_option


def register(app: typer.Typer) -> None:
    @app.command("evaluate")
    def evaluate_cmd(
        checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="model .safetensors (with its .json)"),
        data: str = typer.Option(None, "--data", "-d", help="dataset (default: the one it was trained on)"),
        split: Split = typer.Option("test", "--split", help="dataset split"),
        batch_size: int = typer.Option(128, "--batch-size"),
        device: str = typer.Option("auto", "--device", help="auto, cpu or cuda"),
        data_dir: str = typer.Option(None, "--data-dir", help="data root (default: MEDPRUNE_DATA)"),
        json_out: Path = typer.Option(None, "--json", help="also write the metrics as JSON here"),
        allow_missing_class: bool = allow_missing_class_option(),
        ordinal: bool = ordinal_option(),
    ) -> None:
        """Evaluate a checkpoint: accuracy, balanced accuracy, AUC, ECE and per-class sensitivity/specificity."""
        from rich.console import Console

        from ..atomic import atomic_file, ensure_writable_file
        from ..evaluate import evaluate_checkpoint
        from ..metrics import metrics_table
        from ..settings import resolve_device

        if json_out is not None:  # a read-only or misplaced --json fails before the evaluation, not after
            ensure_writable_file(json_out, "--json")
        metrics, meta = evaluate_checkpoint(checkpoint, data, split, data_dir=data_dir, batch_size=batch_size,
                                            device=resolve_device(device),
                                            allow_missing_class=allow_missing_class or None,
                                            ordinal=ordinal or None)
        Console().print(metrics_table({f"{meta['arch']} {split}": metrics}))
        if json_out is not None:
            payload = {"checkpoint": str(checkpoint), "data": data or (meta.get("dataset") or {}).get("name"),
                       "split": split, "metrics": metrics}
            with atomic_file(json_out, "w") as fh:
                json.dump(payload, fh, indent=1, default=_jsonable)
            print(f"metrics: {json_out}")


def _jsonable(obj):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(type(obj).__name__)
