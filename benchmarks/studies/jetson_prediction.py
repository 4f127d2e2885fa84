"""Calibrate the roofline on this machine, then predict the Jetson latency of the ``make bench`` models.

    medprune study jetson_prediction [--models ONNX_OR_DIR ...] [--targets jetson-orin-nano,jetson-agx-orin]

A suite of random-weight CNNs and ViTs plus ``--models`` (default: ``$MEDPRUNE_CACHE/bench_models``,
written by ``medprune study harness_report``) is measured here with ONNX Runtime at batch 1; the
roofline's efficiency factors are fitted to them (``devices.roofline_fit``) and each model's latency on
the Jetson targets is PREDICTED from published peaks. Writes benchmarks/results/roofline.{json,md}.
"""

from __future__ import annotations

import os
from pathlib import Path

from benchmarks.harness import machine_info
from benchmarks.report import write_report
from toolchain.settings import cache_dir

from .registry import StudyParser, command_line, study


@study("jetson_prediction", outputs=("roofline.json", "roofline.md"))
def main(argv: list[str] | None = None) -> None:
    from devices.profiles import all_profiles, load_profile
    from devices.roofline import onnx_layer_costs, predict_for_profile
    from devices.roofline_fit import run_calibration

    p = StudyParser("jetson_prediction", __doc__)
    p.add_argument("--models", type=Path, nargs="*", default=None,
                   help="ONNX files or folders (default: $MEDPRUNE_CACHE/bench_models from make bench)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--runs", type=int, default=30)
    p.add_list("--targets", default="jetson-orin-nano,jetson-agx-orin", choices=[t.name for t in all_profiles()],
               help="target profiles to predict")
    p.add_out()
    p.add_argument("--stem", default="roofline")
    a = p.parse_args(argv)
    command = command_line("jetson_prediction", argv)
    sources = a.models if a.models is not None else [cache_dir() / "bench_models"]
    files = []
    for src in sources:
        files += sorted(src.glob("*.onnx")) if src.is_dir() else [src]
    extra = [(f.stem, f) for f in files]
    cal = run_calibration(a.threads, runs=a.runs, extra=extra, progress=print)
    predictions = []
    for target in a.targets:
        profile = load_profile(target)
        for name, path in extra:
            pred = predict_for_profile(onnx_layer_costs(path), profile, cal)
            pred.update({"model": name, "batch": 1})
            predictions.append(pred)
    notes = [f"fit on {len(cal.points)} models measured here with ONNX Runtime at batch 1, {a.threads} threads "
             f"(minimum of {a.runs} runs, since contention on this shared machine only adds time): "
             f"MAPE {cal.mape:.1f}%, leave-one-out MAPE {cal.loo_mape if cal.loo_mape is None else round(cal.loo_mape, 1)}%",
             "Jetson latencies are PREDICTED from published peaks and these efficiency factors, never measured here"]
    report = {"title": "medprune roofline calibration and predicted Jetson latency", "command": command,
              "machine": machine_info(), "target": None, "models": [], "comparisons": [],
              "calibration": cal.to_dict(), "predictions": predictions, "device_commands": {}, "notes": notes}
    paths = write_report(report, a.out, stem=a.stem)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
