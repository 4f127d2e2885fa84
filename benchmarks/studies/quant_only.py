"""Quantization only: what INT8 alone buys a dense model on ONNX Runtime and OpenVINO (issue 15's baseline row).

    MEDPRUNE_DATA=/work/shared/data medprune study quant_only \\
        --checkpoint vgg19=path/model.safetensors --checkpoint resnet50=path/model.safetensors

For every dense checkpoint: INT8 calibration images are the seeded train subset ``medprune export``
uses (``export.exporter.load_images`` → ``export.quantize.calibration_indices``, ``--calib-size``), the
test split is read whole, once; ``_recovery_runtimes.runtime_columns(model, model, ...)`` exports the
model to ORT FP32/INT8 (QDQ) and OpenVINO FP32/INT8 (NNCF) and measures batch-1 latency (interleaved in
one process, speedups against dense ORT FP32), test accuracy with its 95 % interval and n, and the drops
against the PyTorch FP32 model with paired bootstrap intervals. This is the row the recovery study's
pruned models are compared with: what pruning adds on top of quantization.
Writes ``quant_only.json`` and ``quant_only.md`` under ``--out``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from .registry import StudyParser, command_line, study

LABELS = {"ort_fp32": "ORT FP32", "ort_int8": "ORT INT8 (QDQ)", "ov_fp32": "OpenVINO FP32",
          "ov_int8": "OpenVINO INT8 (NNCF)"}


def measure(label: str, checkpoint: str, args, log) -> dict[str, Any]:
    from export.exporter import load_images
    from toolchain.models import load_checkpoint, recorded_sha256

    from ._recovery_runtimes import runtime_columns

    model, meta = load_checkpoint(checkpoint)
    arrays = load_images(meta, calib_size=args.calib_size, eval_size=0, seed=args.seed)
    chw = (int(meta["in_chans"]), int(meta["img_size"]), int(meta["img_size"]))
    cols = runtime_columns(model, model, chw, arrays["calib"], arrays["eval_x"], arrays["eval_y"],
                           threads=args.threads, repeats=args.repeats, class_names=meta.get("class_names"),
                           log=lambda m: log(f"{label}: {m}"))
    return {"label": label, "checkpoint": str(checkpoint), "checkpoint_sha256": recorded_sha256(checkpoint),
            "arch": meta.get("arch"), "dataset": (meta.get("dataset") or {}).get("name"),
            "calib_size": args.calib_size, "seed": args.seed, **cols}


def _ci(ci, scale: float = 1.0, digits: int = 3) -> str:
    return f"[{ci[0] * scale:.{digits}f}, {ci[1] * scale:.{digits}f}]" if ci else "[n/a]"


def to_markdown(doc: dict[str, Any]) -> str:
    lines = ["# Quantization only: dense models in INT8 on ONNX Runtime and OpenVINO", "",
             f"Command: `{doc['command']}`  ", f"Commit {doc['commit']}, started {doc['started']}.", "",
             "Batch-1 latency on this CPU, every session of a model timed interleaved in one process (median of "
             "the rounds); speedup = dense ORT FP32 median / this median. Accuracy on the whole test split with "
             "its 95 % Clopper-Pearson interval; drops (points, dense PyTorch FP32 − this) with paired "
             "class-stratified bootstrap 95 % intervals over the same test images; worst class = largest "
             "sensitivity drop, with that class's interval. max|Δprob|: against the PyTorch model.", ""]
    for run in doc["runs"]:
        ref = run["dense_torch_fp32"]
        lines += [f"## {run['label']} ({run['arch']}, {run['dataset']}, {run['input_shape'][1]} px)", "",
                  f"Checkpoint `{run['checkpoint']}` sha256 `{(run['checkpoint_sha256'] or '')[:16]}…`; "
                  f"PyTorch FP32 test accuracy {ref['accuracy']:.4f} {_ci(ref['accuracy_ci'])} (n={ref['n']}); "
                  f"INT8 calibrated on {run['n_calib']} train images (seed {run['seed']}); {run['threads']} "
                  f"thread(s), {run['repeats']} timed rounds, load average {run['load_average']}.", "",
                  "| runtime | ms (median) | speedup vs dense ORT FP32 | accuracy [95 % CI] (n) | accuracy drop "
                  "pts [CI] | worst sensitivity drop pts [CI] (class) | max\\|Δprob\\| | MB |",
                  "|---|---:|---:|---|---|---|---:|---:|"]
        for col, c in run["columns"].items():
            if "error" in c:
                lines.append(f"| {LABELS.get(col, col)} | not exported: {c['error'][:200]} | | | | | | |")
                continue
            d, t = c["vs_dense_fp32"], c["test"]
            lines.append(
                f"| {LABELS.get(col, col)} | {c['latency_ms']['median_ms']:.3f} | "
                f"×{c['speedup']['vs_dense_ort_fp32']:.2f} | {t['accuracy']:.4f} {_ci(t['accuracy_ci'])} ({t['n']}) | "
                f"{d['accuracy_drop_pts']:+.2f} {_ci(d['accuracy_drop_ci_pts'], digits=2)} | "
                f"{d['worst_sensitivity_drop_pts']:+.2f} {_ci(d['worst_sensitivity_drop_ci_pts'], digits=2)} "
                f"({d['worst_class']}) | {c['vs_torch']['max_abs_prob']:.1e} | {c['size_mb']:.1f} |")
        lines.append("")
    return "\n".join(lines)


def write(doc: dict[str, Any], out: Path) -> None:
    from toolchain.atomic import atomic_file, ensure_writable_dir

    ensure_writable_dir(out, "--out")
    with atomic_file(out / "quant_only.json", "w") as fh:
        json.dump(doc, fh, indent=1)
    with atomic_file(out / "quant_only.md", "w") as fh:
        fh.write(to_markdown(doc))


def _pair(text: str) -> tuple[str, str]:
    import argparse

    label, sep, path = text.partition("=")
    if not sep or not label or not path:
        raise argparse.ArgumentTypeError(f"expected LABEL=PATH, got {text!r}")
    return label, path


@study("quant_only", outputs=("quant_only.json", "quant_only.md"))
def main(argv: list[str] | None = None) -> int:
    import subprocess

    from toolchain.models import resolve_checkpoint

    p = StudyParser("quant_only", __doc__)
    p.add_argument("--checkpoint", type=_pair, action="append", required=True,
                   help="LABEL=PATH of a dense checkpoint (repeatable)")
    p.add_argument("--calib-size", type=int, default=256, help="train images that calibrate INT8")
    p.add_argument("--seed", type=int, default=0, help="picks the calibration images")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads of every runtime")
    p.add_argument("--repeats", type=int, default=100, help="timed batch-1 rounds")
    p.add_out()
    args = p.parse_args(argv)
    if args.calib_size < 1 or args.threads < 1 or args.repeats < 2:
        p.error("--calib-size and --threads must be >= 1, --repeats >= 2")
    checkpoints = [(label, resolve_checkpoint(path)) for label, path in args.checkpoint]  # fail before minutes of work
    started = time.strftime("%Y-%m-%dT%H:%M:%S")

    def log(msg: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)

    runs = [measure(label, str(path), args, log) for label, path in checkpoints]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=os.path.dirname(__file__)).stdout.strip()
    doc = {"command": command_line("quant_only", argv), "commit": commit, "started": started, "runs": runs}
    write(doc, Path(args.out))
    log(f"wrote {Path(args.out) / 'quant_only.json'}")
    return 0
