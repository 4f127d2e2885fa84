"""Benchmark reports: JSON (the record), Markdown and HTML (for people), PNG plots.

JSON schema ``medprune.bench/1`` (``write_report`` fills ``schema`` and ``created``)::

    {
      "schema": "medprune.bench/1",
      "created": ISO-8601 UTC time,
      "command": the exact command line that produced the report,
      "machine": benchmarks.harness.machine_info() (CPU model, cores, ISA flags, memory, library versions),
      "target": devices profile as a dict, or null,
      "models": [                         # one per benchmarked model, all MEASURED on this machine
        {"name", "model_path", "runtime", "runtime_version", "runtime_settings", "precision", "threads",
         "input_shape": [C, H, W], "size_mb", "params", "load_s", "warmup",
         "latency_ms": {"mean", "std", "min", "p50", "p90", "p99", "max", "n", "samples": [...]},  # batch 1
         "throughput": {"batch", "runs", "images_per_s", "batch_latency_ms"},
         "memory": {"peak_rss_mb", "import_rss_mb", "model_rss_mb", "load_s", "method"} | null,
         "accuracy": toolchain.metrics.compute_metrics(...) + {"dataset", "split", "fingerprint"} | null,
         "label": "measured",
         # optional, added by callers:
         "group": e.g. "vgg19@64", "variant": "dense" | "pruned-50%", "macs": int,
         "cross_check": {"command", "median_ms", "average_ms", "throughput_fps", "harness_p50_ms",
                         "ratio_harness_over_benchmark_app"}}
      ],
      "comparisons": [{"group", "dense", "pruned", "mac_ratio", "speedup_p50", "size_ratio", "rss_ratio",
                       "param_ratio"}],     # ratios are dense / pruned
      "calibration": devices.roofline.Calibration.to_dict() | null,
      "predictions": [{"model", "target", "latency_ms", "label": "predicted", ...}],   # never measured
      "device_commands": {target: [shell commands to run on the device]},
      "notes": [free text]
    }
"""

from __future__ import annotations

import datetime as _dt
import html
import json
from pathlib import Path

import numpy as np

from toolchain.atomic import atomic_file, atomic_path

SCHEMA = "medprune.bench/1"


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1e4 else f"{v:,.0f}"
    return str(v)


def compare(dense: dict, pruned: dict, group: str | None = None) -> dict:
    """Dense-over-pruned ratios of two measured model entries (>1 means the pruned one is smaller/faster)."""
    def ratio(a, b):
        return a / b if a and b else None

    mem = lambda m: (m.get("memory") or {}).get("peak_rss_mb")  # noqa: E731
    return {"group": group or dense.get("group"), "dense": dense["name"], "pruned": pruned["name"],
            "mac_ratio": ratio(dense.get("macs"), pruned.get("macs")),
            "speedup_p50": ratio(dense["latency_ms"]["p50"], pruned["latency_ms"]["p50"]),
            "throughput_ratio": ratio(pruned["throughput"]["images_per_s"], dense["throughput"]["images_per_s"]),
            "size_ratio": ratio(dense.get("size_mb"), pruned.get("size_mb")),
            "rss_ratio": ratio(mem(dense), mem(pruned)),
            "param_ratio": ratio(dense.get("params"), pruned.get("params"))}


# ---------------------------------------------------------------- plots

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    _plt().close(fig)
    return path


def plot_latency(models: list[dict], path: Path) -> Path | None:
    models = [m for m in models if m.get("latency_ms", {}).get("samples")]
    if not models:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(models) + 2), 4))
    ax.boxplot([m["latency_ms"]["samples"] for m in models], showfliers=True)
    ax.set_xticks(range(1, len(models) + 1), [f"{m['name']}\n{m['runtime']}" for m in models], rotation=30,
                  ha="right", fontsize=8)
    ax.set_ylabel("batch-1 latency (ms)")
    ax.set_yscale("log")
    ax.set_title("Measured latency distribution (batch 1)")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated (lower latency AND higher accuracy), by increasing latency."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -np.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def plot_pareto(models: list[dict], path: Path) -> Path | None:
    rows = [m for m in models if m.get("accuracy")]
    if not rows:
        return None
    plt = _plt()
    pts = [(m["latency_ms"]["p50"], m["accuracy"]["accuracy"]) for m in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    for m, (x, y) in zip(rows, pts, strict=True):
        pruned = "dense" not in str(m.get("variant", "dense"))
        ax.scatter(x, y, marker="o" if pruned else "s", s=40)
        ax.annotate(m.get("variant") or m["name"], (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
    front = pareto_front(pts)
    ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "k--", lw=1, label="Pareto front")
    ax.set_xscale("log")
    ax.set_xlabel("batch-1 latency p50 (ms, measured)")
    ax.set_ylabel("test accuracy (same runtime)")
    ax.set_title("Accuracy vs latency (squares: dense, circles: pruned)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_speedup(comparisons: list[dict], path: Path) -> Path | None:
    rows = [c for c in comparisons if c.get("mac_ratio") and c.get("speedup_p50")]
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 4))
    xs = [c["mac_ratio"] for c in rows]
    ys = [c["speedup_p50"] for c in rows]
    ax.scatter(xs, ys)
    for c, x, y in zip(rows, xs, ys, strict=True):
        ax.annotate(c.get("group") or c["pruned"], (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
    hi = max(max(xs), max(ys)) * 1.15
    ax.plot([1, hi], [1, hi], "k--", lw=1, label="speedup = MAC ratio")
    ax.set_xlim(0.9, hi)
    ax.set_ylim(0.5, hi)
    ax.set_xlabel("MAC ratio (dense / pruned)")
    ax.set_ylabel("measured batch-1 speedup (p50)")
    ax.set_title("Measured speedup vs MAC reduction")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_calibration(calibration: dict | None, path: Path) -> Path | None:
    if not calibration or not calibration.get("points"):
        return None
    plt = _plt()
    pts = calibration["points"]
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter([p["measured_ms"] for p in pts], [p["predicted_ms"] for p in pts], label="fit")
    if all("loo_predicted_ms" in p for p in pts):
        ax.scatter([p["measured_ms"] for p in pts], [p["loo_predicted_ms"] for p in pts], marker="x",
                   label="leave-one-out")
    lo = min(min(p["measured_ms"], p["predicted_ms"]) for p in pts) * 0.7
    hi = max(max(p["measured_ms"], p["predicted_ms"]) for p in pts) * 1.4
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("measured latency (ms, ORT on this machine)")
    ax.set_ylabel("roofline prediction (ms)")
    loo = calibration.get("loo_mape")
    ax.set_title(f"Roofline calibration: MAPE {calibration['mape']:.1f}%"
                 + (f", LOO {loo:.1f}%" if loo is not None else ""), fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


# ---------------------------------------------------------------- tables

def _ci(m: dict, key: str) -> str:
    """``value [lo, hi]`` (95 % interval) of figure ``key`` of a ``compute_metrics`` dict, or the bare value."""
    ci = m.get(f"{key}_ci")
    return _fmt(m.get(key)) + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def _model_rows(models: list[dict]) -> tuple[list[str], list[list[str]]]:
    head = ["model", "runtime", "thr", "p50 ms", "p90 ms", "p99 ms", "mean ms", "max ms", "img/s (batch)",
            "peak RSS MB", "size MB", "MMACs", "n", "acc [95% CI]", "AUC [95% CI]", "sens/spec [95% CI] (n)"]
    rows = []
    for m in models:
        lat, acc = m["latency_ms"], m.get("accuracy") or {}
        sens = ""
        if acc.get("per_class"):
            sens = "; ".join(f"{k}: {_ci(v, 'sensitivity')} (n={_fmt(v.get('support'))}) / {_ci(v, 'specificity')} "
                             f"(n={_fmt(v.get('n_negative'))})" for k, v in acc["per_class"].items())
        rows.append([m["name"], m["runtime"], str(m["threads"]), _fmt(lat["p50"]), _fmt(lat["p90"]), _fmt(lat["p99"]),
                     _fmt(lat["mean"]), _fmt(lat["max"]),
                     f"{_fmt(m['throughput']['images_per_s'])} ({m['throughput']['batch']})",
                     _fmt((m.get("memory") or {}).get("peak_rss_mb")), _fmt(m.get("size_mb")),
                     _fmt(m["macs"] / 1e6 if m.get("macs") else None), _fmt(acc.get("n")), _ci(acc, "accuracy"),
                     _ci(acc, "auc"), sens or "–"])
    return head, rows


def _tables(report: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    tables = []
    if report.get("models"):
        tables.append(("Measured on this machine", *_model_rows(report["models"])))
    if report.get("comparisons"):
        head = ["group", "dense", "pruned", "MAC ratio", "speedup p50", "throughput ratio", "size ratio",
                "RSS ratio", "param ratio"]
        rows = [[_fmt(c.get("group")), c["dense"], c["pruned"], _fmt(c.get("mac_ratio")), _fmt(c.get("speedup_p50")),
                 _fmt(c.get("throughput_ratio")), _fmt(c.get("size_ratio")), _fmt(c.get("rss_ratio")),
                 _fmt(c.get("param_ratio"))] for c in report["comparisons"]]
        tables.append(("Dense vs pruned (ratios dense / pruned, measured)", head, rows))
    checks = [m for m in report.get("models", []) if m.get("cross_check")]
    if checks:
        head = ["model", "harness p50 ms", "benchmark_app median ms", "ratio", "benchmark_app FPS", "command"]
        rows = [[m["name"], _fmt(m["latency_ms"]["p50"]),
                 _fmt(m["cross_check"].get("median_ms")) if not m["cross_check"].get("error")
                 else f"failed: {m['cross_check']['error']}",
                 _fmt(m["cross_check"].get("ratio_harness_over_benchmark_app")),
                 _fmt(m["cross_check"].get("throughput_fps")), f"`{m['cross_check']['command']}`"] for m in checks]
        tables.append(("Cross-check with OpenVINO benchmark_app (same IR and settings)", head, rows))
    if report.get("predictions"):
        head = ["model", "target", "precision", "batch", "PREDICTED ms", "MMACs", "compute/memory-bound layers",
                "validation error % (its device class; source in the JSON: error_source)"]
        rows = [[p["model"], p["target"], p["precision"], _fmt(p.get("batch", 1)), _fmt(p["latency_ms"]),
                 _fmt(p["macs"] / 1e6),
                 f"{p['compute_bound_layers']}/{p['memory_bound_layers']}", _fmt(p.get("calibration_mape"))]
                for p in report["predictions"]]
        tables.append(("Predicted (roofline, not measured)", head, rows))
    cal = report.get("calibration")
    if cal:
        head = ["calibration model", "MMACs", "measured ms", "fit ms", "leave-one-out ms"]
        rows = [[p["name"], _fmt(p["macs"] / 1e6), _fmt(p["measured_ms"]), _fmt(p["predicted_ms"]),
                 _fmt(p.get("loo_predicted_ms"))] for p in cal["points"]]
        tables.append((f"Roofline calibration on this machine (peaks: {cal['peaks']['gflops']:.0f} GFLOP/s, "
                       f"{cal['peaks']['gbps']:.1f} GB/s; compute eff {cal['compute_eff']:.2f}, memory eff "
                       f"{cal['memory_eff']:.2f}, overhead {cal['overhead_us']:.1f} us/layer; MAPE "
                       f"{cal['mape']:.1f}%, LOO MAPE {_fmt(cal.get('loo_mape'))}%)", head, rows))
    return tables


def _machine_line(machine: dict) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in machine.get("versions", {}).items())
    return (f"{machine.get('cpu_model')} — {machine.get('logical_cores')} logical / {machine.get('physical_cores')} "
            f"physical cores, {machine.get('memory_gb')} GB, load average {machine.get('load_average')}; ISA: {' '.join(machine.get('isa', []))}; {versions}")


def to_markdown(report: dict, images: dict[str, str]) -> str:
    out = [f"# {report.get('title', 'medprune benchmark')}", "",
           f"Command: `{report.get('command', '')}`  ", f"Created: {report.get('created', '')}  ",
           f"Machine: {_machine_line(report.get('machine', {}))}", ""]
    if report.get("target"):
        t = report["target"]
        out += [f"Target profile: **{t['name']}** — {t['description']} (runtime {t['runtime']}, {t['precision']})", ""]
    for title, head, rows in _tables(report):
        out += [f"## {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(r) + " |" for r in rows]
        out.append("")
    for target, cmds in (report.get("device_commands") or {}).items():
        out += [f"## Commands to run on {target}", "", "```bash", *cmds, "```", ""]
    if images:
        out += ["## Plots", ""] + [f"![{k}]({v})" for k, v in images.items()] + [""]
    if report.get("notes"):
        out += ["## Notes", ""] + [f"- {n}" for n in report["notes"]] + [""]
    return "\n".join(out)


def to_html(report: dict, images: dict[str, str]) -> str:
    e = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'>",
             f"<title>{e(report.get('title', 'medprune benchmark'))}</title>",
             "<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto}table{border-collapse:collapse;"
             "font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}th{background:#eee}"
             "td:first-child{text-align:left}code{background:#f4f4f4}img{max-width:48%;margin:4px}</style></head><body>",
             f"<h1>{e(report.get('title', 'medprune benchmark'))}</h1>",
             f"<p>Command: <code>{e(report.get('command', ''))}</code><br>Created: {e(report.get('created', ''))}"
             f"<br>Machine: {e(_machine_line(report.get('machine', {})))}</p>"]
    if report.get("target"):
        t = report["target"]
        parts.append(f"<p>Target profile: <b>{e(t['name'])}</b> — {e(t['description'])}</p>")
    for title, head, rows in _tables(report):
        parts.append(f"<h2>{e(title)}</h2><table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{e(c.strip('`'))}</td>" for c in r) + "</tr>" for r in rows]
        parts.append("</table>")
    for target, cmds in (report.get("device_commands") or {}).items():
        parts.append(f"<h2>Commands to run on {e(target)}</h2><pre>{e(chr(10).join(cmds))}</pre>")
    if images:
        parts.append("<h2>Plots</h2>" + "".join(f"<img src='{e(v)}' alt='{e(k)}'>" for k, v in images.items()))
    if report.get("notes"):
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{e(n)}</li>" for n in report["notes"]) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(report: dict, out_dir: str | Path, stem: str = "bench") -> dict[str, Path]:
    """Write ``<stem>.json/.md/.html`` and ``<stem>_*.png`` into ``out_dir``; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {"schema": SCHEMA, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              **{k: v for k, v in report.items() if k not in ("schema",)}}
    paths: dict[str, Path] = {}
    images: dict[str, str] = {}
    for key, fn, arg in (("latency", plot_latency, report.get("models", [])),
                         ("pareto", plot_pareto, report.get("models", [])),
                         ("speedup", plot_speedup, report.get("comparisons", [])),
                         ("calibration", plot_calibration, report.get("calibration"))):
        p = fn(arg, out_dir / f"{stem}_{key}.png")
        if p is not None:
            paths[key] = p
            images[key] = p.name
    with atomic_file(out_dir / f"{stem}.json", "w") as fh:
        json.dump(report, fh, indent=2, default=str)
    paths["json"] = out_dir / f"{stem}.json"
    with atomic_file(out_dir / f"{stem}.md", "w") as fh:
        fh.write(to_markdown(report, images))
    paths["md"] = out_dir / f"{stem}.md"
    with atomic_file(out_dir / f"{stem}.html", "w") as fh:
        fh.write(to_html(report, images))
    paths["html"] = out_dir / f"{stem}.html"
    return paths
