"""Fit the roofline to PUBLISHED Jetson latencies, validate it leave-one-out, predict medprune's models.

    medprune study jetson_prediction [--targets jetson-orin-nano,jetson-agx-orin] [--archs vgg19,resnet50,vit_b16]
                                     [--sizes 64,224] [--models ONNX_OR_DIR ...]

Per device class, the roofline's compute/memory efficiencies (bounded to (0, 1] of the profile's published
peaks) and per-layer overhead are fitted to published measured TensorRT latencies of standard models
(``devices/profiles/published/jetson_latency.json``, every figure with its source URL and setting);
each model is left out in turn to measure how wrong a prediction for an unseen model is (MAPE and the
range of measured / predicted). The fits go to ``devices/profiles/published/roofline_fit.json`` (what
``medprune bench``/``deploy`` predict with); medprune's architectures (random weights, dense) and
``--models`` are then PREDICTED with their device class's fit and error. Writes
benchmarks/results/roofline.{json,md}. Nothing here is measured on a Jetson.
"""

from __future__ import annotations

import json
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.harness import machine_info
from toolchain.atomic import atomic_file

from .registry import StudyParser, command_line, study


def _medprune_models(archs: list[str], sizes: list[int], extra: list[Path], tmp: Path) -> list[tuple[str, Path]]:
    """ONNX files of medprune's architectures (dense, 2 classes, 1 channel) at each size, plus ``extra``."""
    from export.onnx import export_onnx
    from toolchain.models.registry import build_model

    out = []
    for arch in archs:
        for size in sizes:  # medprune's own exporter: the graph a deployed package ships
            model = build_model(arch, num_classes=2, in_chans=1, img_size=size).eval()
            export_onnx(model, tmp / f"{arch}_{size}.onnx", (1, size, size))
            out.append((f"{arch}_{size}_dense", tmp / f"{arch}_{size}.onnx"))
    for src in extra:
        out += [(f.stem, f) for f in (sorted(src.glob("*.onnx")) if src.is_dir() else [src])]
    return out


def _markdown(report: dict) -> str:
    lines = [f"# {report['title']}", "", f"Command: `{report['command']}`  ", f"Created: {report['created']}", ""]
    lines += ["## Validation on published measured latencies (leave-one-out)", "",
              "| device | n | compute eff | memory eff | overhead us/layer | in-sample MAPE | LOO MAPE | "
              "measured / LOO-predicted range |", "|---|---|---|---|---|---|---|---|"]
    for t, f in report["fits"].items():
        band = f"{f['loo_band'][0]:.2f}x - {f['loo_band'][1]:.2f}x" if f["loo_band"] else "n/a"
        lines.append(f"| {t} | {f['n']} | {f['compute_eff']:.3f} | {f['memory_eff']:.3f} | {f['overhead_us']:.2f} | "
                     f"{f['mape']:.3f} | {f['loo_mape']:.3f} | {band} |")
    lines += ["", "| device | published model | precision | measured ms | fit ms | leave-one-out ms | MMACs |",
              "|---|---|---|---|---|---|---|"]
    for t, f in report["fits"].items():
        for p in f["points"]:
            lines.append(f"| {t} | {p['name']} | {p['precision']} | {p['measured_ms']:.3g} | {p['predicted_ms']:.3g} |"
                         f" {p.get('loo_predicted_ms', float('nan')):.3g} | {p['macs'] / 1e6:.4g} |")
    lines += ["", "## Predicted latency of medprune's models (roofline, NOT measured)", "",
              "| model | target | precision | batch | PREDICTED ms | range ms (LOO band) | validation error % "
              "(LOO MAPE, this device class) | MMACs |", "|---|---|---|---|---|---|---|---|"]
    for p in report["predictions"]:
        rng = f"{p['range_ms'][0]:.3g} - {p['range_ms'][1]:.3g}" if p.get("range_ms") else "n/a"
        err = "unknown" if p["error_pct"] is None else f"{p['error_pct']:.1f}"
        lines.append(f"| {p['model']} | {p['target']} | {p['precision']} | {p['batch']} | {p['latency_ms']:.3g} | "
                     f"{rng} | {err} | {p['macs'] / 1e6:.4g} |")
    lines += ["", "## Sources", ""]
    for key, src in report["sources"].items():
        lines.append(f"- **{key}**: [{src['title']}]({src['url']}). Setting: {src['setting']}. "
                     f"Not stated: {src['not_stated']}.")
    lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]] + [""]
    return "\n".join(lines)


@study("jetson_prediction", outputs=("roofline.json", "roofline.md"))
def main(argv: list[str] | None = None) -> dict:
    from devices.profiles import all_profiles, load_profile
    from devices.roofline import FITS_PATH, onnx_layer_costs, predict_for_profile, save_device_fits
    from devices.roofline_fit import fit_published_devices, load_published

    remote = [t.name for t in all_profiles() if not t.is_local]
    p = StudyParser("jetson_prediction", __doc__)
    p.add_list("--targets", default=",".join(remote), choices=remote, help="Jetson profiles to fit and predict")
    p.add_list("--archs", default="vgg19,resnet50,vit_b16",
               help="medprune architectures to predict (dense, random weights; names as in --model)")
    p.add_list("--sizes", default="64,224", kind=int, help="input sizes (px) of those architectures")
    p.add_argument("--models", type=Path, nargs="*", default=[], help="extra ONNX files or folders to predict")
    p.add_out()
    p.add_argument("--stem", default="roofline")
    p.add_argument("--fit-out", type=Path, default=FITS_PATH, help="where the fits are written (read by bench)")
    a = p.parse_args(argv)
    fits = fit_published_devices(a.targets, progress=print)
    save_device_fits(fits, a.fit_out)
    by_target = {f.target: f for f in fits}
    predictions = []
    with tempfile.TemporaryDirectory(prefix="medprune-jetson-pred-") as tmp:
        for name, path in _medprune_models(a.archs, a.sizes, a.models, Path(tmp)):
            for target in a.targets:
                profile = load_profile(target)
                for batch in sorted({1, profile.throughput_batch}):
                    pred = predict_for_profile(onnx_layer_costs(path, batch), profile,
                                               device_fit=by_target.get(target))
                    pred.update({"model": name, "batch": batch})
                    predictions.append(pred)
    per_class = {f.target: f.loo_mape for f in fits}
    worst = max(per_class.values()) if per_class else None
    data = load_published()
    notes = [f"headline predict/jetson_published_mape = the WORSE device class's leave-one-out MAPE "
             f"({worst:.3f}); per class: " + ", ".join(f"{t} {v:.3f}" for t, v in per_class.items()),
             "a prediction's error is the leave-one-out MAPE of ITS device class's fit on published latencies "
             "(never the CPU calibration's); the range column scales the prediction by the smallest and largest "
             "measured/predicted ratio seen leave-one-out",
             "the published figures differ from medprune's deployment in ways the model does not see: other "
             "TensorRT/JetPack versions and power modes (not stated for NetsPresso), 3- or 1000-class heads, RGB "
             "224-256 px inputs; medprune's 64 px, 1-channel models are outside the range of validated sizes",
             "not yet validated against GPU measurements of medprune's own engines: "
             "benchmarks/studies/tensorrt_check.py (make tensorrt-check) records them when a GPU is available"]
    report = {"title": "medprune roofline: fitted to published Jetson latencies, validated leave-one-out",
              "command": command_line("jetson_prediction", argv),
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine_info(),
              "method": fits[0].method if fits else None, "sources": data["sources"],
              "fits": {f.target: f.to_dict() for f in fits},
              "summary": {"jetson_published_mape": worst, "per_class": per_class,
                          "n": {f.target: f.n for f in fits}},
              "predictions": predictions, "notes": notes}
    a.out.mkdir(parents=True, exist_ok=True)
    with atomic_file(a.out / f"{a.stem}.json", "w") as fh:
        json.dump(report, fh, indent=2)
        fh.write("\n")
    with atomic_file(a.out / f"{a.stem}.md", "w") as fh:
        fh.write(_markdown(report))
    print(f"wrote {a.out / (a.stem + '.json')}, {a.out / (a.stem + '.md')}, {a.fit_out}")
    return report
