"""`medprune verify-package` (checksums, file list, signature, smoke test) and `medprune keygen`."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console


def register(app: typer.Typer) -> None:
    @app.command("verify-package")
    def verify_package_cmd(
        package: Path = typer.Argument(..., help="package .tar.gz or extracted folder"),
        trusted_key: Path = typer.Option(None, "--trusted-key",
                                         help="Ed25519 public key (PEM): refuse unless the package is signed by it"),
        runtime: str = typer.Option(None, help="onnxruntime or openvino (default: the package's)"),
        as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
    ) -> None:
        """Check a bedside package without running any of its code: every checksum, no unlisted file,
        the signature (with --trusted-key), and its sample images through the model."""
        from .package import verify_package

        report = verify_package(package, runtime=runtime, trusted_key=trusted_key)
        if as_json:
            print(json.dumps(report, indent=2))
        else:
            Console(highlight=False).print(
                f"[green]OK[/] {report['name']}: {report['files_checked']} files verified, "
                f"{report['top1_agreement']}/{report['samples']} samples agree, "
                f"max |Δprob| {report['max_abs_prob_diff']:.2e} ({report['runtime']}); "
                + (f"[bold]{report['signature']}[/]" if report["signed"]
                   else f"[bold yellow]{report['signature']}[/]")
            )

    @app.command("keygen")
    def keygen_cmd(
        out: Path = typer.Option(..., "--out", help="folder for medprune-signing.key (0600) and .pub"),
    ) -> None:
        """Make an Ed25519 key pair for signing packages (`medprune deploy --sign-key`); never overwrites."""
        from .signing import keygen

        private, public = keygen(out)
        Console(highlight=False).print(
            f"[green]OK[/] private key {private} (mode 0600: keep it on the build machine, never in a package)\n"
            f"   public key  {public} (install it on each device; predict.py --trusted-key {public.name})")
