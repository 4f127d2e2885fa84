"""``medprune deploy``: real data + a model name → a verified, tamper-evident bedside package.

train (cached; or ``--checkpoint``) → reference sampling → importance → ratio (lossless search on
val when ``auto``, then backed off until the test gate passes) → masks + physical removal →
clinical gates on the test split → temperature scaling fit on val and folded into the classifier
(``--no-calibrate`` skips it) → explanation fidelity → export for the target's runtime/precision
with parity verification → benchmark (measured here, or predicted for absent devices) → package
(``<out>/<name>/`` + ``<name>.tar.gz``, verified before it is published).

Every stage is cached by the hash of its inputs (toolchain.pipeline), so a rerun resumes. It lives in
``devices`` because it composes every earlier stage (data flows one way: toolchain → export →
benchmarks → devices).

Reproducibility: the same seed and inputs give byte-identical model files, predict.py, samples,
MODEL_CARD.md, scripts and manifest.json *except* for what measures time on this machine. Those
numbers (latency, throughput, memory, roofline calibration) live only in ``reports/``; the manifest
lists the reports' checksums, so ``files["reports/…"]`` and ``manifest_sha256`` are the only manifest
fields that differ between two runs (and with them the tarball's bytes).
"""

from __future__ import annotations

import functools
import json
import os
import platform
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from toolchain.errors import ConfigError, GateError, MedpruneError
from toolchain.pipeline import Pipeline, digest

TARGET_ALIASES = {"jetson": "jetson-orin-nano", "x86": "x86-edge", "edge": "x86-edge"}
# lr defaults per family, from the baseline trials (benchmarks/baselines.py): VGG19 has no BN.
MODEL_LR = {"vgg19": 1e-4, "vit_b16": 3e-4}
MODEL_BUILD_ARGS: dict[str, dict] = {"vit_b16": {"patch_size": 16}}  # as in benchmarks/baselines.py
DEFAULT_MODEL, DEFAULT_DATA, DEFAULT_IMG_SIZE = "vgg19", "pneumoniamnist", 32
# probability tolerance of the packaged smoke test, by the precision that runs here
SAMPLE_TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2, "int8": 5e-2}
STAGE_VERSION = 2  # bump when a stage's output format changes, so stale caches are not reused


class DeployInterrupted(MedpruneError):
    exit_code = 130


@dataclass
class DeployConfig:
    model: str | None = None  # None: the checkpoint's model, else vgg19
    target: str = "cpu"
    data: str | None = None  # None: the checkpoint's dataset, else pneumoniamnist
    criterion: str = "lrp"
    sampling: str = "clustering"
    n_per_class: int = 10
    pool_per_class: int | None = 256  # images per class the sampler scores (None: the whole train split)
    ratio: str = "auto"  # "auto" or a float in [0, 1)
    granularity: str = "neuron"  # neuron | group (neuron measured better: see README "Deploy")
    precision: str = "default"  # default = the target profile's
    out: str = "dist"
    img_size: int | None = None  # None: the checkpoint's, else 32
    epochs: int = 3
    lr: float | None = None
    seed: int = 0
    tolerance: float = 1.0  # accuracy drop allowed, points
    sens_tolerance: float = 2.0  # per-class sensitivity drop allowed, points
    search_margin: float = 0.5  # the val search uses tolerances x margin, leaving room for the test gate
    max_ratio: float = 0.9
    max_backoff: int = 8  # ratio=auto: smaller ratios tried when the test gate refuses the val choice
    round_to: int | None = None  # None: the profile's channel multiple (8 for TensorRT)
    fidelity_images: int = 16
    calibrate: bool = True  # temperature scaling on val, folded into the classifier (predictions unchanged)
    bench_runs: int = 50
    cache_bench: bool = True  # False: re-measure even when a bench stage with the same key exists
    samples: int = 4
    device: str = "auto"
    data_dir: str | None = None
    name: str | None = None
    cache: str | None = None
    checkpoint: str | None = None  # deploy this trained checkpoint instead of training one

    def resolved(self) -> DeployConfig:
        """A validated copy with every default filled in; ConfigError/ModelError/CheckpointError otherwise."""
        from devices.profiles import load_profile
        from toolchain.importance import available
        from toolchain.models.registry import resolve_arch
        from toolchain.removal import GRANULARITIES
        from toolchain.sampling import STRATEGIES

        cfg = DeployConfig(**asdict(self))
        cfg.target = TARGET_ALIASES.get(cfg.target, cfg.target)
        profile = load_profile(cfg.target)
        if cfg.model is not None:
            resolve_arch(cfg.model)  # unknown names fail here, before any data is read
        if cfg.checkpoint:
            cfg._from_checkpoint()
        cfg.model = cfg.model or DEFAULT_MODEL
        cfg.data = cfg.data or DEFAULT_DATA
        cfg.img_size = cfg.img_size or DEFAULT_IMG_SIZE
        resolve_arch(cfg.model)
        if cfg.criterion not in available():
            raise ConfigError(f"unknown criterion {cfg.criterion!r}; choose from {', '.join(available())}")
        if cfg.sampling not in STRATEGIES:
            raise ConfigError(f"unknown sampling {cfg.sampling!r}; choose from {', '.join(STRATEGIES)}")
        if cfg.granularity not in GRANULARITIES:
            raise ConfigError(f"unknown granularity {cfg.granularity!r}; choose from {', '.join(GRANULARITIES)}")
        cfg.ratio = str(cfg.ratio).strip().lower()
        if cfg.ratio != "auto":
            try:
                value = float(cfg.ratio)
            except ValueError:
                raise ConfigError(f"ratio must be 'auto' or a number in [0, 1), got {self.ratio!r}") from None
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"ratio must be in [0, 1), got {value}")
            cfg.ratio = f"{value:.4f}"
        if cfg.precision == "default":
            cfg.precision = profile.precision
        if cfg.precision not in ("fp32", "fp16", "int8"):
            raise ConfigError(f"unsupported precision {cfg.precision!r}: use fp32, fp16, int8 or default")
        if profile.runtime == "tensorrt" and cfg.precision == "int8":
            raise ConfigError(f"precision int8 is not supported for {profile.name}: TensorRT INT8 needs "
                              "calibration on the device; use fp16 or fp32")
        if cfg.round_to is None:
            cfg.round_to = 8 if profile.runtime == "tensorrt" else 0
        if cfg.round_to < 0:
            raise ConfigError(f"round_to must be >= 0, got {cfg.round_to}")
        for name in ("tolerance", "sens_tolerance"):
            if getattr(cfg, name) < 0:
                raise ConfigError(f"{name.replace('_', '-')} must be >= 0 points, got {getattr(cfg, name)}")
        if cfg.n_per_class < 1:
            raise ConfigError(f"n-per-class must be >= 1, got {cfg.n_per_class}")
        if cfg.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {cfg.epochs}")
        if cfg.img_size < 8:
            raise ConfigError(f"img-size must be >= 8 pixels, got {cfg.img_size}")
        if cfg.bench_runs < 1 or cfg.samples < 1 or cfg.fidelity_images < 0 or cfg.max_backoff < 0:
            raise ConfigError("bench-runs and samples must be >= 1, fidelity-images and max-backoff >= 0")
        if not 0.0 < cfg.max_ratio < 1.0 or not 0.0 < cfg.search_margin <= 1.0:
            raise ConfigError("max-ratio must be in (0, 1) and search-margin in (0, 1]")
        if cfg.pool_per_class is not None:
            cfg.pool_per_class = max(cfg.pool_per_class, cfg.n_per_class)
        if cfg.name is not None and (not cfg.name or Path(cfg.name).name != cfg.name or cfg.name.startswith(".")):
            raise ConfigError(f"package name must be a plain file name, got {cfg.name!r}")
        out = Path(cfg.out)
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out {out} exists and is not a folder")
        return cfg

    def _from_checkpoint(self) -> None:
        """Model, data and input size come from the checkpoint; explicit flags must agree with it."""
        from toolchain.models.checkpoint import checkpoint_meta, resolve_checkpoint
        from toolchain.models.registry import resolve_arch

        self.checkpoint = str(resolve_checkpoint(self.checkpoint))
        meta = checkpoint_meta(self.checkpoint)
        if meta.get("pruning"):
            raise ConfigError(f"{self.checkpoint} is already pruned; deploy starts from a dense checkpoint")
        tc = meta.get("train_config") or {}
        arch = meta.get("arch")
        if self.model is not None and resolve_arch(self.model) != arch:
            raise ConfigError(f"--model {self.model} does not match the checkpoint's architecture {arch}")
        size = int(meta.get("img_size") or 0)
        if self.img_size is not None and self.img_size != size:
            raise ConfigError(f"--img-size {self.img_size} does not match the checkpoint's input size {size}")
        self.model = self.model or tc.get("model") or arch
        self.img_size = size
        self.data = self.data or tc.get("data") or (meta.get("dataset") or {}).get("name")
        if tc.get("epochs"):
            self.epochs = int(tc["epochs"])


def export_plan(runtime: str, precision: str) -> tuple[str, str, str]:
    """(format, precision exported here, runtime that verifies it here) for a target runtime."""
    if runtime == "openvino":
        return "openvino", precision, "openvino"
    if runtime == "tensorrt":
        # TensorRT engines are built on the device from the FP32 ONNX (trtexec --fp16)
        return "onnx", "fp32", "onnxruntime"
    return "onnx", precision, "onnxruntime"


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return (out.stdout.strip() or None) if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


@dataclass
class Deployment:
    cfg: DeployConfig
    pipe: Pipeline
    profile: Any
    facts: dict = field(default_factory=dict)

    # ---- stages ---------------------------------------------------------------------------------
    def train(self) -> tuple[Path, str]:
        from toolchain.models import load_checkpoint, recorded_sha256
        from toolchain.train import TrainConfig, train

        c = self.cfg
        self.pipe.console.print("[bold][0] train[/] " + ("(--checkpoint given: skipped)" if c.checkpoint else
                                                        f"… {c.model}, {c.epochs} epochs (cached by config)"))
        if c.checkpoint:
            weights = Path(c.checkpoint)
            _, meta = load_checkpoint(weights)  # validates sidecar, shapes, finiteness
            self.facts["train_config"] = meta.get("train_config")
            self.facts["train_source"] = "checkpoint"
        else:
            tc = TrainConfig(model=c.model, data=c.data, img_size=c.img_size, epochs=c.epochs, seed=c.seed,
                             lr=c.lr or MODEL_LR.get(c.model, TrainConfig.lr), device=c.device,
                             data_dir=c.data_dir, build_args=dict(MODEL_BUILD_ARGS.get(c.model, {})))
            weights = train(tc)
            self.facts["train_config"] = tc.to_dict()
            self.facts["train_source"] = "train (cached by its config)"
        return weights, recorded_sha256(weights)

    def run(self) -> dict:
        import torch

        from toolchain.importance import get_criterion
        from toolchain.prune_eval import (
            RatioEvaluator,
            find_lossless,
            load_context,
            load_scores,
            reference_inputs,
            save_scores,
            score_units,
        )
        from toolchain.units import find_unit_layers

        c, pipe = self.cfg, self.pipe
        t0 = time.perf_counter()
        weights, sha = self.train()
        self.facts["train_wall"] = round(time.perf_counter() - t0, 1)
        pipe.console.print(f"    checkpoint {weights} (sha256 {sha[:12]})")
        ctx = load_context(weights, c.data, data_dir=c.data_dir)
        layers = find_unit_layers(ctx.model)
        base = {"checkpoint": sha, "data": ctx.ds.fingerprint}

        ref = pipe.stage("reference", {**base, "sampling": c.sampling, "n": c.n_per_class, "seed": c.seed,
                                       "pool": c.pool_per_class},
                         lambda d: {"indices": reference_inputs(ctx, c.n_per_class, c.sampling, c.seed,
                                                                pool_per_class=c.pool_per_class)[2].tolist()})
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
        if c.ratio == "auto":
            gated = pipe.stage("gate-check", {"v": STAGE_VERSION, "ratio_stage": chosen.key_digest,
                                              "tol": [c.tolerance, c.sens_tolerance], "backoff": c.max_backoff},
                               lambda d: self._backoff(evaluator, chosen.data))
            ratio = float(gated.data["ratio"])
            self.facts["gate_check"] = gated.data
        pipe.console.print(f"    pruning ratio {ratio:.2f}" + (" (lossless search on val, confirmed on test)"
                                                               if c.ratio == "auto" else " (fixed)"))

        def prune(d: Path) -> dict:
            from toolchain.evaluate import evaluate
            from toolchain.masking import apply_masks
            from toolchain.removal import compare_models, remove_units, save_pruned

            masks = evaluator.masks(ratio)
            masks.save(d / "masks")
            pruned, report = remove_units(ctx.model, masks, example, c.granularity,
                                          c.round_to or None, scores=scores, strict=False)
            masked = apply_masks(ctx.model, masks)
            test = ctx.ds.split("test")
            xt = ctx.preprocess(test.images[:256])
            with torch.no_grad():
                parity = float((masked(xt) - pruned(xt)).abs().max())
            recipe = {"criterion": c.criterion, "sampling": c.sampling, "n_per_class": c.n_per_class,
                      "pool_per_class": c.pool_per_class, "ratio": ratio, "granularity": c.granularity,
                      "round_to": c.round_to, "seed": c.seed,
                      "ratio_search": ("lossless on val, confirmed by the test gate" if c.ratio == "auto"
                                       else "fixed")}
            save_pruned(d / "pruned.safetensors", pruned, ctx.meta, report, recipe)
            dense_m = evaluate(ctx.model, ctx.ds, "test", ctx.preprocess)
            pruned_m = evaluate(pruned, ctx.ds, "test", ctx.preprocess)
            # sizes only: latency is measured by the bench stage, never stored in the manifest
            sizes = compare_models(ctx.model, pruned, example[:1], batch_sizes=())
            sizes = {k: sizes[k] for k in ("params", "macs", "size_bytes") if k in sizes}
            return {"recipe": recipe, "parity_masked_vs_removed": parity, "dense": dense_m, "pruned": pruned_m,
                    "compare": sizes, "removal": {k: v for k, v in report.items() if k != "keep"}}

        pr = pipe.stage("prune", {"v": STAGE_VERSION, "ratio_stage": chosen.key_digest, "ratio": ratio,
                                  "seed": c.seed}, prune)
        self.gate(pr.data["dense"], pr.data["pruned"])
        pruned_path = pr.path / "pruned.safetensors"
        cal = self._calibrate(ctx, pruned_path, pr)
        model_path = cal.path / "calibrated.safetensors" if cal else pruned_path
        fid = self._fidelity(ctx, model_path, cal or pr)
        exp = self._export(ctx, model_path, cal or pr)
        bench = self._bench(exp)
        pkg = self._package(ctx, pr, exp, bench, fid, cal.data if cal else None)
        pkg["pruned_checkpoint"] = str(model_path)
        pkg["checkpoint"] = str(weights)
        return pkg

    # ---- helpers --------------------------------------------------------------------------------
    def _evaluator(self, ctx, scores, layers, example, base_cls):
        c = self.cfg
        if c.granularity == "neuron":
            return base_cls(ctx, scores, layers, meta={"criterion": c.criterion})
        from toolchain.removal import GroupMasker

        class GroupEvaluator(base_cls):
            """Group granularity: coupled units are scored and masked together (removal agrees exactly)."""

            @functools.cached_property
            def _masker(self) -> GroupMasker:
                # the graph analysis runs once per search, not once per ratio tried
                return GroupMasker(ctx.model, scores, list(layers), example, c.round_to or None)

            def masks(self, ratio: float):
                return self._masker.masks(ratio)

        return GroupEvaluator(ctx, scores, layers, meta={"criterion": c.criterion})

    def _backoff(self, evaluator, chosen: dict) -> dict:
        """ratio=auto: the val choice must also pass the clinical gate on test, else step down.

        Val and test are different samples, so a ratio that is lossless on val can lose a few test
        images of the minority class. Candidates, largest first: the val choice, the smaller ratios
        the val search passed, then 0.02 steps down; at most ``max_backoff`` of them. The masked model
        is evaluated (removal is exact, checked in the prune stage). Using the test split here makes
        the packaged test metrics a *gated* estimate, which the manifest and model card say.
        """
        c = self.cfg
        start = float(chosen["ratio"])
        passing = [t["ratio"] for t in ((chosen.get("search") or {}).get("trace") or []) if t["passes"]]
        grid = [round(start - 0.02 * k, 2) for k in range(1, 50)]
        candidates = sorted({r for r in [start, *passing, *grid] if 0 < r <= start}, reverse=True)
        tried = []
        for r in candidates[: c.max_backoff + 1]:
            res = evaluator.passes(r, "test", c.tolerance, c.sens_tolerance)
            tried.append(res)
            if res["passes"]:
                return {"ratio": r, "val_ratio": start, "tried_on_test": tried, "backed_off": r < start}
        if start == 0:
            return {"ratio": 0.0, "val_ratio": 0.0, "tried_on_test": [], "backed_off": False}
        worst = tried[-1] if tried else {}
        raise GateError(
            f"clinical gate: no pruning ratio from {start:.2f} down to {candidates[: c.max_backoff + 1][-1]:.2f} "
            f"keeps the test split within tolerance (last: accuracy drop {worst.get('accuracy_drop_pts', 0):.2f} pts, "
            f"worst sensitivity drop {worst.get('worst_sensitivity_drop_pts', 0):.2f} pts); no package written")

    def gate(self, dense: dict, pruned: dict) -> None:
        from toolchain.prune_eval import accuracy_drop, sensitivity_drops

        c = self.cfg
        acc = accuracy_drop(dense, pruned)
        sens = sensitivity_drops(dense, pruned)
        worst_cls = max(sens, key=sens.get) if sens else None
        self.facts["gates"] = {"split": "test", "accuracy_drop_pts": acc, "sensitivity_drop_pts": sens,
                               "tolerance_pts": c.tolerance, "sens_tolerance_pts": c.sens_tolerance,
                               "passed": True}
        if acc > c.tolerance + 1e-9:
            raise GateError(f"clinical gate: pruned accuracy drops {acc:.2f} pts on the test split "
                            f"(allowed {c.tolerance}); no package written — lower --ratio or raise --tolerance")
        if worst_cls is not None and sens[worst_cls] > c.sens_tolerance + 1e-9:
            raise GateError(f"clinical gate: sensitivity for {worst_cls} drops {sens[worst_cls]:.2f} pts on the "
                            f"test split (allowed {c.sens_tolerance}); no package written — lower --ratio or "
                            "raise --sens-tolerance")

    def _calibrate(self, ctx, pruned_path: Path, pr):
        """Temperature scaling of the pruned model on val; None when --no-calibrate."""
        if not self.cfg.calibrate:
            return None

        def run(d: Path) -> dict:
            from toolchain.temperature import calibrate
            from toolchain.evaluate import evaluate
            from toolchain.models import load_checkpoint, save_checkpoint

            pruned, meta = load_checkpoint(pruned_path)
            calibrated, report = calibrate(pruned, ctx.ds, ctx.preprocess, "val")
            save_checkpoint(d / "calibrated.safetensors", calibrated, {**meta, "calibration": report})
            return {**report, "test": evaluate(calibrated, ctx.ds, "test", ctx.preprocess)}

        cal = self.pipe.stage("calibrate", {"v": STAGE_VERSION, "policy": "nll-fit, kept if val ECE drops",
                                            "prune": pr.key_digest}, run)
        d = cal.data
        verdict = "applied" if d["applied"] else "not applied (val ECE did not improve; T = 1 kept)"
        self.pipe.console.print(f"    temperature {d['fitted_temperature']:.3f} fit on val (val ECE {d['ece_before']:.3f} "
                                f"→ {d['ece_after']:.3f}): {verdict}; test ECE {pr.data['pruned']['ece']:.3f} → "
                                f"{d['test']['ece']:.3f}")
        return cal

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
            return {"images": len(pick), "method": "lrp",
                    **fidelity(heatmaps(ctx.model, x, y), heatmaps(pruned, x, y))}

        try:
            return self.pipe.stage("fidelity", {"prune": pr.key_digest, "n": c.fidelity_images}, run).data
        except ImportError:
            return None

    def _export(self, ctx, pruned_path: Path, pr):
        from export.exporter import export_model, load_images
        from toolchain.models import load_checkpoint, recorded_sha256

        c = self.cfg
        fmt, precision, _ = export_plan(self.profile.runtime, c.precision)

        def run(d: Path) -> dict:
            model, meta = load_checkpoint(pruned_path)
            arrays = load_images(meta, c.data, c.data_dir, calib_size=256 if precision == "int8" else 0,
                                 eval_size=0, seed=c.seed)
            sha = recorded_sha256(pruned_path)
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
        import shutil

        from devices.bench import run_bench

        c = self.cfg

        def run(d: Path) -> dict:
            report, paths = run_bench(exp.path / exp.data["entry"], c.target, data=c.data, runs=c.bench_runs,
                                      out=d, command=f"medprune deploy --target {c.target}", cross_check=False,
                                      progress=lambda m: self.pipe.console.print(f"    {m}"))
            return {"files": {k: str(Path(v).relative_to(d)) for k, v in paths.items()},
                    "summary": _bench_summary(report)}

        # measurements vary run to run; cached so a resumed deploy does not re-measure
        key = {"export": exp.key_digest, "target": c.target, "runs": c.bench_runs}
        if not c.cache_bench:
            stale = Path(self.pipe.root) / "stages" / f"bench-{digest({'stage': 'bench', **key})[:16]}"
            shutil.rmtree(stale, ignore_errors=True)
        return self.pipe.stage("bench", key, run)

    def _package(self, ctx, pr, exp, bench, fid, cal: dict | None = None) -> dict:
        from export.package import PackageSpec, build_package
        from toolchain import __version__

        c = self.cfg
        fmt, exported, verify_runtime = export_plan(self.profile.runtime, c.precision)
        ratio = float(pr.data["recipe"]["ratio"])
        name = c.name or f"{c.model}-{ctx.ds.name}-{c.target}-{c.precision}-{c.granularity}{round(ratio * 100)}"
        model_files = {"onnx": exp.path / exp.data["onnx_fp32"]}
        if fmt == "onnx" and exported != "fp32":
            model_files["onnx"] = exp.path / exp.data["entry"]
        if fmt == "openvino":
            xml = exp.path / exp.data["entry"]
            model_files["openvino"] = xml
            model_files["openvino_bin"] = xml.with_suffix(".bin")
        samples = self._samples(ctx, model_files, verify_runtime)
        scripts = {}
        if self.profile.runtime == "tensorrt":
            scripts = self._jetson_scripts(model_files["onnx"])
        reports = {}
        for rel in bench.data["files"].values():
            src = bench.path / rel
            if src.is_file() and src.suffix in (".json", ".md", ".html", ".png"):
                reports[src.name] = src
        dense, pruned = pr.data["dense"], pr.data["pruned"]
        bench_summary = bench.data["summary"]
        manifest = {
            "runtime_target": self.profile.name,
            "precision": c.precision,
            "exported_precision": exported,
            "input": {"name": "image", "shape": [None, int(ctx.meta["in_chans"]), int(ctx.meta["img_size"]),
                                                 int(ctx.meta["img_size"])], "dtype": "float32",
                      "layout": "NCHW"},
            "metrics": {"split": "test", "dense": dense, "pruned": pruned, "gates": self.facts.get("gates"),
                        "ratio_gate_check": self.facts.get("gate_check"),
                        # what the package's model computes: the pruned model with its temperature folded in
                        "deployed": cal["test"] if cal else pruned},
            "calibration": ({k: v for k, v in cal.items() if k != "test"} if cal
                            else {"temperature": 1.0, "note": "not calibrated (--no-calibrate)"}),
            "explanation_fidelity": fid,
            "pruning": {**pr.data["recipe"], "removal": pr.data["removal"], "compare": pr.data["compare"],
                        "parity_masked_vs_removed": pr.data["parity_masked_vs_removed"]},
            "export_verification": exp.data["verification"],
            # numbers measured here vary run to run: they live in reports/, the manifest only points there
            "benchmark": {"reports": sorted(f"reports/{n}" for n in reports),
                          "kind": "measured" if bench_summary["measured"] else "predicted",
                          "note": "latency/throughput/memory are in reports/ (measured on the build machine "
                                  "or predicted for an absent device); they are not reproducible byte for byte"},
            "dataset": {"name": ctx.ds.name, "fingerprint": ctx.ds.fingerprint,
                        "source": Path(str(getattr(ctx.ds, "source", "") or "")).name or None},
            "training": self.facts.get("train_config"),
            "source_checkpoint_sha256": ctx.sha256,
            "seeds": {"train": (self.facts.get("train_config") or {}).get("seed", c.seed), "sampling": c.seed,
                      "fidelity": c.seed, "export_calibration": c.seed},
            "medprune": {"version": __version__, "git_commit": git_commit()},
            "reproducibility": "same seed and inputs → identical files except reports/*; in manifest.json only "
                               "files['reports/…'] and manifest_sha256 differ",
        }
        card = model_card(c, ctx, manifest, self.profile)
        spec = PackageSpec(name=name, runtime=self.profile.runtime, model_files=model_files,
                           class_names=list(ctx.ds.class_names), preprocess=_predict_preprocess(ctx),
                           manifest=manifest, model_card=card, samples=samples, reports=reports,
                           scripts=scripts, sample_tolerance=SAMPLE_TOLERANCE[exported])
        t0 = time.perf_counter()
        self.pipe.console.print(f"[bold][{len(self.pipe.results) + 1}] package[/] …")
        report: dict = {}
        folder, tarball = build_package(spec, Path(c.out), report=report)  # verified before it is published
        report["package"] = str(tarball)
        self.facts["package_seconds"] = round(time.perf_counter() - t0, 1)
        self.pipe.console.print(f"[green]    verify-package: {report['files_checked']} files, "
                                f"{report['top1_agreement']}/{report['samples']} samples agree, "
                                f"max |Δprob| {report['max_abs_prob_diff']:.1e}[/]")
        return {"package": str(folder), "tarball": str(tarball), "name": name, "verify": report,
                "dense": dense, "pruned": pruned, "deployed": manifest["metrics"]["deployed"],
                "calibration": manifest["calibration"], "ratio": ratio, "gates": self.facts.get("gates"),
                "gate_check": self.facts.get("gate_check"),
                "compare": pr.data["compare"], "fidelity": fid, "bench": bench_summary,
                "export_verification": exp.data["verification"]}

    def _samples(self, ctx, model_files: dict, runtime: str) -> list:
        """Test images at their stored size with the probabilities the toolchain computes for them
        (torch preprocessing → the verified export), so verify-package checks predict.py's own
        preprocessing as well as the model file."""
        from export.package import Sample
        from export.verify import onnx_runner, openvino_runner

        c = self.cfg
        test = ctx.ds.split("test")
        k = len(ctx.ds.class_names)
        picks: list[int] = []
        for cls in range(k):
            picks += [int(i) for i in np.flatnonzero(test.labels == cls)[: max(1, c.samples // k)]]
        run = openvino_runner(model_files["openvino"]) if runtime == "openvino" else onnx_runner(model_files["onnx"])
        out = []
        for i in picks:
            img = test.images[i]
            x = ctx.preprocess(img[None]).numpy()
            logits = np.asarray(run(x), dtype=np.float64)
            logits -= logits.max(axis=1, keepdims=True)
            probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
            label = ctx.ds.class_names[int(test.labels[i])]
            out.append(Sample(f"test_{i:04d}_{label}", img[..., 0] if img.shape[-1] == 1 else img, label,
                              probs[0].tolist()))
        return out

    def _jetson_scripts(self, onnx_path: Path) -> dict[str, str]:
        """build_engine.sh (trtexec, FP16 by default) and run_trt.sh (trtexec latency), run on the Jetson.

        Engines and logs go to a sibling folder ``<package>.trt/`` (``OUT_DIR``): the package folder
        itself must stay exactly as shipped, or predict.py refuses it as modified.
        """
        from devices.remote import device_commands, onnx_input

        c = self.cfg
        input_name, chw, static_batch = onnx_input(onnx_path)
        onnx_arg = f"$PKG/model/{onnx_path.name}"
        lines = device_commands(onnx_arg, self.profile, input_name, chw, static_batch, 200, False,
                                precision=c.precision)
        build = [ln.replace(f"--onnx={onnx_arg}", f'--onnx="{onnx_arg}"')
                 for ln in lines if ln.startswith("trtexec") and "--saveEngine" in ln]
        bench = [ln for ln in lines if ln.startswith("trtexec") and "--loadEngine" in ln]
        clocks = [ln for ln in lines if "nvpmodel" in ln]
        header = ["#!/usr/bin/env bash", f"# Generated by medprune deploy for {self.profile.name} "
                  f"({self.profile.description}).", "# Run on the device; the package folder is not modified.",
                  "set -euo pipefail", 'PKG="$(cd "$(dirname "$0")" && pwd)"',
                  'OUT_DIR="${OUT_DIR:-$PKG.trt}"', 'mkdir -p "$OUT_DIR"', 'cd "$OUT_DIR"',
                  "export PATH=$PATH:/usr/src/tensorrt/bin"]
        build_sh = [*header, "# refuse a modified package before building from it",
                    'python3 "$PKG/predict.py" --check',
                    "command -v trtexec >/dev/null || { echo 'trtexec not found (JetPack TensorRT)' >&2; exit 2; }",
                    *build, 'echo "engine written to $OUT_DIR"']
        run_sh = [*header, "# lock clocks so latency is repeatable (MAXN power mode, fixed clocks)", *clocks,
                  *bench, 'echo "latency logs in $OUT_DIR (trtexec_b*.log, trtexec_times_b1.json)"']
        return {"build_engine.sh": "\n".join(build_sh) + "\n", "run_trt.sh": "\n".join(run_sh) + "\n"}


def _predict_preprocess(ctx) -> dict:
    pre = ctx.preprocess.to_dict()
    return {"img_size": int(pre["img_size"]), "in_chans": int(pre["in_chans"]),
            "mean": [float(v) for v in pre["mean"]], "std": [float(v) for v in pre["std"]],
            "resize": "antialiased bilinear, half-pixel centres (torch interpolate antialias=True)",
            "scale": "uint8 / 255, then (x - mean) / std per channel; RGB → grey by channel mean"}


def _bench_summary(report: dict) -> dict:
    out: dict[str, Any] = {"measured": [], "predicted": report.get("predictions") or [],
                           "notes": report.get("notes") or []}
    for m in report.get("models") or []:
        out["measured"].append({k: m.get(k) for k in ("name", "runtime", "precision", "threads", "latency_ms",
                                                        "throughput", "memory", "size_mb", "accuracy", "macs")})
    out["machine"] = {k: (report.get("machine") or {}).get(k) for k in ("cpu_model", "cores", "isa")}
    return json.loads(json.dumps(out, default=str))


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def model_card(c: DeployConfig, ctx, manifest: dict, profile) -> str:
    d, p = manifest["metrics"]["dense"], manifest["metrics"]["pruned"]
    dep = manifest["metrics"].get("deployed") or p
    cal = manifest.get("calibration") or {}
    fid = manifest.get("explanation_fidelity") or {}
    gates = manifest["metrics"].get("gates") or {}
    check = manifest["metrics"].get("ratio_gate_check") or {}
    rows = ["| metric | dense | pruned |", "|---|---:|---:|"]
    for key in ("accuracy", "balanced_accuracy", "auc", "ece"):
        rows.append(f"| {key} | {_fmt(d.get(key))} | {_fmt(p.get(key))} |")
    if cal.get("temperature", 1.0) != 1.0 or "fit_split" in cal:
        rows.append(f"| ece, deployed (temperature {cal['temperature']:.3f}) | | {_fmt(dep.get('ece'))} |")
    for cls in d.get("per_class", {}):
        for key in ("sensitivity", "specificity"):
            rows.append(f"| {key} {cls} | {_fmt(d['per_class'][cls].get(key))} | "
                        f"{_fmt(p['per_class'][cls].get(key))} |")
    cmp = manifest["pruning"].get("compare") or {}
    train = manifest.get("training") or {}
    runtime_line = {
        "tensorrt": "On the device: `./build_engine.sh` (trtexec builds a TensorRT engine from the ONNX file) "
                    "then `./run_trt.sh` for latency; `python3 predict.py IMAGE` runs the ONNX file with "
                    "onnxruntime.",
        "openvino": "`python3 predict.py IMAGE` runs the OpenVINO IR (`--runtime onnxruntime` for the ONNX file).",
    }.get(profile.runtime, "`python3 predict.py IMAGE` runs the ONNX file with onnxruntime.")
    backoff = ""
    if check.get("backed_off"):
        backoff = (f" The lossless search on val chose {check['val_ratio']:.2f}; the test gate refused it and "
                   f"the ratio was lowered to {check['ratio']:.2f}, so the test metrics below are gated, not "
                   "fully held out.")
    return "\n".join([
        f"# Model card: {c.model} on {ctx.ds.name} for {profile.name}",
        "",
        "**Research use only. This is not a certified medical device** and must not be used for diagnosis.",
        "",
        "## Intended use",
        f"Research on compressed classifiers of {ctx.ds.name} images ({', '.join(ctx.ds.class_names)}) "
        f"running on {profile.name} ({profile.runtime}, {manifest['precision']}). {runtime_line}",
        "",
        "## Data",
        f"Dataset `{ctx.ds.name}` (fingerprint `{ctx.ds.fingerprint[:16]}…`), train/val/test splits; "
        f"inputs {ctx.meta['img_size']}x{ctx.meta['img_size']} px, {ctx.meta['in_chans']} channel(s).",
        "",
        "## Model and pruning",
        f"{c.model} trained from scratch ({train.get('epochs', c.epochs)} epochs, seed {train.get('seed', c.seed)}); "
        f"units scored with `{c.criterion}` on {c.n_per_class} `{c.sampling}` reference images per class; "
        f"{manifest['pruning']['ratio']:.0%} of units pruned at `{c.granularity}` granularity "
        f"({manifest['pruning']['ratio_search']}), then physically removed (Torch-Pruning).{backoff}",
        f"Parameters {cmp.get('params', {}).get('dense', '?')} → {cmp.get('params', {}).get('pruned', '?')}; "
        f"MACs per image {cmp.get('macs', {}).get('dense', '?')} → {cmp.get('macs', {}).get('pruned', '?')}.",
        "",
        "## Test-split metrics (dense vs pruned)",
        *rows,
        "",
        f"Clinical gates passed: accuracy drop {gates.get('accuracy_drop_pts', 0):.2f} pts "
        f"(allowed {gates.get('tolerance_pts')}), worst per-class sensitivity drop "
        f"{max((gates.get('sensitivity_drop_pts') or {0: 0}).values()):.2f} pts (allowed "
        f"{gates.get('sens_tolerance_pts')}).",
        "",
        f"Explanation fidelity (LRP heatmaps, pruned vs dense, {fid.get('images')} test images): Spearman "
        f"{_fmt(fid.get('spearman_mean'))}, top-10% IoU {_fmt(fid.get('iou10_mean'))}." if fid
        else "Explanation fidelity: not measured.",
        "",
        "## Latency",
        "See `reports/` (measured on the build machine where the runtime exists there; a roofline *prediction* "
        "for a device that is not attached). These numbers are not part of the reproducible package contents.",
        "",
        "## Limitations",
        "- Low-resolution inputs; small single-source datasets; paediatric chest X-rays (PneumoniaMNIST) do not "
        "represent adult populations or other sites and scanners.",
        "- Metrics come from one test split with no external validation. " + _calibration_line(cal),
        "- Verify the package (`medprune verify-package` or `predict.py`, which checks checksums) before use.",
        "",
    ])


def _calibration_line(cal: dict) -> str:
    if "fit_split" not in cal:
        return "Probabilities are not recalibrated after pruning (--no-calibrate)."
    if not cal.get("applied", True):
        return (f"A temperature fit on the {cal['fit_split']} split (T = {cal['fitted_temperature']:.3f}) did not "
                "lower that split's ECE, so the pruned model's probabilities are kept (T = 1); recalibrate for a "
                "new site.")
    return (f"Probabilities are temperature-scaled (T = {cal['temperature']:.3f}, fit on the {cal['fit_split']} "
            "split, folded into the classifier; predictions are unchanged); recalibrate for a new site.")


def deploy(cfg: DeployConfig) -> dict:
    """Run the whole pipeline; returns the summary (package paths, metrics, per-stage timings)."""
    from devices.profiles import load_profile
    from toolchain.settings import cache_dir

    started = time.perf_counter()
    cfg = cfg.resolved()
    if cfg.data_dir:
        # the bench harness loads its test set by name only; point it at the same data root
        os.environ["MEDPRUNE_DATA"] = str(Path(cfg.data_dir).expanduser())
    root = Path(cfg.cache) if cfg.cache else cache_dir() / "deploy"
    pipe = Pipeline(root)
    profile = load_profile(cfg.target)
    job = Deployment(cfg, pipe, profile)
    pipe.console.print(f"[bold]medprune deploy[/] {cfg.model} → {profile.name} ({profile.runtime}, {cfg.precision}); "
                       f"data {cfg.data}, criterion {cfg.criterion}, sampling {cfg.sampling}, ratio {cfg.ratio}, "
                       f"granularity {cfg.granularity}  [config {digest(asdict(cfg))[:12]}]")
    result = job.run()
    result["seconds"] = round(time.perf_counter() - started, 1)
    # train is cached by toolchain.train itself (or skipped with --checkpoint): its wall time tells which
    stages = {"train": {"source": job.facts.get("train_source"), "seconds": job.facts.get("train_wall", 0.0)}}
    stages.update(pipe.summary()["stages"])
    stages["package"] = {"cached": False, "seconds": job.facts.get("package_seconds", 0.0)}
    result["stages"] = stages
    result["config"] = asdict(cfg)
    result["host"] = platform.node()
    return result
