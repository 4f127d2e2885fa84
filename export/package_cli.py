"""`medprune verify-package`: checksums, tamper and path-traversal refusal, parity smoke test."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console


def register(app: typer.Typer) -> None:
    @app.command("verify-package")
    def verify_package_cmd(
        package: Path = typer.Argument(..., help="package .tar.gz or extracted folder"),
        runtime: str = typer.Option(None, help="onnxruntime or openvino (default: the package's)"),
        as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
    ) -> None:
        """Check every checksum of a bedside package and run its sample images through the model."""
        from .package import verify_package

        report = verify_package(package, runtime=runtime)
        if as_json:
            print(json.dumps(report, indent=2))
        else:
            Console().print(
                f"[green]OK[/] {report['name']}: {report['files_checked']} files verified, "
                f"{report['top1_agreement']}/{report['samples']} samples agree, "
                f"max |Δprob| {report['max_abs_prob_diff']:.2e} ({report['runtime']})"
            )
