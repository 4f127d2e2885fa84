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
    model = cfg.model.replace(":", "-")  # torchvision:resnet50 → a file name scp and tar take as a path
    return cfg.name or f"{model}-{dataset}-{cfg.target}-{cfg.precision}-{cfg.granularity}{round(ratio * 100)}"


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


def samples(ctx, files: dict, runtime: str, count: int, precision: str) -> list:
    """Test images in their raw form (the image folder's own files; npz images as PNG) with the
    probabilities the toolchain computes for them (its loader and torch preprocessing → the verified
    export, run with the precision's settings), so verify-package replays predict.py's whole
    preprocessing chain, the load-size resize included, as well as the model file."""
    from export.package import Sample, export_probabilities, raw_sources

    test = ctx.ds.split("test")
    k = len(ctx.ds.class_names)
    picks: list[int] = []
    for cls in range(k):
        picks += [int(i) for i in np.flatnonzero(test.labels == cls)[: max(1, count // k)]]
    model_file = files["openvino"] if runtime == "openvino" else files["onnx"]
    probs = export_probabilities(model_file, precision, ctx.preprocess(test.images[picks]).numpy())
    out = []
    for i, source, p in zip(picks, raw_sources(ctx.ds, "test", picks), probs, strict=True):
        img = test.images[i]
        label = ctx.ds.class_names[int(test.labels[i])]
        out.append(Sample(f"test_{i:04d}_{label}", img[..., 0] if img.shape[-1] == 1 else img, label,
                          p.tolist(), source=source))
    return out


def predict_preprocess(ctx) -> dict:
    """The chain predict.py replays: the checkpoint's preprocessing after the load-size resize the
    dataset was loaded with (export.package.package_preprocess)."""
    from export.package import package_preprocess

    return package_preprocess(ctx.preprocess.to_dict(), ctx.ds.params.get("load_size"))


def build(cfg, profile, pipe, ctx, *, pr, exp, bench, fid, cal: dict | None, test: dict, gates: dict,
          selection: dict, training: dict | None) -> dict:
    """Write and verify the package; returns paths, the verify report and the reported metrics."""
    from export.package import PackageSpec, build_package

    _, exported, verify_runtime = export_plan(profile.runtime, cfg.precision)
    ratio = float(pr.data["recipe"]["ratio"])
    name = package_name(cfg, ctx.ds.name, ratio)
    files = model_files(profile, cfg.precision, exp)
    sample_list = samples(ctx, files, verify_runtime, cfg.samples, exported)
    make_scripts = TARGET_SCRIPTS.get(profile.runtime)
    scripts = make_scripts(profile, cfg.precision, files["onnx"], ctx=ctx) if make_scripts else {}
    reports = {}
    for rel in bench.data["files"].values():
        src = bench.path / rel
        if src.is_file() and src.suffix in REPORT_SUFFIXES:
            reports[src.name] = src
    manifest = build_manifest(cfg, profile, ctx, exported=exported, pr=pr, exp=exp, bench=bench, fid=fid, cal=cal,
                              test=test, gates=gates, selection=selection, training=training, reports=reports)
    spec = PackageSpec(name=name, runtime=profile.runtime, model_files=files, class_names=list(ctx.ds.class_names),
                       preprocess=predict_preprocess(ctx), manifest=manifest,
                       model_card=model_card(cfg, ctx, manifest, profile), samples=sample_list, reports=reports,
                       scripts=scripts, sample_tolerance=SAMPLE_TOLERANCE[exported], precision=exported)
    t0 = time.perf_counter()
    pipe.console.print(f"[bold][{len(pipe.results) + 1}] package[/] …")
    report: dict = {}
    # verified (against the signing key's public half when signed) before it is published
    folder, tarball = build_package(spec, Path(cfg.out), report=report, sign_key=cfg.sign_key)
    report["package"] = str(tarball)
    pipe.console.print(f"[green]    verify-package: {report['files_checked']} files, "
                       f"{report['top1_agreement']}/{report['samples']} samples agree, "
                       f"max |Δprob| {report['max_abs_prob_diff']:.1e}; {report['signature']}[/]")
    return {"package": str(folder), "tarball": str(tarball), "name": name, "verify": report,
            "dense": test["dense"], "pruned": test["pruned"], "deployed": test["deployed"],
            "pruned_before_recovery": test.get("pruned_before_recovery"), "recovery": manifest["recovery"],
            "calibration": manifest["calibration"], "ratio": ratio, "gates": gates, "selection": selection,
            "compare": pr.data["compare"], "fidelity": fid, "bench": bench.data["summary"],
            "export_verification": exp.data["verification"], "package_seconds": round(time.perf_counter() - t0, 1)}
