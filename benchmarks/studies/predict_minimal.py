"""Compare predict.py run in a minimal venv (numpy + onnxruntime + pillow only) with the toolchain.

Called by ``benchmarks/studies/predict_minimal_venv.sh`` (which builds the venv, extracts the package and runs
predict.py there); this side loads the pruned torch checkpoint the package was exported from and
computes the toolchain's own probabilities for the same image files (its image-folder decoder, torch
antialiased-bilinear preprocessing, torch model). Writes ``benchmarks/results/predict_minimal.{json,md}``.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import numpy as np

from .registry import StudyParser, study

TOLERANCE = 1e-4  # max |Δprob|: the same resize maths in numpy and torch differ by float rounding only


@study("predict_minimal", outputs=("predict_minimal.json", "predict_minimal.md"))
def main(argv: list[str] | None = None) -> int:
    from export.package import reference_predict

    ap = StudyParser("predict_minimal", __doc__)
    ap.add_argument("--deploy-json", type=Path, required=True, help="`medprune deploy --json` summary")
    ap.add_argument("--predict-json", type=Path, required=True, help="`predict.py --json` output")
    ap.add_argument("--venv-info", type=Path, required=True, help="JSON with the venv's python/packages")
    ap.add_argument("--command", default="benchmarks/studies/predict_minimal_venv.sh")
    ap.add_out()
    args = ap.parse_args(argv)

    summary = json.loads(args.deploy_json.read_text())
    predicted = json.loads(args.predict_json.read_text())
    venv = json.loads(args.venv_info.read_text())
    images = [Path(r["image"]) for r in predicted]
    want = reference_predict(summary["pruned_checkpoint"], images)
    manifest = json.loads((Path(summary["package"]) / "manifest.json").read_text())
    classes = manifest["class_names"]
    rows = []
    for r, ref in zip(predicted, want, strict=True):
        got = np.array([r["probabilities"][c] for c in classes])
        rows.append({"image": str(Path(r["image"]).relative_to(Path(r["image"]).parents[2])),
                     "predict_py": {"class": r["prediction"], "probabilities": got.tolist()},
                     "toolchain": {"class": classes[int(ref.argmax())], "probabilities": ref.tolist()},
                     "max_abs_prob_diff": float(np.abs(got - ref).max()),
                     "same_class": bool(r["prediction"] == classes[int(ref.argmax())])})
    worst = max(r["max_abs_prob_diff"] for r in rows)
    ok = all(r["same_class"] for r in rows) and worst <= TOLERANCE
    doc = {
        "command": args.command,
        "generated": time.strftime("%Y-%m-%d %H:%M:%S"),
        "host": f"{platform.node()} {platform.machine()}",
        "package": Path(summary["tarball"]).name,
        "classes": classes,
        "venv": venv,
        "tolerance_max_abs_prob": TOLERANCE,
        "max_abs_prob_diff": worst,
        "all_same_class": all(r["same_class"] for r in rows),
        "passed": ok,
        "images": rows,
        "method": "predict.py resizes with a numpy port of torch's antialiased bilinear (half-pixel centres, "
                  "triangle filter widened by the scale when shrinking, edge renormalisation) and runs the ONNX "
                  "file with onnxruntime; the toolchain decodes the file with its image-folder decoder, "
                  "preprocesses with torch and runs the pruned torch checkpoint",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "predict_minimal.json").write_text(json.dumps(doc, indent=1) + "\n")
    lines = [
        "# predict.py in a minimal venv vs the toolchain",
        "",
        f"Command: `{args.command}` ({doc['generated']}, {doc['host']})",
        "",
        f"Package `{doc['package']}`; venv `{venv.get('path')}` (Python {venv.get('python')}) with only: "
        f"{', '.join(venv.get('packages', []))}; torch importable there: {venv.get('torch_importable')}.",
        "",
        "| image | predict.py | toolchain | max abs Δprob | same class |",
        "|---|---|---|---:|:---:|",
    ]
    for r in rows:
        p, t = r["predict_py"], r["toolchain"]
        lines.append(f"| {r['image']} | {p['class']} {max(p['probabilities']):.6f} | {t['class']} "
                     f"{max(t['probabilities']):.6f} | {r['max_abs_prob_diff']:.2e} | {'yes' if r['same_class'] else 'NO'} |")
    lines += ["", f"Tolerance: max |Δprob| ≤ {TOLERANCE:.0e} and the same class for every image → "
              f"**{'PASS' if ok else 'FAIL'}** (worst {worst:.2e}).", "", doc["method"] + ".", ""]
    (args.out / "predict_minimal.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0 if ok else 1
