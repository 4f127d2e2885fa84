"""Commands contributed by `devices` (registered through the medprune.commands entry point):
``medprune devices`` lists the target profiles; ``medprune bench`` benchmarks a model for one."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import typer

from toolchain.commands.choices import one_of

from .profiles import profile_names

Target = one_of(profile_names())


def devices() -> None:
    """List the target device profiles (runtime, precision, threads, batch sizes, peaks with sources)."""
    from rich.console import Console
    from rich.table import Table

    from .profiles import all_profiles

    table = Table(title="medprune target devices (* = runs on the device; here it is predicted)")
    for col in ("target", "runtime", "prec", "threads", "batch", "budget MB", "peak GFLOP/s", "GB/s"):
        table.add_column(col, no_wrap=True)
    for p in all_profiles():
        peak = p.peak_compute[p.precision].value
        bw = p.memory_bandwidth.value
        table.add_row(p.name + ("" if p.is_local else "*"), p.runtime, p.precision,
                      str(p.threads) if p.threads else "all", ",".join(map(str, p.batch_sizes)),
                      str(p.memory_budget_mb), f"{peak:,.0f}" if peak else "measured", f"{bw:g}" if bw else "measured")
    console = Console()
    console = Console(width=max(console.width, 100))  # the table is unreadable folded into 80 columns
    console.print(table)
    for p in all_profiles():
        console.print(f"[bold]{p.name}[/bold]: {p.description}")
    console.print("Sources of every published number: devices/profiles/<target>.json ('source' fields).")


def bench(
    model: Path = typer.Option(..., "--model", help="checkpoint (.safetensors), ONNX (.onnx) or OpenVINO IR (.xml)"),
    target: Target = typer.Option("cpu", "--target", help="target device profile (medprune devices)"),
    data: str = typer.Option(None, "--data", help="dataset for accuracy on its test split (e.g. pneumoniamnist)"),
    runs: int = typer.Option(50, "--runs", min=1, help="timed batch-1 runs"),
    out: Path = typer.Option(Path("bench"), "--out", help="output folder for the report"),
    calibrate: bool = typer.Option(True, "--calibrate/--no-calibrate",
                                   help="calibrate the roofline on this machine for predicted targets (cached)"),
    cross_check: bool = typer.Option(True, "--cross-check/--no-cross-check",
                                     help="also run OpenVINO benchmark_app when the runtime is OpenVINO"),
) -> None:
    """Measure latency/throughput/peak RSS/size/accuracy for a target, or predict it for a Jetson."""
    from rich.console import Console

    from .bench import run_bench

    console = Console(stderr=True)
    command = "medprune " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    with console.status("benchmarking") as status:
        report, paths = run_bench(model, target, data=data, runs=runs, out=out, command=command,
                                  calibrate=calibrate, cross_check=cross_check,
                                  progress=lambda m: status.update(m))
    for m in report["models"]:
        lat = m["latency_ms"]
        line = (f"[measured] {m['name']} {m['runtime']} x{m['threads']} threads: p50 {lat['p50']:.3f} ms, "
                f"p99 {lat['p99']:.3f} ms, {m['throughput']['images_per_s']:.1f} img/s at batch "
                f"{m['throughput']['batch']}")
        if m.get("memory"):
            line += f", peak RSS {m['memory']['peak_rss_mb']:.0f} MB"
        if m.get("accuracy"):
            line += f", accuracy {m['accuracy']['accuracy']:.4f}, AUC {m['accuracy'].get('auc') or float('nan'):.4f}"
        console.print(line, highlight=False, markup=False)
        if m.get("cross_check", {}).get("median_ms"):
            cc = m["cross_check"]
            console.print(f"[measured] benchmark_app median {cc['median_ms']:.3f} ms "
                          f"(harness/benchmark_app = {cc['ratio_harness_over_benchmark_app']:.2f})", highlight=False, markup=False)
    for p in report["predictions"]:
        console.print(f"[PREDICTED] {p['model']} on {p['target']} ({p['precision']}, batch {p['batch']}): "
                      f"{p['latency_ms']:.3f} ms (roofline; validation error of this device class: "
                      f"{'unknown' if p['calibration_mape'] is None else str(round(p['calibration_mape'], 1)) + '%'}"
                      f", {p.get('error_source', 'this machine calibration')})",
                      highlight=False, markup=False)
    for note in report["notes"]:
        console.print(f"note: {note}", highlight=False, markup=False)
    print(paths["json"])


def register(app) -> None:
    app.command("devices")(devices)
    app.command("bench")(bench)
    from .deploy_cli import register as register_deploy

    register_deploy(app)
