"""One-shot TensorRT check on an NVIDIA GPU: FP16 and INT8 engines of medprune's ONNX files, run as shipped.

    make tensorrt-check          # = medprune study tensorrt_check (needs a CUDA GPU + the tensorrt package)
    medprune study tensorrt_check [--models ONNX_OR_DIR ...] [--data pneumoniamnist] [--precisions fp16,int8]
                                  [--test-size 512] [--runs 200]

For every ONNX file (default: ``$MEDPRUNE_CACHE/bench_models``, the dense and pruned VGG19 / ResNet50 /
ViT-B/16 that ``make bench`` exports; add 224 px exports with ``--models``) and precision it builds an
engine with the ``tensorrt`` Python package (dynamic batch 1..8; INT8 calibrated by entropy calibration
on the SAME calibration images as medprune's other INT8 paths: ``export.exporter.load_images``, 256
seeded train images, seed 0), writes the test split (preprocessed by the model's own metadata) with
ONNX Runtime FP32's probabilities as ``testset.npz``, and runs ``devices/scripts/run_trt.py`` AS SHIPPED
on it. Per model and precision it records build success (or the error), top-1 agreement and max
|Δprob| against ORT FP32 on the test split, test accuracy (INT8: its drop in points vs ORT FP32, with a
95 % interval of the FP32 accuracy and n), and latency at batch 1 (p50) and 8 (batch latency). Writes
benchmarks/results/tensorrt.{json,md} with the device description. Without a GPU or tensorrt it stops
with a one-line error and writes nothing (its tests skip with that reason).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from toolchain.atomic import atomic_file
from toolchain.errors import ConfigError

from .registry import StudyParser, command_line, study

RUN_TRT = Path(__file__).resolve().parents[2] / "devices" / "scripts" / "run_trt.py"
CALIB_SIZE, CALIB_SEED = 256, 0  # export.cli / deploy's INT8 defaults: the same calibration images
MAX_BATCH = 8


def gpu_unavailable() -> str | None:
    """Why this machine cannot run the check (None when it can)."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "the tensorrt Python package is not installed (pip install tensorrt)"
    try:
        import torch

        if not torch.cuda.is_available():
            return "no CUDA GPU visible to PyTorch"
    except ImportError:
        return "PyTorch (used for the device description and buffers) is not installed"
    return None


def device_description() -> dict:
    import tensorrt as trt
    import torch

    props = torch.cuda.get_device_properties(0)
    out = {"gpu": props.name, "memory_gb": round(props.total_memory / 2**30, 1),
           "compute_capability": f"{props.major}.{props.minor}", "tensorrt": trt.__version__,
           "cuda": torch.version.cuda, "torch": torch.__version__}
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,power.limit",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        out["nvidia_smi"] = smi.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        out["nvidia_smi"] = None
    return out


def _calibrator(trt, calib: np.ndarray, cache: Path):
    """IInt8EntropyCalibrator2 over ``calib`` (N,C,H,W), one image per batch, its cache written to ``cache``."""
    import torch

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            super().__init__()
            self.i, self.buf = 0, torch.empty((1, *calib.shape[1:]), dtype=torch.float32, device="cuda")

        def get_batch_size(self):
            return 1

        def get_batch(self, names):
            if self.i >= len(calib):
                return None
            self.buf.copy_(torch.from_numpy(np.ascontiguousarray(calib[self.i:self.i + 1])))
            self.i += 1
            return [int(self.buf.data_ptr())]

        def read_calibration_cache(self):
            return cache.read_bytes() if cache.is_file() else None

        def write_calibration_cache(self, data):
            cache.write_bytes(bytes(data))

    return Calibrator()


def build_engine(onnx: Path, precision: str, chw: tuple[int, int, int], out: Path, calib: np.ndarray | None) -> dict:
    """Serialise an engine for ``onnx`` at ``precision`` to ``out``; {"ok", "seconds", "error"}."""
    import time

    import tensorrt as trt

    t0 = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0 if int(trt.__version__.split(".")[0]) >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        return {"ok": False, "seconds": time.perf_counter() - t0, "error": f"ONNX parse failed: {errors}"}
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)  # INT8 layers TensorRT cannot quantise fall back to FP16, not FP32
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = _calibrator(trt, calib, out.with_suffix(".calib"))
    profile = builder.create_optimization_profile()
    name = network.get_input(0).name
    profile.set_shape(name, (1, *chw), (1, *chw), (MAX_BATCH, *chw))
    config.add_optimization_profile(profile)
    if precision == "int8":
        config.set_calibration_profile(profile)
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        return {"ok": False, "seconds": time.perf_counter() - t0, "error": "build_serialized_network returned None"}
    out.write_bytes(bytes(blob))
    return {"ok": True, "seconds": time.perf_counter() - t0, "error": None, "size_mb": out.stat().st_size / 2**20}


def run_shipped_runner(engine: Path, testset: Path, chw, runs: int, result: Path) -> dict:
    """devices/scripts/run_trt.py exactly as a package ships it, in a fresh interpreter."""
    cmd = [sys.executable, str(RUN_TRT), "--engine", str(engine), "--shape", "1x" + "x".join(map(str, chw)),
           "--batch", str(MAX_BATCH), "--runs", str(runs), "--data", str(testset), "--out", str(result)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        return {"ok": False, "error": (proc.stderr or proc.stdout).strip().splitlines()[-1:], "command": cmd}
    return {"ok": True, "result": json.loads(result.read_text()), "command": cmd}


def check_model(onnx: Path, precisions: list[str], data: str | None, test_size: int, runs: int, tmp: Path) -> dict:
    from benchmarks.harness import meta_chw, model_meta
    from export.exporter import load_images
    from export.package import export_probabilities
    from toolchain.intervals import clopper_pearson

    meta = model_meta(onnx)
    chw = meta_chw(meta)
    if chw is None:
        return {"model": onnx.stem, "error": "no medprune metadata (input size) in the ONNX file"}
    arrays = load_images(meta, data, calib_size=CALIB_SIZE if "int8" in precisions else 0, eval_size=test_size,
                         eval_split="test", seed=CALIB_SEED)
    x, y = arrays["eval_x"].astype(np.float32), arrays["eval_y"]
    ref = export_probabilities(onnx, "fp32", x)
    names = [str(c) for c in meta.get("class_names") or range(ref.shape[1])]
    testset = tmp / f"{onnx.stem}_test.npz"
    np.savez_compressed(testset, x=x, y=y, class_names=np.array(names), probabilities=ref)
    k_ref = int((ref.argmax(1) == y).sum())
    row = {"model": onnx.stem, "input": list(chw), "test_n": int(len(y)),
           "ort_fp32_accuracy": k_ref / len(y), "ort_fp32_accuracy_ci95": list(clopper_pearson(k_ref, len(y))), "engines": {}}
    for precision in precisions:
        engine = tmp / f"{onnx.stem}_{precision}.plan"
        built = build_engine(onnx, precision, chw, engine, arrays.get("calib"))
        entry = {"build": built}
        if built["ok"]:
            ran = run_shipped_runner(engine, testset, chw, runs, tmp / f"{onnx.stem}_{precision}.json")
            entry["run_trt"] = {k: v for k, v in ran.items() if k != "result"}
            if ran["ok"]:
                r = ran["result"]
                acc = r["accuracy"]
                entry.update({"top1_agreement": acc["vs_expected"]["top1_agreement"],
                              "max_abs_prob_diff": acc["vs_expected"]["max_abs_prob_diff"],
                              "accuracy": acc["accuracy"], "acc_drop_pts": (row["ort_fp32_accuracy"] - acc["accuracy"]) * 100,
                              "latency_b1_p50_ms": r["latency_ms"]["p50"], "latency_b1_p99_ms": r["latency_ms"]["p99"],
                              "batch8": r["throughput"], "runtime_version": r["runtime_version"]})
        row["engines"][precision] = entry
    return row


def _markdown(report: dict) -> str:
    lines = [f"# {report['title']}", "", f"Command: `{report['command']}`  ", f"Created: {report['created']}  ",
             f"Device: {json.dumps(report['device'])}", "",
             "| model | precision | built | top-1 agreement vs ORT FP32 | max abs dprob | accuracy (ORT FP32 [95% CI], n) |"
             " drop pts | b1 p50 ms | b8 batch ms |", "|---|---|---|---|---|---|---|---|---|"]
    for m in report["models"]:
        for precision, e in (m.get("engines") or {}).items():
            fp = f"{m['ort_fp32_accuracy']:.4f} [{m['ort_fp32_accuracy_ci95'][0]:.3f}, {m['ort_fp32_accuracy_ci95'][1]:.3f}]"
            if "top1_agreement" not in e:
                why = e["build"]["error"] if not e["build"]["ok"] else e.get("run_trt", {}).get("error")
                lines.append(f"| {m['model']} | {precision} | {e['build']['ok']} | failed: {why} | | {fp}, {m['test_n']} | | | |")
                continue
            b8 = e["batch8"].get("batch_latency_ms")
            lines.append(f"| {m['model']} | {precision} | yes | {e['top1_agreement']:.4f} | {e['max_abs_prob_diff']:.2e} | "
                         f"{e['accuracy']:.4f} (FP32 {fp}, n={m['test_n']}) | {e['acc_drop_pts']:.2f} | "
                         f"{e['latency_b1_p50_ms']:.3f} | {'n/a' if b8 is None else f'{b8:.3f}'} |")
    return "\n".join(lines + [""] + [f"- {n}" for n in report["notes"]] + [""])


@study("tensorrt_check", outputs=("tensorrt.json", "tensorrt.md"))
def main(argv: list[str] | None = None) -> dict:
    from toolchain.settings import cache_dir

    p = StudyParser("tensorrt_check", __doc__)
    p.add_argument("--models", type=Path, nargs="*", default=None,
                   help="ONNX files or folders (default: $MEDPRUNE_CACHE/bench_models from make bench)")
    p.add_argument("--data", default=None, help="dataset of the test split (default: the model's metadata)")
    p.add_list("--precisions", default="fp16,int8", choices=["fp16", "int8"])
    p.add_argument("--test-size", type=int, default=0, help="test images (0 = the whole test split)")
    p.add_argument("--runs", type=int, default=200)
    p.add_out()
    a = p.parse_args(argv)
    why = gpu_unavailable()
    if why:
        raise ConfigError(f"tensorrt_check needs an NVIDIA GPU with TensorRT: {why}; nothing was written")
    sources = a.models if a.models is not None else [cache_dir() / "bench_models"]
    files = [f for s in sources for f in (sorted(s.glob("*.onnx")) if s.is_dir() else [s])]
    if not files:
        raise ConfigError(f"no ONNX files in {', '.join(map(str, sources))}: run make bench or give --models")
    models = []
    with tempfile.TemporaryDirectory(prefix="medprune-trt-") as tmp:
        for f in files:
            print(f"[tensorrt_check] {f.name}", flush=True)
            models.append(check_model(f, a.precisions, a.data, a.test_size, a.runs, Path(tmp)))
    report = {"title": "TensorRT engines of medprune's ONNX files, checked against ONNX Runtime FP32",
              "command": command_line("tensorrt_check", argv),
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": device_description(),
              "models": models,
              "notes": ["engines built with the tensorrt Python package (FP16 flag always set; INT8 by entropy "
                        f"calibration on {CALIB_SIZE} seeded train images, seed {CALIB_SEED}, as export/deploy INT8)",
                        "agreement, |dprob| and accuracy come from devices/scripts/run_trt.py run as shipped on the "
                        "test split; latency is end to end from the host (copy in, execute, copy out)",
                        "this is a datacenter/desktop GPU, not a Jetson: latencies validate nothing about Orin; "
                        "agreement and accuracy carry over to the same TensorRT version"]}
    a.out.mkdir(parents=True, exist_ok=True)
    with atomic_file(a.out / "tensorrt.json", "w") as fh:
        json.dump(report, fh, indent=2)
        fh.write("\n")
    with atomic_file(a.out / "tensorrt.md", "w") as fh:
        fh.write(_markdown(report))
    print(f"wrote {a.out / 'tensorrt.json'}, {a.out / 'tensorrt.md'}")
    return report
