"""``medprune deploy``: real data + a model name → a verified, tamper-evident bedside package.

train (cached) → reference sampling → importance → ratio (lossless search on val when ``auto``)
→ masks + physical removal → clinical gates on the test split → explanation fidelity → export for
the target's runtime/precision with parity verification → benchmark (measured here, or predicted for
absent devices) → package (``<out>/<name>/`` + ``<name>.tar.gz``) → verify-package.

Every stage is cached by the hash of its inputs (toolchain.pipeline), so a rerun resumes. It lives in
``devices`` because it composes every earlier stage (data flows one way: toolchain → export →
benchmarks → devices).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from toolchain.errors import ConfigError, GateError
from toolchain.pipeline import Pipeline, digest

TARGET_ALIASES = {"jetson": "jetson-orin-nano", "x86": "x86-edge", "edge": "x86-edge"}
# lr defaults per family, from the baseline trials (benchmarks/baselines.py): VGG19 has no BN.
MODEL_LR = {"vgg19": 1e-4, "vit_b16": 3e-4}
MODEL_BUILD_ARGS = {"vit_b16": {"patch_size": 16}}


@dataclass
class DeployConfig:
    model: str = "vgg19"
    target: str = "cpu"
    data: str = "pneumoniamnist"
    criterion: str = "lrp"
    sampling: str = "clustering"
    n_per_class: int = 10
    ratio: str = "auto"  # "auto" or a float in [0, 1)
    granularity: str = "group"  # group | neuron
    precision: str = "default"  # default = the target profile's
    out: str = "dist"
    img_size: int = 32
    epochs: int = 3
    lr: float | None = None
    seed: int = 0
    tolerance: float = 1.0  # accuracy drop allowed, points
    sens_tolerance: float = 2.0  # per-class sensitivity drop allowed, points
    search_margin: float = 0.5  # the val search uses tolerances x margin, leaving room for the test gate
    max_ratio: float = 0.9
    round_to: int | None = None  # None: the profile's channel multiple (8 for TensorRT)
    fidelity_images: int = 16
    bench_runs: int = 50
    samples: int = 4
    device: str = "auto"
    data_dir: str | None = None
    name: str | None = None
    cache: str | None = None

    def resolved(self) -> DeployConfig:
        from devices.profiles import load_profile
        from toolchain.importance import available
        from toolchain.removal import GRANULARITIES
        from toolchain.sampling import STRATEGIES

        cfg = DeployConfig(**asdict(self))
        cfg.target = TARGET_ALIASES.get(cfg.target, cfg.target)
        profile = load_profile(cfg.target)
        if cfg.criterion not in available():
            raise ConfigError(f"unknown criterion {cfg.criterion!r}; choose from {', '.join(available())}")
        if cfg.sampling not in STRATEGIES:
            raise ConfigError(f"unknown sampling {cfg.sampling!r}; choose from {', '.join(STRATEGIES)}")
        if cfg.granularity not in GRANULARITIES:
            raise ConfigError(f"unknown granularity {cfg.granularity!r}; choose from {', '.join(GRANULARITIES)}")
        if cfg.ratio != "auto":
            try:
                value = float(cfg.ratio)
            except ValueError:
                raise ConfigError(f"ratio must be 'auto' or a number in [0, 1), got {cfg.ratio!r}") from None
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"ratio must be in [0, 1), got {value}")
            cfg.ratio = f"{value:.4f}"
        if cfg.precision == "default":
            cfg.precision = profile.precision
        if cfg.precision not in ("fp32", "fp16", "int8"):
            raise ConfigError(f"unsupported precision {cfg.precision!r}: use fp32, fp16, int8 or default")
        if cfg.round_to is None:
            cfg.round_to = 8 if profile.runtime == "tensorrt" else 0
        for name in ("tolerance", "sens_tolerance"):
            if getattr(cfg, name) < 0:
                raise ConfigError(f"{name} must be >= 0 points")
        if cfg.n_per_class < 1 or cfg.epochs < 1 or cfg.img_size < 8:
            raise ConfigError("n_per_class and epochs must be >= 1 and img_size >= 8")
        return cfg


def export_plan(runtime: str, precision: str) -> tuple[str, str, str]:
    """(format, precision exported here, runtime that verifies it here) for a target runtime."""
    if runtime == "openvino":
        return "openvino", precision, "openvino"
    if runtime == "tensorrt":
        # TensorRT engines are built on the device from the FP32 ONNX (trtexec --fp16/--int8)
        return "onnx", "fp32", "onnxruntime"
    return "onnx", precision, "onnxruntime"


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


@dataclass
class Deployment:
    cfg: DeployConfig
    pipe: Pipeline
    profile: Any
    facts: dict = field(default_factory=dict)

    # ---- stages ---------------------------------------------------------------------------------
    def train(self):
        from toolchain.train import TrainConfig, train

        c = self.cfg
        tc = TrainConfig(model=c.model, data=c.data, img_size=c.img_size, epochs=c.epochs, seed=c.seed,
                         lr=c.lr or MODEL_LR.get(c.model, TrainConfig.lr), device=c.device, data_dir=c.data_dir,
                         build_args=dict(MODEL_BUILD_ARGS.get(c.model, {})))
        weights = train(tc)
        side = json.loads(weights.with_suffix(".json").read_text())
        self.facts["train_config"] = tc.to_dict()
        return weights, side["weights_sha256"]

    def run(self) -> dict:
        import torch

        from toolchain.importance import get_criterion
        from toolchain.masking import MaskSet
        from toolchain.prune_eval import (RatioEvaluator, find_lossless, load_context, load_scores,
                                          reference_inputs, save_scores, score_units)
        from toolchain.units import find_unit_layers

        c, pipe = self.cfg, self.pipe
        weights, sha = self.train()
        pipe.console.print(f"    checkpoint {weights} (sha256 {sha[:12]})")
        ctx = load_context(weights, c.data, data_dir=c.data_dir)
        layers = find_unit_layers(ctx.model)
        base = {"checkpoint": sha, "data": ctx.ds.fingerprint}

        ref = pipe.stage("reference", {**base, "sampling": c.sampling, "n": c.n_per_class, "seed": c.seed},
                         lambda d: {"indices": reference_inputs(ctx, c.n_per_class, c.sampling, c.seed)[2].tolist()})
        idx = np.asarray(ref.data["indices"])
        train_split = ctx.ds.split("train")
        x_ref = ctx.preprocess(train_split.images[idx])
        y_ref = torch.as_tensor(train_split.labels[idx], dtype=torch.long)

        def score(d: Path) -> dict:
            scores, seconds = score_units(ctx.model, get_criterion(c.criterion), x_ref, y_ref, layers)
            save_scores(d / "scores.safetensors", scores, {"criterion": c.criterion})
            return {"seconds": round(seconds, 2), "layers": len(layers)}

        imp = pipe.stage("importance", {**base, "ref": ref.key_digest, "criterion": c.criterion}, score)
        scores, _ = load_scores(imp.path / "scores.safetensors")
        example = x_ref[:2]
        evaluator = self._evaluator(ctx, scores, layers, example, RatioEvaluator)

        def choose(d: Path) -> dict:
            if c.ratio != "auto":
                return {"ratio": float(c.ratio), "search": None}
            found = find_lossless(evaluator, c.tolerance * c.search_margin, c.sens_tolerance * c.search_margin,
                                  search_split="val", max_ratio=c.max_ratio)
            return {"ratio": found["ratio"], "search": found}

        chosen = pipe.stage("ratio", {"importance": imp.key_digest, "ratio": c.ratio, "gran": c.granularity,
                                      "tol": [c.tolerance, c.sens_tolerance, c.search_margin, c.max_ratio],
                                      "round_to": c.round_to}, choose)
        ratio = float(chosen.data["ratio"])
        pipe.console.print(f"    pruning ratio {ratio:.2f}" + (" (lossless search on val)" if c.ratio == "auto" else ""))

        def prune(d: Path) -> dict:
            from toolchain.evaluate import evaluate
            from toolchain.masking import apply_masks
            from toolchain.removal import compare_models, remove_units, save_pruned

            masks = evaluator.masks(ratio)
            masks.save(d / "masks")
            pruned, report = remove_units(ctx.model, masks, example, c.granularity,
                                          c.round_to or None, scores=scores)
            masked = apply_masks(ctx.model, masks)
            test = ctx.ds.split("test")
            xt = ctx.preprocess(test.images[:256])
            with torch.no_grad():
                parity = float((masked(xt) - pruned(xt)).abs().max())
            recipe = {"criterion": c.criterion, "sampling": c.sampling, "n_per_class": c.n_per_class,
                      "ratio": ratio, "granularity": c.granularity, "round_to": c.round_to,
                      "ratio_search": "lossless on val" if c.ratio == "auto" else "fixed"}
            save_pruned(d / "pruned.safetensors", pruned, ctx.meta, report, recipe)
            dense_m = evaluate(ctx.model, ctx.ds, "test", ctx.preprocess)
            pruned_m = evaluate(pruned, ctx.ds, "test", ctx.preprocess)
            sizes = compare_models(ctx.model, pruned, example[:1])
            return {"recipe": recipe, "parity_masked_vs_removed": parity, "dense": dense_m, "pruned": pruned_m,
                    "compare": sizes, "removal": {k: v for k, v in report.items() if k != "keep"}}

        pr = pipe.stage("prune", {"ratio_stage": chosen.key_digest, "ratio": ratio}, prune)
        self.gate(pr.data["dense"], pr.data["pruned"])
        pruned_path = pr.path / "pruned.safetensors"
        fid = self._fidelity(ctx, pruned_path, pr)
        exp = self._export(ctx, pruned_path, pr)
        bench = self._bench(exp)
        pkg = self._package(ctx, pr, exp, bench, fid, MaskSet)
        return pkg

    # ---- helpers --------------------------------------------------------------------------------
    def _evaluator(self, ctx, scores, layers, example, base_cls):
        c = self.cfg
        if c.granularity == "neuron":
            return base_cls(ctx, scores, layers, meta={"criterion": c.criterion})
        from toolchain.removal import group_masks

        class GroupEvaluator(base_cls):
            """Group granularity: coupled units are scored and masked together (removal agrees exactly)."""

            def masks(self, ratio: float):
                return group_masks(ctx.model, scores, list(layers), ratio, example, c.round_to or None)

        return GroupEvaluator(ctx, scores, layers, meta={"criterion": c.criterion})

    def gate(self, dense: dict, pruned: dict) -> None:
        from toolchain.prune_eval import accuracy_drop, sensitivity_drops

        c = self.cfg
        acc = accuracy_drop(dense, pruned)
        sens = sensitivity_drops(dense, pruned)
        worst_cls = max(sens, key=sens.get) if sens else None
        self.facts["gates"] = {"accuracy_drop_pts": acc, "sensitivity_drop_pts": sens,
                               "tolerance_pts": c.tolerance, "sens_tolerance_pts": c.sens_tolerance}
        if acc > c.tolerance + 1e-9:
            raise GateError(f"clinical gate: pruned accuracy drops {acc:.2f} pts on the test split "
                            f"(allowed {c.tolerance}); no package written — lower --ratio or raise --tolerance")
        if worst_cls is not None and sens[worst_cls] > c.sens_tolerance + 1e-9:
            raise GateError(f"clinical gate: sensitivity for {worst_cls} drops {sens[worst_cls]:.2f} pts on the "
                            f"test split (allowed {c.sens_tolerance}); no package written")

    def _fidelity(self, ctx, pruned_path: Path, pr) -> dict | None:
        c = self.cfg
        if c.fidelity_images <= 0:
            return None

        def run(d: Path) -> dict:
            import torch

            from toolchain.fidelity import fidelity, heatmaps
            from toolchain.models import load_checkpoint

            pruned, _ = load_checkpoint(pruned_path)
            test = ctx.ds.split("test")
            rng = np.random.default_rng(c.seed)
            pick = np.sort(rng.choice(len(test.labels), min(c.fidelity_images, len(test.labels)), replace=False))
            x = ctx.preprocess(test.images[pick])
            y = torch.as_tensor(test.labels[pick], dtype=torch.long)
            return {"images": len(pick), **fidelity(heatmaps(ctx.model, x, y), heatmaps(pruned, x, y))}

        try:
            return self.pipe.stage("fidelity", {"prune": pr.key_digest, "n": c.fidelity_images}, run).data
        except ImportError:
            return None

    def _export(self, ctx, pruned_path: Path, pr):
        from export.exporter import export_model, load_images
        from toolchain.models import load_checkpoint

        c = self.cfg
        fmt, precision, _ = export_plan(self.profile.runtime, c.precision)

        def run(d: Path) -> dict:
            model, meta = load_checkpoint(pruned_path)
            arrays = load_images(meta, c.data, c.data_dir, calib_size=256 if precision == "int8" else 0,
                                 eval_size=0, seed=c.seed)
            sha = json.loads(pruned_path.with_suffix(".json").read_text())["weights_sha256"]
            result = export_model(model, meta, d, fmt, precision, name="model", source_sha256=sha,
                                  eval_x=arrays.get("eval_x"), eval_y=arrays.get("eval_y"),
                                  calib_x=arrays.get("calib"))
            onnx_fp32 = None
            if fmt != "onnx" or precision != "fp32":
                # the ONNX FP32 travels too: TensorRT builds from it and it is the reference format
                base = export_model(model, meta, d, "onnx", "fp32", name="model", source_sha256=sha,
                                    eval_x=arrays.get("eval_x"), eval_y=arrays.get("eval_y"))
                onnx_fp32 = base.path.name
            return {"entry": result.path.name, "files": [p.name for p in result.files], "format": fmt,
                    "precision": precision, "onnx_fp32": onnx_fp32 or result.path.name,
                    "verification": result.verification}

        return self.pipe.stage("export", {"prune": pr.key_digest, "fmt": fmt, "precision": precision}, run)

    def _bench(self, exp) -> Any:
        from devices.bench import run_bench

        c = self.cfg

        def run(d: Path) -> dict:
            report, paths = run_bench(exp.path / exp.data["entry"], c.target, data=c.data, runs=c.bench_runs,
                                      out=d, command=f"medprune deploy --target {c.target}", cross_check=False,
                                      progress=lambda m: self.pipe.console.print(f"    {m}"))
            return {"files": {k: str(Path(v).relative_to(d)) for k, v in paths.items()},
                    "summary": _bench_summary(report)}

        # measurements vary run to run; cached so a resumed deploy does not re-measure
        return self.pipe.stage("bench", {"export": exp.key_digest, "target": c.target, "runs": c.bench_runs}, run)

    def _package(self, ctx, pr, exp, bench, fid, _mask_cls) -> dict:
        import shutil

        from export.package import PackageSpec, Sample, build_package, verify_package
        from toolchain import __version__

        c = self.cfg
        fmt, precision, verify_runtime = export_plan(self.profile.runtime, c.precision)
        name = c.name or f"{c.model}-{ctx.ds.name}-{c.target}-{precision}-{c.granularity}{round(pr.data['recipe']['ratio'] * 100)}"
        model_files = {"onnx": exp.path / exp.data["onnx_fp32"]}
        if fmt == "onnx" and precision != "fp32":
            model_files["onnx"] = exp.path / exp.data["entry"]
        if fmt == "openvino":
            xml = exp.path / exp.data["entry"]
            model_files["openvino"] = xml
            model_files["openvino_bin"] = xml.with_suffix(".bin")
        samples = self._samples(ctx, model_files, verify_runtime)
        scripts = {}
        if self.profile.runtime == "tensorrt":
            scripts = self._jetson_scripts(model_files["onnx"].name, ctx)
        reports = {}
        for key, rel in bench.data["files"].items():
            src = bench.path / rel
            if src.is_file() and src.suffix in (".json", ".md", ".html", ".png"):
                reports[src.name] = src
        dense, pruned = pr.data["dense"], pr.data["pruned"]
        manifest = {
            "runtime_target": self.profile.name,
            "precision": precision,
            "input": {"name": "image", "shape": [None, int(ctx.meta["in_chans"]), c.img_size, c.img_size],
                      "dtype": "float32"},
            "metrics": {"split": "test", "dense": dense, "pruned": pruned, "gates": self.facts.get("gates")},
            "explanation_fidelity": fid,
            "pruning": {**pr.data["recipe"], "removal": pr.data["removal"], "compare": pr.data["compare"],
                        "parity_masked_vs_removed": pr.data["parity_masked_vs_removed"]},
            "export_verification": exp.data["verification"],
            "benchmark": bench.data["summary"],
            "dataset": {"name": ctx.ds.name, "fingerprint": ctx.ds.fingerprint},
            "training": self.facts.get("train_config"),
            "seeds": {"train": c.seed, "sampling": c.seed},
            "medprune": {"version": __version__, "git_commit": git_commit()},
        }
        card = model_card(c, ctx, manifest, self.profile)
        tol = {"fp32": 1e-4, "fp16": 2e-2, "int8": 5e-2}[precision if fmt != "onnx" or precision != "fp32" else "fp32"]
        spec = PackageSpec(name=name, runtime=self.profile.runtime, model_files=model_files,
                           class_names=list(ctx.ds.class_names), preprocess=_predict_preprocess(ctx),
                           manifest=manifest, model_card=card, samples=samples, reports=reports,
                           scripts=scripts, sample_tolerance=tol)
        out = Path(c.out)
        folder, tarball = build_package(spec, out)
        report = verify_package(tarball)
        self.pipe.console.print(f"    verify-package: {report['files_checked']} files, "
                                f"{report['top1_agreement']}/{report['samples']} samples agree")
        _ = shutil
        return {"package": str(folder), "tarball": str(tarball), "name": name, "verify": report,
                "dense": dense, "pruned": pruned, "ratio": pr.data["recipe"]["ratio"],
                "compare": pr.data["compare"], "fidelity": fid, "bench": bench.data["summary"],
                "export_verification": exp.data["verification"]}

    def _samples(self, ctx, model_files: dict, runtime: str) -> list:
        """A few test images at the model's input size, with the probabilities the export computes."""
        import torch
        from PIL import Image

        from export.package import Sample
        from export.verify import onnx_runner, openvino_runner

        c = self.cfg
        test = ctx.ds.split("test")
        picks = []
        for k in range(len(ctx.ds.class_names)):
            picks += list(np.flatnonzero(test.labels == k)[: max(1, c.samples // len(ctx.ds.class_names))])
        run = openvino_runner(model_files["openvino"]) if runtime == "openvino" else onnx_runner(model_files["onnx"])
        pre = _predict_preprocess(ctx)
        out = []
        for i in picks:
            img = test.images[i]
            pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
            pil = pil.convert("L" if pre["in_chans"] == 1 else "RGB").resize((c.img_size, c.img_size), Image.BILINEAR)
            pixels = np.asarray(pil)
            x = np.asarray(pixels, np.float32) / 255.0
            x = x[None] if x.ndim == 2 else x.transpose(2, 0, 1)
            x = ((x - np.asarray(pre["mean"], np.float32).reshape(-1, 1, 1))
                 / np.asarray(pre["std"], np.float32).reshape(-1, 1, 1))[None].astype(np.float32)
            logits = np.asarray(run(x), dtype=np.float64)
            probs = torch.softmax(torch.as_tensor(logits), 1)[0].numpy()
            out.append(Sample(f"test_{int(i):04d}_{ctx.ds.class_names[int(test.labels[i])]}", pixels,
                              ctx.ds.class_names[int(test.labels[i])], probs.tolist()))
        return out

    def _jetson_scripts(self, onnx_name: str, ctx) -> dict[str, str]:
        from devices.remote import device_commands

        c = self.cfg
        chw = (int(ctx.meta["in_chans"]), c.img_size, c.img_size)
        lines = device_commands(f"model/{onnx_name}", self.profile, "image", chw, None, 200, False)
        build = [ln for ln in lines if "--saveEngine" in ln]
        run = [ln for ln in lines if "--loadEngine" in ln]
        header = "#!/usr/bin/env bash\n# Generated by medprune deploy. Run on the Jetson from the package folder.\nset -euo pipefail\ncd \"$(dirname \"$0\")\"\n"
        return {"build_engine.sh": header + "\n".join(build) + "\n",
                "run_trt.sh": header + "\n".join(run) + "\n"}


def _predict_preprocess(ctx) -> dict:
    pre = ctx.preprocess.to_dict()
    return {"img_size": int(pre["img_size"]), "in_chans": int(pre["in_chans"]),
            "mean": [float(v) for v in pre["mean"]], "std": [float(v) for v in pre["std"]]}


def _bench_summary(report: dict) -> dict:
    out: dict[str, Any] = {"measured": [], "predicted": report.get("predictions") or [],
                           "notes": report.get("notes") or []}
    for m in report.get("models") or []:
        out["measured"].append({k: m.get(k) for k in ("name", "runtime", "precision", "threads", "latency_ms",
                                                        "throughput", "memory", "size_mb", "accuracy", "macs")})
    out["machine"] = {k: (report.get("machine") or {}).get(k) for k in ("cpu_model", "cores", "isa")}
    return json.loads(json.dumps(out, default=str))


def model_card(c: DeployConfig, ctx, manifest: dict, profile) -> str:
    d, p = manifest["metrics"]["dense"], manifest["metrics"]["pruned"]
    fid = manifest.get("explanation_fidelity") or {}
    rows = ["| metric | dense | pruned |", "|---|---:|---:|"]
    for key in ("accuracy", "balanced_accuracy", "auc", "ece"):
        dv, pv = d.get(key), p.get(key)
        rows.append(f"| {key} | {dv if dv is None else f'{dv:.4f}'} | {pv if pv is None else f'{pv:.4f}'} |")
    for cls in d.get("per_class", {}):
        for key in ("sensitivity", "specificity"):
            rows.append(f"| {key} {cls} | {d['per_class'][cls][key]:.4f} | {p['per_class'][cls][key]:.4f} |")
    cmp = manifest["pruning"].get("compare") or {}
    return "\n".join([
        f"# Model card: {c.model} on {ctx.ds.name} for {profile.name}",
        "",
        "**Research use only. This is not a certified medical device** and must not be used for diagnosis.",
        "",
        "## Intended use",
        f"Research on compressed classifiers of {ctx.ds.name} images ({', '.join(ctx.ds.class_names)}) "
        f"running on {profile.name} ({profile.runtime}, {manifest['precision']}).",
        "",
        "## Data",
        f"Dataset `{ctx.ds.name}` (fingerprint `{ctx.ds.fingerprint[:16]}…`), official train/val/test splits; "
        f"inputs {c.img_size}x{c.img_size} px, {ctx.meta['in_chans']} channel(s).",
        "",
        "## Model and pruning",
        f"{c.model} trained from scratch ({c.epochs} epochs, seed {c.seed}); units scored with `{c.criterion}` on "
        f"{c.n_per_class} `{c.sampling}` reference images per class; {manifest['pruning']['ratio']:.0%} of units "
        f"pruned at `{c.granularity}` granularity "
        f"({manifest['pruning']['ratio_search']}), then physically removed (Torch-Pruning).",
        f"Parameters {cmp.get('dense', {}).get('params', '?')} → {cmp.get('pruned', {}).get('params', '?')}.",
        "",
        "## Test-split metrics (dense vs pruned)",
        *rows,
        "",
        f"Explanation fidelity (LRP heatmaps, pruned vs dense): Spearman {fid.get('spearman_mean', 'n/a')}, "
        f"top-10% IoU {fid.get('iou10_mean', 'n/a')}." if fid else "Explanation fidelity: not measured.",
        "",
        "## Limitations",
        "- Low-resolution inputs; small single-source datasets; paediatric chest X-rays (PneumoniaMNIST) do not "
        "represent adult populations or other sites and scanners.",
        "- Metrics come from one test split with no external validation; calibration (ECE) is reported, not tuned.",
        "- Latency for devices not attached to the build machine is a roofline *prediction* (see reports/).",
        "- Verify the package (`medprune verify-package` or `predict.py`, which checks checksums) before use.",
        "",
    ])


def deploy(cfg: DeployConfig) -> dict:
    """Run the whole pipeline; returns the summary (package paths, metrics, timings)."""
    from devices.profiles import load_profile
    from toolchain.settings import cache_dir

    cfg = cfg.resolved()
    root = Path(cfg.cache) if cfg.cache else cache_dir() / "deploy"
    pipe = Pipeline(root)
    profile = load_profile(cfg.target)
    started = time.perf_counter()
    job = Deployment(cfg, pipe, profile)
    pipe.console.print(f"[bold]medprune deploy[/] {cfg.model} → {profile.name} ({profile.runtime}, {cfg.precision}); "
                       f"data {cfg.data}, criterion {cfg.criterion}, sampling {cfg.sampling}, ratio {cfg.ratio}, "
                       f"granularity {cfg.granularity}  [config {digest(asdict(cfg))[:12]}]")
    result = job.run()
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["stages"] = pipe.summary()["stages"]
    result["host"] = platform.node()
    _ = os
    return result
