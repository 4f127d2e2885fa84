"""Stage 7, **export**: the deployed weights in the target runtime's format, parity verified on val.
Stage 10, **bench** (report phase): latency/memory (and test accuracy) measured here, or
roofline-predicted for an absent device."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .stage import Stage, live


def export_plan(runtime: str, precision: str) -> tuple[str, str, str]:
    """(format, precision exported here, runtime that verifies it here) for a target runtime."""
    if runtime == "openvino":
        return "openvino", precision, "openvino"
    if runtime == "tensorrt":
        # TensorRT engines are built on the device from the FP32 ONNX (trtexec --fp16)
        return "onnx", "fp32", "onnxruntime"
    return "onnx", precision, "onnxruntime"


@dataclass(frozen=True, kw_only=True)
class Export(Stage):
    name = "export"
    version = 2  # 2: parity verified on val, not test
    outputs = ("model_*",)
    source: str  # digest of the stage holding the deployed weights (calibrate, else prune)
    fmt: str
    precision: str
    seed: int  # picks the INT8 calibration images
    weights: Any = live()
    data: Any = live()  # (dataset name, data_dir) the weights were evaluated on (upstream of ``source``)

    def run(self, workdir: Path) -> dict:
        from export.exporter import export_model, load_images
        from toolchain.models import load_checkpoint, recorded_sha256

        model, meta = load_checkpoint(self.weights)
        arrays = load_images(meta, *self.data, calib_size=256 if self.precision == "int8" else 0,
                             eval_size=0, eval_split="val", seed=self.seed)
        sha = recorded_sha256(self.weights)
        result = export_model(model, meta, workdir, self.fmt, self.precision, name="model", source_sha256=sha,
                              eval_x=arrays.get("eval_x"), eval_y=arrays.get("eval_y"),
                              calib_x=arrays.get("calib"))
        onnx_fp32 = None
        if self.fmt != "onnx" or self.precision != "fp32":
            # the ONNX FP32 travels too: TensorRT builds from it and it is the reference format
            base = export_model(model, meta, workdir, "onnx", "fp32", name="model", source_sha256=sha,
                                eval_x=arrays.get("eval_x"), eval_y=arrays.get("eval_y"))
            onnx_fp32 = base.path.name
        return {"entry": result.path.name, "files": [p.name for p in result.files], "format": self.fmt,
                "precision": self.precision, "onnx_fp32": onnx_fp32 or result.path.name,
                "verification": result.verification}


@dataclass(frozen=True, kw_only=True)
class Bench(Stage):
    """Measurements vary run to run: cached so a resumed deploy does not re-measure (``fresh`` does)."""

    name = "bench"
    version = 1
    export: str  # digest of the export stage
    target: str
    runs: int
    entry: Any = live()  # the exported model file
    data: Any = live()
    console: Any = live()

    def run(self, workdir: Path) -> dict:
        from devices.bench import run_bench

        report, paths = run_bench(self.entry, self.target, data=self.data, runs=self.runs, out=workdir,
                                  command=f"medprune deploy --target {self.target}", cross_check=False,
                                  progress=lambda m: self.console.print(f"    {m}"),
                                  device_note="to measure it on the device, follow JETSON.md in the package "
                                              "(build_engine.sh, then run_trt.py on the shipped testset.npz)")
        return {"files": {k: str(Path(v).relative_to(workdir)) for k, v in paths.items()},
                "summary": bench_summary(report)}


def export_deployed(cfg, pipe, profile, source, weights: Path):
    """The export stage for the deployed weights held by stage ``source``."""
    fmt, precision, _ = export_plan(profile.runtime, cfg.precision)
    return Export(source=source.key_digest, fmt=fmt, precision=precision, seed=cfg.seed, weights=weights,
                  data=(cfg.data, cfg.data_dir))(pipe)


def bench_export(cfg, pipe, exp):
    """The bench stage of the exported model (report phase: the harness reports test accuracy)."""
    bench = Bench(export=exp.key_digest, target=cfg.target, runs=cfg.bench_runs,
                  entry=exp.path / exp.data["entry"], data=cfg.data, console=pipe.console)
    return bench(pipe, fresh=not cfg.cache_bench)


def bench_summary(report: dict) -> dict:
    out: dict[str, Any] = {"measured": [], "predicted": report.get("predictions") or [],
                           "notes": report.get("notes") or []}
    for m in report.get("models") or []:
        out["measured"].append({k: m.get(k) for k in ("name", "runtime", "precision", "threads", "latency_ms",
                                                        "throughput", "memory", "size_mb", "accuracy", "macs")})
    out["machine"] = {k: (report.get("machine") or {}).get(k) for k in ("cpu_model", "cores", "isa")}
    return json.loads(json.dumps(out, default=str))
