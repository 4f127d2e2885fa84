"""res224 results → benchmarks/results/res224.{json,md,png} (the measuring lives in res224.py)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from toolchain.atomic import atomic_file

RUNTIME_LABEL = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}


def _section(title: str, intro: str, header: str, align: str, rows: list[list[str]]) -> list[str]:
    """A Markdown section: title, intro, and a table whose columns are ``header`` split on '|'."""
    if not rows:
        return []
    return [f"## {title}", "", intro, "", f"| {header} |", "|" + "|".join(align) + "|",
            *(f"| {' | '.join(r)} |" for r in rows), ""]


def _cost_rows(models: list[dict]) -> list[list[str]]:
    return [[r["model"], f"{c['params'] / 1e6:.1f}M", str(c["unit_layers"]),
             f"{statistics.median(c['frozen_fwd_bwd_s']):.2f}", f"{statistics.median(c['lrp_s']):.2f}",
             f"{c['ratio_median']:.3f}", "yes" if c["ratio_median"] <= 2 else "NO"]
            for r in models if (c := r.get("cost"))]


def _parity_rows(models: list[dict]) -> list[list[str]]:
    rows = []
    for r in models:
        if "removal" not in r:
            continue
        m, e = r["removal"], r.get("export") or {}
        rows.append([r["model"], f"{m['params_dense'] / 1e6:.1f}M → {m['params_pruned'] / 1e6:.1f}M",
                     f"{m['units_removed']} / {m['units_masked']}", f"{m['dense_max_abs_logit']:.2f}",
                     f"{m['parity_max_abs']:.1e}",
                     *(f"{e[w][rt]['max_abs_logit']:.1e}" if w in e else "–"
                       for rt in RUNTIME_LABEL for w in ("dense", "pruned"))])
    return rows


def _latency_rows(models: list[dict]) -> list[list[str]]:
    return [[r["model"], f"{RUNTIME_LABEL[rt]} {lat['runtime_version']}", f"{lat['dense']['median_ms']:.1f}",
             f"{lat['pruned']['median_ms']:.1f}", f"{lat['speedup']:.2f}"]
            for r in models if "latency" in r for rt, lat in r["latency"].items() if rt in RUNTIME_LABEL]


def _setting(models: list[dict], part: str, key: str):
    """One measurement setting of ``part`` as the rows record it (a set when runs differed)."""
    found = sorted({str(r[part][key]) for r in models if part in r and key in r[part]})
    return found[0] if len(found) == 1 else ("/".join(found) or "?")


def _sections(models: list[dict]) -> list[str]:
    return [
        *_section("LRP scoring cost",
                  f"LRP time (the whole criterion call) / one frozen-weight batched forward+backward on the same "
                  f"{_setting(models, 'cost', 'n_images')} images, measured by `benchmarks.studies.lrp_cost.measure`: "
                  f"{_setting(models, 'cost', 'repeats')} pairs timed interleaved after a warm-up, median of the "
                  "per-pair ratios (target ≤ 2).",
                  "model | params | unit layers | frozen fwd+bwd median (s) | LRP median (s) | LRP / fwd+bwd | ≤ 2×",
                  ["---", "---:", "---:", "---:", "---:", "---:", ":---:"], _cost_rows(models)),
        *_section("Removal and export parity",
                  f"A fraction {_setting(models, 'removal', 'ratio')} of the units (lowest LRP, global ranking) "
                  f"masked, then physically removed. On {_setting(models, 'removal', 'n_images')} images: removal parity is the max "
                  "|masked − removed| logit; export parity the max |torch − runtime| logit (fp32), dense and pruned.",
                  "model | params dense → pruned | units removed / masked | max \\|logit\\| dense | removal parity | "
                  "ORT dense | ORT pruned | OpenVINO dense | OpenVINO pruned",
                  ["---"] + ["---:"] * 8, _parity_rows(models)),
        *_section("Dense vs pruned latency, batch 1",
                  f"Median of {_setting(models, 'latency', 'runs')} batch-1 runs per model "
                  f"({_setting(models, 'latency', 'threads')} threads); dense and pruned timed interleaved in one "
                  "process per runtime (fp32, random 224 px input).",
                  "model | runtime | dense (ms) | pruned (ms) | speedup dense/pruned",
                  ["---", "---", "---:", "---:", "---:"], _latency_rows(models)),
    ]


def _not_measured(models: list[dict]) -> list[str]:
    """The parts no run has measured yet, by model (a partial result says what it lacks)."""
    from .res224 import MODELS, PARTS

    by_model = {r["model"]: r for r in models}
    missing = [f"{m}: {', '.join(p for p in PARTS if p not in by_model.get(m, {}))}" for m in MODELS
               if any(p not in by_model.get(m, {}) for p in PARTS)]
    return ["## Not measured", "", *(f"- {line}" for line in missing), ""] if missing else []


def markdown(doc: dict) -> str:
    models = doc["models"]
    commands = list(dict.fromkeys(r[p]["command"] for r in models for p in ("cost", "removal", "export", "latency")
                                  if p in r and "command" in r[p]))
    lines = ["# 224 px on CPU: scoring cost, parity, dense vs pruned latency", "",
             "Commands (each part of each model records its own): " + "; ".join(f"`{c}`" for c in commands), "",
             f"chest_xray_224 train images (grey, {doc['img_size']} px), canonical 224 px builds "
             "(VGG19 with its 7x7 fc6 head, ResNet50, ViT-B/16 with 197 tokens), torch "
             f"{doc['torch']} on {doc['cpu']} (load average at the last run's start {doc['load_average']}, "
             f"at its end {doc.get('load_average_end')}; the machine is shared, so absolute times are loaded times, "
             "ratios are from interleaved runs). Weights are untrained (seeded init, BatchNorm randomised, classifier "
             "scaled so the largest |logit| on the images is 8, a trained model's order, so parities compare with "
             "export's fp32 gate, 1e-4 + 1e-5 x max|logit| = 1.8e-4 at 8): cost, parity and latency do not depend on training; no accuracy is "
             "reported.", ""]
    lines += _sections(models)
    lines += _not_measured(models)
    dep = doc.get("cpu_deploy")  # the CPU 128 px deploy run, recorded by hand with its command (not this study's)
    if dep:
        lines += [f"## {dep['title']}", ""] + [line for para in dep["paragraphs"] for line in (para, "")]
    return "\n".join(lines).rstrip() + "\n"


def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    cost = [r for r in doc["models"] if "cost" in r]
    ax = axes[0]
    ax.bar([r["model"] for r in cost], [r["cost"]["ratio_median"] for r in cost], color="tab:blue")
    ax.axhline(2, color="k", ls="--", lw=0.8, label="target 2×")
    ax.set_title("LRP / frozen fwd+bwd (224 px)")
    ax.set_ylabel("time ratio")
    ax.legend(fontsize=8)
    ax = axes[1]
    exp = [r for r in doc["models"] if "export" in r]
    width, i = 0.2, 0
    for rt in ("onnxruntime", "openvino"):
        for which in ("dense", "pruned"):
            ax.bar([k + (i - 1.5) * width for k in range(len(exp))],
                   [max(r["export"][which][rt]["max_abs_logit"], 1e-9) for r in exp], width,
                   label=f"{RUNTIME_LABEL[rt]} {which}")
            i += 1
    rem = [max(r["removal"]["parity_max_abs"], 1e-9) for r in exp]
    ax.scatter(range(len(exp)), rem, color="k", marker="x", zorder=3, label="removal (masked vs removed)")
    ax.set_xticks(range(len(exp)), [r["model"] for r in exp])
    ax.set_yscale("log")
    ax.set_title("parity max |Δlogit|")
    ax.legend(fontsize=7)
    ax = axes[2]
    lat = [r for r in doc["models"] if "latency" in r]
    i = 0
    for rt in ("onnxruntime", "openvino"):
        for which in ("dense", "pruned"):
            xs = [k + (i - 1.5) * width for k in range(len(lat))]
            ax.bar(xs, [r["latency"][rt][which]["median_ms"] for r in lat], width, label=f"{RUNTIME_LABEL[rt]} {which}")
            i += 1
        for k, r in enumerate(lat):
            off = -0.5 if rt == "onnxruntime" else 1.5
            ax.annotate(f"{r['latency'][rt]['speedup']:.2f}×", (k + off * width, r["latency"][rt]["dense"]["median_ms"]),
                        ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(lat)), [r["model"] for r in lat])
    ax.set_ylabel("batch-1 latency, median (ms)")
    ax.set_title(f"dense vs pruned ({_setting(lat, 'removal', 'ratio')} of units removed)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_file(path, "wb") as fh:
        fig.savefig(fh, dpi=110, format="png")
    plt.close(fig)


def write_report(doc: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with atomic_file(out / "res224.json", "w") as fh:
        fh.write(json.dumps(doc, indent=1, default=str))
    with atomic_file(out / "res224.md", "w") as fh:
        fh.write(markdown(doc))
    plot(doc, out / "res224.png")
