"""Stage 11, **package**: model files, sample images with their expected probabilities, scripts, reports,
manifest and model card → ``<out>/<name>/`` + ``<name>.tar.gz``, verified before it is published.

Not cached: it is cheap, and its output is the published artifact itself.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .export_bench import export_plan
from .jetson import TARGET_SCRIPTS
from .manifest import build_manifest, model_card

# probability tolerance of the packaged smoke test, by the precision that runs here
SAMPLE_TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2, "int8": 5e-2}
REPORT_SUFFIXES = (".json", ".md", ".html", ".png")


def package_name(cfg, dataset: str, ratio: float) -> str:
    return cfg.name or f"{cfg.model}-{dataset}-{cfg.target}-{cfg.precision}-{cfg.granularity}{round(ratio * 100)}"


def model_files(profile, precision: str, exp) -> dict[str, Path]:
    """The exported files the package carries, by role (onnx, openvino, openvino_bin)."""
    fmt, exported, _ = export_plan(profile.runtime, precision)
    files = {"onnx": exp.path / exp.data["onnx_fp32"]}
    if fmt == "onnx" and exported != "fp32":
        files["onnx"] = exp.path / exp.data["entry"]
    if fmt == "openvino":
        xml = exp.path / exp.data["entry"]
        files["openvino"] = xml
        files["openvino_bin"] = xml.with_suffix(".bin")
    return files


def samples(ctx, files: dict, runtime: str, count: int) -> list:
    """Test images at their stored size with the probabilities the toolchain computes for them
    (torch preprocessing → the verified export), so verify-package checks predict.py's own
    preprocessing as well as the model file."""
    from export.package import Sample
    from export.verify import onnx_runner, openvino_runner

    test = ctx.ds.split("test")
    k = len(ctx.ds.class_names)
    picks: list[int] = []
    for cls in range(k):
        picks += [int(i) for i in np.flatnonzero(test.labels == cls)[: max(1, count // k)]]
    run = openvino_runner(files["openvino"]) if runtime == "openvino" else onnx_runner(files["onnx"])
    out = []
    for i in picks:
        img = test.images[i]
        logits = np.asarray(run(ctx.preprocess(img[None]).numpy()), dtype=np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        label = ctx.ds.class_names[int(test.labels[i])]
        out.append(Sample(f"test_{i:04d}_{label}", img[..., 0] if img.shape[-1] == 1 else img, label,
                          probs[0].tolist()))
    return out


def predict_preprocess(ctx) -> dict:
    pre = ctx.preprocess.to_dict()
    return {"img_size": int(pre["img_size"]), "in_chans": int(pre["in_chans"]),
            "mean": [float(v) for v in pre["mean"]], "std": [float(v) for v in pre["std"]],
            "resize": "antialiased bilinear, half-pixel centres (torch interpolate antialias=True)",
            "scale": "uint8 / 255, then (x - mean) / std per channel; RGB → grey by channel mean"}


def build(cfg, profile, pipe, ctx, *, pr, exp, bench, fid, cal: dict | None, gates: dict,
          gate_check: dict | None, training: dict | None) -> dict:
    """Write and verify the package; returns paths, the verify report and the reported metrics."""
    from export.package import PackageSpec, build_package

    _, exported, verify_runtime = export_plan(profile.runtime, cfg.precision)
    ratio = float(pr.data["recipe"]["ratio"])
    name = package_name(cfg, ctx.ds.name, ratio)
    files = model_files(profile, cfg.precision, exp)
    sample_list = samples(ctx, files, verify_runtime, cfg.samples)
    make_scripts = TARGET_SCRIPTS.get(profile.runtime)
    scripts = make_scripts(profile, cfg.precision, files["onnx"]) if make_scripts else {}
    reports = {}
    for rel in bench.data["files"].values():
        src = bench.path / rel
        if src.is_file() and src.suffix in REPORT_SUFFIXES:
            reports[src.name] = src
    manifest = build_manifest(cfg, profile, ctx, exported=exported, pr=pr, exp=exp, bench=bench, fid=fid, cal=cal,
                              gates=gates, gate_check=gate_check, training=training, reports=reports)
    spec = PackageSpec(name=name, runtime=profile.runtime, model_files=files, class_names=list(ctx.ds.class_names),
                       preprocess=predict_preprocess(ctx), manifest=manifest,
                       model_card=model_card(cfg, ctx, manifest, profile), samples=sample_list, reports=reports,
                       scripts=scripts, sample_tolerance=SAMPLE_TOLERANCE[exported])
    t0 = time.perf_counter()
    pipe.console.print(f"[bold][{len(pipe.results) + 1}] package[/] …")
    report: dict = {}
    folder, tarball = build_package(spec, Path(cfg.out), report=report)  # verified before it is published
    report["package"] = str(tarball)
    pipe.console.print(f"[green]    verify-package: {report['files_checked']} files, "
                       f"{report['top1_agreement']}/{report['samples']} samples agree, "
                       f"max |Δprob| {report['max_abs_prob_diff']:.1e}[/]")
    return {"package": str(folder), "tarball": str(tarball), "name": name, "verify": report,
            "dense": pr.data["dense"], "pruned": pr.data["pruned"], "deployed": manifest["metrics"]["deployed"],
            "calibration": manifest["calibration"], "ratio": ratio, "gates": gates, "gate_check": gate_check,
            "compare": pr.data["compare"], "fidelity": fid, "bench": bench.data["summary"],
            "export_verification": exp.data["verification"], "package_seconds": round(time.perf_counter() - t0, 1)}
