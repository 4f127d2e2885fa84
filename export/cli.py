"""Commands contributed by `export` (registered through the medprune.commands entry point)."""

from __future__ import annotations

from pathlib import Path

import typer

from toolchain.commands.choices import constant, one_of

FORMATS = constant("export.exporter", "FORMATS")  # read from its source: exporter imports torch (--help stays light)

Format = one_of(FORMATS)
Precision = one_of(dict.fromkeys(p for precisions in FORMATS.values() for p in precisions))


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export_cmd(
        checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="model .safetensors (with its .json)"),
        fmt: Format = typer.Option("onnx", "--format", "-f", case_sensitive=False, help="model format"),
        precision: Precision = typer.Option("fp32", "--precision", "-p", case_sensitive=False,
                                            help="weights precision (INT8 calibrated on train images)"),
        data: str = typer.Option(None, "--data", "-d", help="dataset (default: the one it was trained on)"),
        out: Path = typer.Option(Path("dist"), "--out", "-o", help="output directory"),
        verify: bool = typer.Option(True, "--verify/--no-verify", help="gate the export on parity with PyTorch"),
        calib_size: int = typer.Option(256, "--calib-size", help="train images used to calibrate INT8"),
        verify_size: int = typer.Option(0, "--verify-size", help="test images to verify on (0 = whole split)"),
        simplify: str = typer.Option("auto", "--simplify", help="onnxslim: auto (keep if fewer nodes), on, off"),
        seed: int = typer.Option(0, "--seed", help="seed of the calibration/verification subsets"),
        data_dir: str = typer.Option(None, "--data-dir", help="data root (default: MEDPRUNE_DATA)"),
    ) -> None:
        """Export a checkpoint to ONNX or OpenVINO (FP32/FP16/INT8), verified against PyTorch.

        Files are named {checkpoint}_{format}_{precision}.onnx|.xml(+.bin) with a .verify.json report;
        an export that fails its parity gate is not written (exit code 3).
        """
        from rich.console import Console

        from toolchain.atomic import ensure_writable_dir
        from toolchain.errors import CheckpointError, GateError
        from toolchain.models import load_checkpoint, read_sidecar

        from .exporter import check_request, export_model, load_images
        from .onnx import SIMPLIFY_MODES
        from .verify import verify_table

        fmt, precision = fmt.lower(), precision.lower()
        check_request(fmt, precision)
        ensure_writable_dir(out, "--out")  # before loading or exporting anything, not after the work
        if simplify not in SIMPLIFY_MODES:
            from toolchain.errors import ConfigError

            raise ConfigError(f"unknown --simplify {simplify!r}: use one of {', '.join(SIMPLIFY_MODES)}")
        console = Console()
        if not console.is_terminal:  # logs and pipes get the whole table, not an 80-column squeeze
            console = Console(width=120)
        try:
            model, meta = load_checkpoint(checkpoint)
            weights, sidecar = read_sidecar(checkpoint)
        except CheckpointError:
            raise
        except Exception as exc:  # a corrupt file can fail inside safetensors/timm too: still one line
            raise CheckpointError(f"cannot load checkpoint {checkpoint}: {type(exc).__name__}: {exc}") from exc
        need_calib = precision == "int8"
        arrays = {}
        if verify or need_calib:
            with console.status("loading data"):
                arrays = load_images(meta, data, data_dir, calib_size=calib_size if need_calib else 0,
                                     eval_size=verify_size if verify else None, seed=seed)
        with console.status(f"exporting {weights.stem} to {fmt} {precision}"):
            try:
                result = export_model(
                    model, meta, out, fmt, precision, name=weights.stem,
                    source_sha256=sidecar.get("weights_sha256"), eval_x=arrays.get("eval_x"),
                    eval_y=arrays.get("eval_y"), calib_x=arrays.get("calib"), simplify_mode=simplify,
                )
            except GateError as exc:
                if getattr(exc, "result", None):
                    console.print(verify_table([exc.result]))
                    console.print("[red]" + "; ".join(exc.result["failures"]) + "[/red]")
                raise
        if result.verification:
            console.print(verify_table([result.verification]))
        else:
            console.print("[yellow]not verified (--no-verify)[/yellow]")
        for f in result.files:
            console.print(f"wrote {f}")
