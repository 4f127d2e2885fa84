"""``medprune bench``: benchmark a model for a target profile.

A local target (``cpu``, ``x86-edge``) is measured here with the profile's runtime, threads, precision
and batch sizes (plus OpenVINO's benchmark_app as a cross-check when the runtime is OpenVINO). A remote
target (the Jetsons) gets a folder to copy to the device (ONNX, runner, test set, ``run_on_<target>.sh``
with the exact trtexec lines) and a PREDICTED latency from the roofline fitted to that device's published
latencies (``devices/roofline.py``), with that fit's leave-one-out error.
Targets with published peaks also get a prediction, always labelled as such.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from benchmarks._runner import RUNTIME_BY_SUFFIX
from benchmarks.harness import (
    BenchConfig,
    benchmark,
    cross_check_benchmark_app,
    machine_info,
    meta_chw,
    model_meta,
)
from benchmarks.report import write_report
from toolchain.atomic import ensure_writable_dir
from toolchain.errors import ModelError
from toolchain.pickle_guard import refuse_pickle

from .profiles import DeviceProfile, load_profile
from .remote import write_device_bundle


def _check_model(path: Path) -> Path:
    if not path.exists():
        raise ModelError(f"model file not found: {path}")
    refuse_pickle(path, ModelError)
    if path.suffix.lower() not in RUNTIME_BY_SUFFIX:
        raise ModelError(f"{path}: not a model file medprune can run (expected {', '.join(sorted(RUNTIME_BY_SUFFIX))})")
    return path


def local_runtime(path: Path, profile: DeviceProfile) -> str:
    """The file decides, except that an ONNX file follows the profile when the profile runs OpenVINO."""
    if path.suffix == ".onnx" and profile.runtime == "openvino":
        return "openvino"
    return RUNTIME_BY_SUFFIX[path.suffix.lower()]


def onnx_for(path: Path, work: Path) -> Path:
    """An ONNX graph of the model: the file itself, an IR's ONNX sibling, or an export of a checkpoint."""
    if path.suffix == ".onnx":
        return path
    if path.suffix == ".xml":
        sibling = path.with_suffix(".onnx")
        if sibling.exists():
            return sibling
        raise ModelError(f"{path}: TensorRT builds from ONNX; pass the .onnx this IR was converted from")
    if path.suffix == ".safetensors":
        from export.metadata import build_metadata
        from export.onnx import export_onnx
        from toolchain.models import load_checkpoint

        model, meta = load_checkpoint(path)
        chw = (int(meta["in_chans"]), int(meta["img_size"]), int(meta["img_size"]))
        work.mkdir(parents=True, exist_ok=True)
        onnx_path = work / f"{path.stem}.onnx"
        export_onnx(model, onnx_path, chw, metadata=build_metadata(meta))
        return onnx_path
    raise ModelError(f"{path}: cannot make an ONNX graph from a {path.suffix} file; export it first")


def _costs(path: Path, batch: int = 1):
    from .roofline import layer_costs

    try:
        return layer_costs(path, batch)
    except ModelError:
        return None


def _calibration(threads: int, calibrate: bool, progress):
    if not calibrate:
        return None
    from .roofline_fit import cached_calibration

    return cached_calibration(threads, progress=progress)


def _predictions(name: str, path: Path, profile: DeviceProfile, cal, progress) -> list[dict]:
    from .roofline import predict_for_profile

    out = []
    for batch in sorted({1, profile.throughput_batch}):
        costs = _costs(path, batch)
        if costs is None:
            return []
        p = predict_for_profile(costs, profile, cal)
        p.update({"model": name, "batch": batch})
        if batch > 1:
            p["images_per_s"] = batch / (p["latency_ms"] / 1e3)
        if cal is None and profile.is_local:
            p["assumptions"].append("uncalibrated: efficiency factors 1.0, no per-layer overhead on a local target")
        out.append(p)
    return out


def _testset(meta: dict, chw, data: str, limit: int | None = None):
    from toolchain.data import Preprocess, load_dataset

    ds = load_dataset(data)
    pre = Preprocess.from_dict(meta["preprocess"]) if meta.get("preprocess") else \
        Preprocess.for_dataset(ds, img_size=chw[1], in_chans=chw[0])
    split = ds.split("test")
    images, labels = split.images, split.labels
    if limit:
        images, labels = images[:limit], labels[:limit]
    return pre(images).numpy(), np.asarray(labels), list(ds.class_names)


def run_bench(model: str | Path, target: str, *, data: str | None = None, runs: int = 50,
              out: str | Path = "bench", command: str = "", calibrate: bool = True, cross_check: bool = True,
              progress=None, device_note: str | None = None) -> tuple[dict, dict[str, Path]]:
    """``device_note`` replaces the "copy the bundle" line for a device that is not attached: deploy runs this
    in a staging folder that is renamed afterwards, so it points at the package's own instructions instead."""
    say = progress or (lambda _m: None)
    profile = load_profile(target)
    path = _check_model(Path(model))
    out = ensure_writable_dir(out, "--out")  # before minutes of measuring, not after
    report: dict = {"title": f"medprune bench: {path.name} on {profile.name}", "command": command,
                    "machine": machine_info(), "target": profile.to_dict(), "models": [], "comparisons": [],
                    "predictions": [], "calibration": None, "device_commands": {}, "notes": []}
    threads = profile.resolved_threads() if profile.is_local else (os.cpu_count() or 1)
    if threads > (os.cpu_count() or 1):  # oversubscribed threads measure contention, not the model
        report["notes"].append(f"{profile.name} asks for {threads} threads; this machine has {os.cpu_count()} "
                               f"logical cores, so {os.cpu_count()} were used")
        threads = os.cpu_count() or 1

    if profile.is_local:
        runtime = local_runtime(path, profile)
        config = BenchConfig(runs=runs, threads=threads, throughput_batch=profile.throughput_batch,
                             precision=profile.precision, data=data)
        result = benchmark(path, runtime, config, progress=say)
        costs = _costs(path)
        if costs is not None:
            from .roofline import total_macs

            result["macs"] = total_macs(costs)
        rss = (result.get("memory") or {}).get("peak_rss_mb")
        if rss is not None:
            within = rss <= profile.memory_budget_mb
            report["notes"].append(f"peak RSS {rss:.0f} MB is {'within' if within else 'OVER'} the "
                                   f"{profile.name} memory budget of {profile.memory_budget_mb} MB")
        if cross_check and runtime == "openvino":
            say("cross-check with OpenVINO benchmark_app")
            result["cross_check"] = cross_check_benchmark_app(
                path, threads, seconds=max(2.0, runs * result["latency_ms"]["p50"] / 1e3),
                precision=profile.precision, harness_p50_ms=result["latency_ms"]["p50"])
        report["models"].append(result)
        if profile.name != "cpu" and profile.peak_gflops() is not None:
            cal = _calibration(threads, calibrate, say)
            report["calibration"] = cal.to_dict() if cal else None
            report["predictions"] = _predictions(path.stem, path, profile, cal, say)
            report["notes"].append(
                f"measured numbers are from THIS machine with the {profile.name} runtime settings; " + (
                    f"the predictions are for {profile.name}'s published peaks (labelled predicted, with the "
                    "error of this machine's CPU fit)" if report["predictions"] else
                    f"no prediction for {profile.name}'s published peaks: this model's layer costs could not "
                    "be counted"))
    else:
        onnx_path = onnx_for(path, out / "onnx")
        meta = model_meta(path) or model_meta(onnx_path)
        say(f"roofline prediction for {profile.name}")  # fitted to that device's published latencies, not this CPU
        report["predictions"] = _predictions(path.stem, onnx_path, profile, None, say)
        testset = None
        if data:
            from .remote import onnx_input

            _, chw, _ = onnx_input(onnx_path)
            testset = _testset(meta, meta_chw(meta) or chw, data)
        bundle, lines = write_device_bundle(onnx_path, profile, out, runs=max(runs, 100), testset=testset)
        report["device_commands"][profile.name] = lines
        report["notes"] += [
            f"{profile.name} is not attached to this machine: its latency here is PREDICTED (roofline), not measured",
            device_note or f"copy {bundle} to the device and run ./run_on_{profile.name}.sh to measure it there",
        ]
    paths = write_report(report, out, stem=f"bench_{profile.name}")
    return report, paths

