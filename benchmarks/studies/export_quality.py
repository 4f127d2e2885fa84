"""Export quality: parity, INT8 accuracy change and batch-1 latency per backend and precision.

For every checkpoint (VGG19 / ResNet50 / ViT-B/16, dense and pruned, found in
benchmarks/results/baselines.json and removal.json, or passed with ``--checkpoint LABEL=PATH``) on the
PyTorch model's test split (the whole split by default):

* one FP32 ONNX export (dynamo, ``--simplify auto``) reused for every other artifact; node counts and
  ORT latency with and without onnxslim;
* ONNX Runtime fp32/fp16/int8 and OpenVINO fp32/fp16/int8, each against the PyTorch logits:
  max|Δlogit|, max|Δprob|, top-1 agreement, accuracy and accuracy change, with the gate of
  export.verify.TOLERANCES applied (a failing gate is reported here, not raised);
* batch-1 latency of PyTorch eager and every artifact, measured round-robin in one process with the
  same thread count, so the ratios (INT8 vs FP32 per runtime) come from the same run.

Writes benchmarks/results/export_quality.{json,md,png}.
    medprune study export_quality [--checkpoint vgg19-dense=path.safetensors ...] [--runs 30]
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from .registry import RESULTS, StudyParser, command_line, study

COMBOS = [("onnx", "fp32"), ("onnx", "fp16"), ("onnx", "int8"),
          ("openvino", "fp32"), ("openvino", "fp16"), ("openvino", "int8")]
BACKEND = {"onnx": "onnxruntime", "openvino": "openvino"}
PERMISSIVE = {p: {} for p in ("fp32", "fp16", "int8")}  # measure everything; the real gate is applied after


def _find_checkpoints(obj: Any, found: dict[str, str], label: str = "") -> None:
    """Every ``*.safetensors`` path in a results JSON, labelled by the keys leading to it."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            _find_checkpoints(v, found, f"{label}/{k}" if label else str(k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            name = v.get("name") or v.get("model") or v.get("arch") if isinstance(v, dict) else None
            _find_checkpoints(v, found, f"{label}/{name or i}")
    elif isinstance(obj, str) and obj.endswith(".safetensors") and Path(obj).exists():
        found.setdefault(obj, label)


def discover() -> dict[str, Path]:
    """``{label: checkpoint}`` from the baselines and removal results, labelled ``arch-dense|pruned``."""
    from toolchain.models import checkpoint_meta

    found: dict[str, str] = {}
    for name in ("baselines.json", "removal.json"):
        path = RESULTS / name
        if path.exists():
            _find_checkpoints(json.loads(path.read_text()), found)
    out: dict[str, Path] = {}
    for ckpt in found:
        meta = checkpoint_meta(ckpt)
        label = f"{meta['arch']}-{'pruned' if meta.get('pruning') else 'dense'}"
        n = 2
        while label in out:
            label, n = f"{label.rsplit('#', 1)[0]}#{n}", n + 1
        out[label] = Path(ckpt)
    return out


def _latency(runners: dict[str, Any], x1: np.ndarray, runs: int, rounds: int = 3, warmup: int = 3) -> dict[str, dict]:
    """Median/p90 batch-1 ms of every runner. Runners take turns in blocks over ``rounds`` rounds, so slow
    drifts in machine load hit all of them alike, while a runtime's spinning worker threads do not
    steal the cores from the next runner's timed call (as they would if single calls alternated)."""
    samples: dict[str, list[float]] = {k: [] for k in runners}
    per_round = max(1, runs // rounds)
    for _ in range(rounds):
        for k, run in runners.items():
            for _ in range(warmup):
                run(x1)
            for _ in range(per_round):
                t = time.perf_counter()
                run(x1)
                samples[k].append((time.perf_counter() - t) * 1e3)
    return {k: {"p50_ms": float(np.median(v)), "p90_ms": float(np.percentile(v, 90)), "n": len(v)}
            for k, v in samples.items()}


def bench_checkpoint(label: str, ckpt: Path, *, calib_size: int, eval_size: int, runs: int, threads: int,
                     work: Path, log) -> dict[str, Any]:
    import torch

    from export.exporter import export_model, load_images
    from export.onnx import export_onnx
    from export.verify import gate, runner_for, torch_runner
    from toolchain.models import count_params, load_checkpoint, read_sidecar

    torch.set_num_threads(threads)
    model, meta = load_checkpoint(ckpt)
    _, sidecar = read_sidecar(ckpt)
    arrays = load_images(meta, calib_size=calib_size, eval_size=eval_size)
    x, y = arrays["eval_x"], arrays["eval_y"]
    entry: dict[str, Any] = {"label": label, "checkpoint": str(ckpt), "checkpoint_sha256": sidecar["weights_sha256"],
                             "arch": meta["arch"],
                             "pruned": bool(meta.get("pruning")), "params": count_params(model),
                             "img_size": meta.get("img_size"), "n_test": int(len(y)), "calib_size": calib_size}
    out = work / label
    shape = (int(meta["in_chans"]), int(meta["img_size"]), int(meta["img_size"]))
    t = time.perf_counter()
    raw = export_onnx(model, out / "raw.onnx", shape, simplify_mode="off")
    entry["onnx_export_s"] = time.perf_counter() - t
    slim = export_onnx(model, out / "slim.onnx", shape, simplify_mode="on")
    entry["simplify"] = {"nodes_raw": raw["nodes"], "nodes_slim": slim["nodes"], "exporter": raw["exporter"]}
    log(f"{label}: exported ({raw['nodes']} nodes, {slim['nodes']} after onnxslim)")

    base = None
    results, paths = [], {}
    for fmt, precision in COMBOS:
        t = time.perf_counter()
        try:
            res = export_model(model, meta, out, fmt, precision, name="m", eval_x=x, eval_y=y,
                               calib_x=arrays.get("calib"), base_onnx=base, tolerances=PERMISSIVE,
                               source_sha256=sidecar.get("weights_sha256"))
        except Exception as exc:  # report the failure (it is a result), keep benchmarking the rest
            results.append({"backend": BACKEND[fmt], "precision": precision, "error": f"{type(exc).__name__}: {exc}"})
            log(f"{label}: {fmt} {precision} FAILED: {exc}")
            continue
        if (fmt, precision) == ("onnx", "fp32"):
            base = res.path
        v = dict(res.verification)
        v["failures"] = gate(precision, v)
        v["passed"] = not v["failures"]
        v["export_s"] = time.perf_counter() - t
        v["size_mb"] = sum(f.stat().st_size for f in res.files) / 1e6
        results.append(v)
        paths[f"{BACKEND[fmt]} {precision}"] = (res.path, precision)
        log(f"{label}: {fmt} {precision}: max|Δlogit| {v['max_abs_logit']:.2e}, agree {v['top1_agreement']:.2%}, "
            f"acc {v['reference_accuracy']:.4f}→{v['accuracy']:.4f} {'PASS' if v['passed'] else 'FAIL'}")
    entry["parity"] = results

    runners = {"torch fp32": torch_runner(model)}
    for name, (path, precision) in paths.items():
        runners[name] = runner_for(path, precision, threads)
    if slim["nodes"] != raw["nodes"]:  # otherwise the two graphs are identical: nothing to compare
        runners["onnxruntime fp32 raw"] = runner_for(out / "raw.onnx", "fp32", threads)
        runners["onnxruntime fp32 onnxslim"] = runner_for(out / "slim.onnx", "fp32", threads)
    lat = _latency(runners, x[:1], runs)
    entry["latency"] = lat
    entry["latency_ratio"] = {
        f"{b} int8/fp32": lat[f"{b} int8"]["p50_ms"] / lat[f"{b} fp32"]["p50_ms"]
        for b in BACKEND.values() if f"{b} int8" in lat and f"{b} fp32" in lat}
    entry["latency_ratio"].update({
        f"{b} fp16/fp32": lat[f"{b} fp16"]["p50_ms"] / lat[f"{b} fp32"]["p50_ms"]
        for b in BACKEND.values() if f"{b} fp16" in lat and f"{b} fp32" in lat})
    if "onnxruntime fp32 raw" in lat:
        entry["latency_ratio"]["onnxruntime onnxslim/raw"] = (lat["onnxruntime fp32 onnxslim"]["p50_ms"]
                                                              / lat["onnxruntime fp32 raw"]["p50_ms"])
    log(f"{label}: latency " + ", ".join(f"{k} {v['p50_ms']:.2f} ms" for k, v in lat.items()))
    return entry


def to_markdown(report: dict) -> str:
    lines = ["# Export quality", "", f"Command: `{report['command']}`", "",
             f"Machine: {report['machine'].get('cpu_model')} ({report['threads']} threads); "
             f"{json.dumps(report['machine'].get('versions', {}))}", "",
             f"Tolerances (export.verify.TOLERANCES): `{json.dumps(report['tolerances'])}`", ""]
    if not report["models"]:
        lines += ["No checkpoints found (benchmarks/results/baselines.json / removal.json, or --checkpoint).", ""]
    for m in report["models"]:
        lines += [f"## {m['label']}", "",
                  f"`{m['checkpoint']}`: {m['params']:,} parameters, {m['img_size']} px, "
                  f"{m['n_test']} test images, INT8 calibrated on {m['calib_size']} train images.", "",
                  f"ONNX graph: {m['simplify']['nodes_raw']} nodes from the {m['simplify']['exporter']} exporter, "
                  f"{m['simplify']['nodes_slim']} after onnxslim.", "",
                  "| backend | precision | max abs Δlogit | max abs Δprob | top-1 agreement | accuracy torch → export | Δacc (pt) | gate | p50 ms (batch 1) | size MB |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        lat = m.get("latency", {})
        if "torch fp32" in lat:
            lines.append(f"| torch | fp32 | – | – | – | – | – | – | {lat['torch fp32']['p50_ms']:.2f} | – |")
        for r in m["parity"]:
            if "error" in r:
                lines.append(f"| {r['backend']} | {r['precision']} | error: {r['error'][:120]} | | | | | FAIL | | |")
                continue
            key = f"{r['backend']} {r['precision']}"
            gate = "PASS" if r["passed"] else "FAIL: " + "; ".join(r["failures"])
            lines.append(
                f"| {r['backend']} | {r['precision']} | {r['max_abs_logit']:.2e} | {r['max_abs_prob']:.2e} | "
                f"{r['top1_agreement']:.2%} | {r['reference_accuracy']:.4f} → {r['accuracy']:.4f} | "
                f"{-100 * r['accuracy_drop']:+.2f} | {gate} | {lat.get(key, {}).get('p50_ms', float('nan')):.2f} | "
                f"{r['size_mb']:.1f} |")
        for variant in ("raw", "onnxslim"):
            if f"onnxruntime fp32 {variant}" in lat:
                lines.append(f"| onnxruntime | fp32, {variant} graph | | | | | | | "
                             f"{lat[f'onnxruntime fp32 {variant}']['p50_ms']:.2f} | |")
        ratios = ", ".join(f"{k} = {v:.2f}" for k, v in m.get("latency_ratio", {}).items())
        lines += ["", f"Latency ratios (same run, p50): {ratios}", ""]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> Path | None:
    if not report["models"]:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["torch fp32"] + [f"{BACKEND[f]} {p}" for f, p in COMBOS]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    width = 0.8 / len(report["models"])
    for i, m in enumerate(report["models"]):
        lat = [m["latency"].get(k, {}).get("p50_ms", np.nan) for k in keys]
        axes[0].bar(np.arange(len(keys)) + i * width, lat, width, label=m["label"])
        drops = {f"{r['backend']} {r['precision']}": -100 * r["accuracy_drop"] for r in m["parity"] if "error" not in r}
        axes[1].bar(np.arange(len(keys) - 1) + i * width, [drops.get(k, np.nan) for k in keys[1:]], width,
                    label=m["label"])
    axes[0].set_xticks(np.arange(len(keys)) + 0.4 - width / 2, keys, rotation=30, ha="right")
    axes[0].set_ylabel("batch-1 latency p50 (ms)")
    axes[0].set_yscale("log")
    axes[1].set_xticks(np.arange(len(keys) - 1) + 0.4 - width / 2, keys[1:], rotation=30, ha="right")
    axes[1].set_ylabel("accuracy change vs PyTorch (pt)")
    axes[1].axhline(-1.0, color="red", linestyle="--", linewidth=1, label="INT8 gate (-1 pt)")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


@study("export_quality", outputs=("export_quality*.json", "export_quality*.md", "export_quality*.png"))  # --stem names variants
def main(argv: list[str] | None = None) -> dict:
    from rich.console import Console

    from benchmarks.harness import machine_info
    from export.verify import TOLERANCES
    from toolchain.atomic import atomic_file, atomic_path

    ap = StudyParser("export_quality", __doc__)
    ap.add_argument("--checkpoint", action="append", default=[], help="LABEL=PATH (repeatable)")
    ap.add_argument("--calib-size", type=int, default=256)
    ap.add_argument("--eval-size", type=int, default=0, help="test images (0 = the whole split)")
    ap.add_argument("--runs", type=int, default=30, help="timed batch-1 runs per artifact")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--stem", default="export_quality")
    args = ap.parse_args(argv)
    console = Console(stderr=True)
    ckpts = dict(c.split("=", 1) for c in args.checkpoint) if args.checkpoint else discover()
    report: dict[str, Any] = {
        "command": command_line("export_quality", argv),
        "machine": machine_info(), "threads": args.threads, "tolerances": TOLERANCES, "models": []}
    with tempfile.TemporaryDirectory(prefix="medprune-export-bench-") as work:
        for label, ckpt in ckpts.items():
            report["models"].append(bench_checkpoint(
                label, Path(ckpt), calib_size=args.calib_size, eval_size=args.eval_size, runs=args.runs,
                threads=args.threads, work=Path(work), log=console.print))
    args.out.mkdir(parents=True, exist_ok=True)
    with atomic_file(args.out / f"{args.stem}.json", "w") as fh:
        json.dump(report, fh, indent=1, default=str)
    with atomic_file(args.out / f"{args.stem}.md", "w") as fh:
        fh.write(to_markdown(report))
    if report["models"]:
        with atomic_path(args.out / f"{args.stem}.png") as tmp:
            plot(report, tmp)
    console.print(f"wrote {args.out / args.stem}.{{json,md,png}}")
    return report
