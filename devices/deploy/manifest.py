"""What the package says about itself: ``manifest.json`` (facts, machine-readable) and ``MODEL_CARD.md``
(the same facts for a reader, rendered from ``templates/model_card.md``)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from string import Template
from typing import Any

CARD_TEMPLATE = Path(__file__).with_name("templates") / "model_card.md"
RUNTIME_LINES = {
    "tensorrt": "On the device: `./build_engine.sh` (trtexec builds a TensorRT engine from the ONNX file) "
                "then `./run_trt.sh` for latency; `python3 predict.py IMAGE` runs the ONNX file with onnxruntime.",
    "openvino": "`python3 predict.py IMAGE` runs the OpenVINO IR (`--runtime onnxruntime` for the ONNX file).",
}
DEFAULT_RUNTIME_LINE = "`python3 predict.py IMAGE` runs the ONNX file with onnxruntime."


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return (out.stdout.strip() or None) if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def build_manifest(cfg, profile, ctx, *, exported: str, pr, exp, bench, fid: dict | None, cal: dict | None,
                   gates: dict, gate_check: dict | None, training: dict | None, reports: dict) -> dict:
    """Everything reproducible about the package (package-level fields are added by export.package)."""
    from toolchain import __version__

    dense, pruned = pr.data["dense"], pr.data["pruned"]
    summary = bench.data["summary"]
    return {
        "runtime_target": profile.name,
        "precision": cfg.precision,
        "exported_precision": exported,
        "input": {"name": "image", "shape": [None, int(ctx.meta["in_chans"]), int(ctx.meta["img_size"]),
                                             int(ctx.meta["img_size"])], "dtype": "float32", "layout": "NCHW"},
        "metrics": {"split": "test", "dense": dense, "pruned": pruned, "gates": gates,
                    "ratio_gate_check": gate_check,
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
                      "kind": "measured" if summary["measured"] else "predicted",
                      "note": "latency/throughput/memory are in reports/ (measured on the build machine "
                              "or predicted for an absent device); they are not reproducible byte for byte"},
        "dataset": {"name": ctx.ds.name, "fingerprint": ctx.ds.fingerprint,
                    "source": Path(str(getattr(ctx.ds, "source", "") or "")).name or None},
        "training": training,
        "source_checkpoint_sha256": ctx.sha256,
        "seeds": {"train": (training or {}).get("seed", cfg.seed), "sampling": cfg.seed,
                  "fidelity": cfg.seed, "export_calibration": cfg.seed},
        # what the training images looked like: medprune predict --package warns about inputs far from it
        "input_profile": ctx.meta.get("input_profile"),
        "medprune": {"version": __version__, "git_commit": git_commit()},
        "reproducibility": "same seed and inputs → identical files except reports/*; in manifest.json only "
                           "files['reports/…'] and manifest_sha256 differ",
    }


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def _metric_rows(d: dict, p: dict, dep: dict, cal: dict) -> list[str]:
    rows = ["| metric | dense | pruned |", "|---|---:|---:|"]
    for key in ("accuracy", "balanced_accuracy", "auc", "ece"):
        rows.append(f"| {key} | {_fmt(d.get(key))} | {_fmt(p.get(key))} |")
    if cal.get("temperature", 1.0) != 1.0 or "fit_split" in cal:
        rows.append(f"| ece, deployed (temperature {cal['temperature']:.3f}) | | {_fmt(dep.get('ece'))} |")
    for cls in d.get("per_class", {}):
        for key in ("sensitivity", "specificity"):
            rows.append(f"| {key} {cls} | {_fmt(d['per_class'][cls].get(key))} | "
                        f"{_fmt(p['per_class'][cls].get(key))} |")
    return rows


def _calibration_line(cal: dict) -> str:
    if "fit_split" not in cal:
        return "Probabilities are not recalibrated after pruning (--no-calibrate)."
    if not cal.get("applied", True):
        return (f"A temperature fit on the {cal['fit_split']} split (T = {cal['fitted_temperature']:.3f}) did not "
                "lower that split's ECE, so the pruned model's probabilities are kept (T = 1); recalibrate for a "
                "new site.")
    return (f"Probabilities are temperature-scaled (T = {cal['temperature']:.3f}, fit on the {cal['fit_split']} "
            "split, folded into the classifier; predictions are unchanged); recalibrate for a new site.")


def model_card(cfg, ctx, manifest: dict, profile) -> str:
    """MODEL_CARD.md: ``templates/model_card.md`` filled from the manifest."""
    metrics = manifest["metrics"]
    d, p = metrics["dense"], metrics["pruned"]
    cal = manifest.get("calibration") or {}
    fid = manifest.get("explanation_fidelity") or {}
    gates = metrics.get("gates") or {}
    check = metrics.get("ratio_gate_check") or {}
    cmp = manifest["pruning"].get("compare") or {}
    train = manifest.get("training") or {}
    backoff = ""
    if check.get("backed_off"):
        backoff = (f" The lossless search on val chose {check['val_ratio']:.2f}; the test gate refused it and "
                   f"the ratio was lowered to {check['ratio']:.2f}, so the test metrics below are gated, not "
                   "fully held out.")
    fidelity_line = (f"Explanation fidelity (LRP heatmaps, pruned vs dense, {fid.get('images')} test images): "
                     f"Spearman {_fmt(fid.get('spearman_mean'))}, top-10% IoU {_fmt(fid.get('iou10_mean'))}."
                     if fid else "Explanation fidelity: not measured.")
    gates_line = (f"Clinical gates passed: accuracy drop {gates.get('accuracy_drop_pts', 0):.2f} pts "
                  f"(allowed {gates.get('tolerance_pts')}), worst per-class sensitivity drop "
                  f"{max((gates.get('sensitivity_drop_pts') or {0: 0}).values()):.2f} pts (allowed "
                  f"{gates.get('sens_tolerance_pts')}).")
    return Template(CARD_TEMPLATE.read_text()).substitute(
        model=cfg.model, dataset=ctx.ds.name, target=profile.name, runtime=profile.runtime,
        precision=manifest["precision"], classes=", ".join(ctx.ds.class_names),
        runtime_line=RUNTIME_LINES.get(profile.runtime, DEFAULT_RUNTIME_LINE),
        fingerprint=ctx.ds.fingerprint[:16], img_size=ctx.meta["img_size"], in_chans=ctx.meta["in_chans"],
        epochs=train.get("epochs", cfg.epochs), seed=train.get("seed", cfg.seed), criterion=cfg.criterion,
        n_per_class=cfg.n_per_class, sampling=cfg.sampling, ratio_pct=f"{manifest['pruning']['ratio']:.0%}",
        granularity=cfg.granularity, ratio_search=manifest["pruning"]["ratio_search"], backoff=backoff,
        params_dense=cmp.get("params", {}).get("dense", "?"), params_pruned=cmp.get("params", {}).get("pruned", "?"),
        macs_dense=cmp.get("macs", {}).get("dense", "?"), macs_pruned=cmp.get("macs", {}).get("pruned", "?"),
        metrics_rows="\n".join(_metric_rows(d, p, metrics.get("deployed") or p, cal)),
        gates_line=gates_line, fidelity_line=fidelity_line, calibration_line=_calibration_line(cal))
