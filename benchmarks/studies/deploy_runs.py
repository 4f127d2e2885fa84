"""End-to-end deploy runs on the baseline checkpoints: gates, parity, size, fidelity per model and target.

    medprune study deploy_runs [--out dist/deploy_runs]

Runs ``medprune deploy --json`` (as a user would, so benchmarks never imports the later ``devices``
stage) for each recipe below on the PneumoniaMNIST baseline checkpoints listed in
``benchmarks/results/baselines.json``; deploy's stage cache makes a rerun cheap. Writes
``benchmarks/results/deploy_runs.{json,md}``.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time

from toolchain.atomic import atomic_file

from .registry import RESULTS, StudyParser, study

RECIPES = [
    {"model": "vgg19", "target": "cpu", "ratio": "auto"},
    {"model": "vgg19", "target": "jetson", "ratio": "auto"},
    {"model": "resnet50", "target": "x86-edge", "ratio": "0.5"},
    {"model": "vit_b16", "target": "cpu", "ratio": "0.5"},
]


def checkpoints() -> dict[str, str]:
    doc = json.loads((RESULTS / "baselines.json").read_text())
    runs = doc["runs"] if isinstance(doc, dict) else doc
    return {r["model"]: r["checkpoint"] for r in runs if r.get("data", r.get("dataset", "")).startswith("pneumonia")}


def run(recipe: dict, ckpt: str, out: str) -> dict:
    cmd = [sys.executable, "-m", "toolchain.cli", "deploy", "--checkpoint", ckpt, "--target", recipe["target"],
           "--ratio", recipe["ratio"], "--out", out, "--json"]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    row = {"recipe": recipe, "command": shlex.join(["medprune", *cmd[3:]]), "rc": res.returncode,
           "wall_s": round(time.perf_counter() - t0, 1)}
    if res.returncode == 0:
        row["summary"] = json.loads(res.stdout)
    else:
        row["error"] = (res.stderr.strip().splitlines() or ["?"])[-1]
    return row


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def _pct_ci(m: dict, key: str) -> str:
    """``93.1 [91.0, 95.0]`` (percent, 95 % interval) of figure ``key`` in metrics ``m``."""
    ci = m.get(f"{key}_ci")
    return _pct(m.get(key)) + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else "")


def markdown(rows: list[dict]) -> str:
    lines = ["# Deploy runs on the baseline checkpoints (PneumoniaMNIST test split)", "",
             "Command: `medprune study deploy_runs` (each row's own command below; stages are cached).", "",
             "| model | target | ratio | test n | acc dense → deployed [95 % CI] | acc drop (pts) [95 % CI] | "
             "max sens. drop (pts) | params ÷ | MACs ÷ | "
             "export parity max\\|Δlogit\\| | fidelity ρ | ECE dense → pruned → deployed (T) | package |",
             "|---|---|---:|---:|---|---|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        rec = r["recipe"]
        if r["rc"] != 0:
            lines.append(f"| {rec['model']} | {rec['target']} | {rec['ratio']} | refused: {r['error']} ||||||||||")
            continue
        s = r["summary"]
        d, p = s["dense"], s["pruned"]
        gates = s.get("gates") or {}
        drops = list((gates.get("sensitivity_drop_pts") or {0: float("nan")}).values())
        acc_ci = gates.get("accuracy_drop_ci_pts") or [float("nan")] * 2
        dep, cal = s.get("deployed") or p, s.get("calibration") or {}
        ver = s.get("export_verification") or {}
        fid = s.get("fidelity") or {}
        cmp = s.get("compare") or {}
        ece = (f"{d['ece']:.3f} → {p['ece']:.3f} → {dep['ece']:.3f} (T {cal.get('temperature', 1.0):.2f})")
        lines.append(
            f"| {rec['model']} | {rec['target']} | {s['ratio']:.2f} | {d.get('n', '?')} | "
            f"{_pct_ci(d, 'accuracy')} → {_pct_ci(dep, 'accuracy')} | "
            f"{gates.get('accuracy_drop_pts', float('nan')):.2f} [{acc_ci[0]:.2f}, {acc_ci[1]:.2f}] | "
            f"{max(drops):.2f} | {cmp.get('params', {}).get('ratio', 0):.2f} | {cmp.get('macs', {}).get('ratio', 0):.2f} | "
            f"{ver.get('max_abs_logit', float('nan')):.1e} ({ver.get('backend', '?')}) | "
            f"{fid.get('spearman_mean', float('nan')):.3f} | {ece} | `{s['name']}` |")
    lines += ["", "Commands:", ""] + [f"- `{r['command']}` ({r['wall_s']} s)" for r in rows]
    lines += ["", "Sensitivity drop: largest per-class drop on test (positive = worse). `auto` ratios are the "
              "largest passing the lossless rule on the whole val split (upper end of the 95 % paired bootstrap "
              "interval of each drop within the tolerances); test is read once, afterwards, to report and gate. "
              "Deployed = the packaged model: pruned, with the temperature fit on val folded into its classifier "
              "(same predictions as pruned; ECE on test)."]
    return "\n".join(lines) + "\n"


@study("deploy_runs", outputs=("deploy_runs.json", "deploy_runs.md"))
def main(argv: list[str] | None = None) -> None:
    ap = StudyParser("deploy_runs", __doc__)
    ap.add_argument("--out", default="dist/deploy_runs")
    args = ap.parse_args(argv)
    ckpts = checkpoints()
    rows = []
    for recipe in RECIPES:
        if recipe["model"] not in ckpts:
            print(f"skip {recipe['model']}: no baseline checkpoint", flush=True)
            continue
        print(f"deploy {recipe} …", flush=True)
        rows.append(run(recipe, ckpts[recipe["model"]], args.out))
        print(f"  rc {rows[-1]['rc']} in {rows[-1]['wall_s']} s", flush=True)
    with atomic_file(RESULTS / "deploy_runs.json", "w") as fh:
        fh.write(json.dumps(rows, indent=1, default=str))
    with atomic_file(RESULTS / "deploy_runs.md", "w") as fh:
        fh.write(markdown(rows))
    print(f"wrote {RESULTS / 'deploy_runs.md'}")
