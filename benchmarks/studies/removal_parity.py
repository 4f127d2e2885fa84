"""Physical removal benchmark: MACs/params ratio vs measured eager speedup, parity and accuracy.

    medprune study removal_parity [--models vgg19,resnet50,vit_b16] [--ratios 0.3,0.5,0.7]
                                 [--granularities neuron,group] [--round-to 8] [--criterion magnitude]

For every model (baseline checkpoints from ``benchmarks/results/baselines.json``; random-init models
of the same architecture when there is none, flagged ``random_init``) and every ratio (plus the
model's lossless ratio from ``benchmarks/results/importance.json`` when recorded), masks are built at
each granularity (``neuron``: toolchain.masking.build_masks; ``group``: group_masks; ``group+rN``:
group_masks with round_to=N), the masked units are removed, and we measure on PneumoniaMNIST test
images: parity max|Δ| between masked and removed logits (all test images), test accuracy/balanced
accuracy of the removed model, params, MACs and PyTorch eager latency at batch 1 and 32 (medians of
interleaved repeated runs in this process; speedup = dense/pruned).

Writes benchmarks/results/removal.{json,md,png}.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .registry import RESULTS, StudyParser, command_line, study

DEFAULT_MODELS = ("vgg19", "resnet50", "vit_b16")
DATASET = "pneumoniamnist"


def _log(msg: str) -> None:
    print(f"[removal {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _find_entry(doc: Any, model: str) -> dict | None:
    """The baselines.json / importance.json entry for ``model`` (tolerant of list or dict layouts)."""
    if isinstance(doc, dict):
        for key in ("runs", "models", "results", "rows", "baselines"):
            if key in doc:
                hit = _find_entry(doc[key], model)
                if hit is not None:
                    return hit
        if model in doc and isinstance(doc[model], dict):
            return doc[model]
    if isinstance(doc, list):
        for row in doc:
            if isinstance(row, dict) and model in (row.get("model"), row.get("name"), row.get("alias")):
                if row.get("data", row.get("dataset", DATASET)) in (DATASET, None) or \
                        DATASET in json.dumps(row.get("dataset", DATASET)):
                    return row
    return None


def load_baseline(model_name: str, img_size: int):
    """(model, meta-ish dict, checkpoint path or None)."""
    from toolchain.models import load_checkpoint
    from toolchain.models.registry import build_model

    path = RESULTS / "baselines.json"
    if path.exists():
        entry = _find_entry(json.loads(path.read_text()), model_name)
        ckpt = entry and (entry.get("checkpoint") or entry.get("path"))
        if ckpt and Path(ckpt).exists():
            model, meta = load_checkpoint(ckpt)
            return model, meta, str(ckpt)
    torch.manual_seed(0)
    model = build_model(model_name, 2, in_chans=1, img_size=img_size).eval()
    return model, {**model.medprune_spec, "random_init": True}, None


def lossless_ratio(model_name: str) -> float | None:
    path = RESULTS / "importance.json"
    if not path.exists():
        return None
    entry = _find_entry(json.loads(path.read_text()), model_name) or {}
    for key in ("lossless_ratio", "max_lossless_ratio"):
        if isinstance(entry.get(key), (int, float)):
            return float(entry[key])
    return None


def _batched(model, x: torch.Tensor, bs: int = 128) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([model(x[i:i + bs]) for i in range(0, len(x), bs)])


def _metrics(logits: torch.Tensor, labels: np.ndarray, class_names: list[str]) -> dict:
    from toolchain.metrics import compute_metrics

    m = compute_metrics(labels, torch.softmax(logits.float(), 1).numpy(), class_names)
    return {k: m[k] for k in ("accuracy", "balanced_accuracy", "auc")}


def run(args) -> dict:
    from toolchain.data import Preprocess, load_dataset
    from toolchain.importance import get_criterion
    from toolchain.masking import MaskSet, apply_masks, build_masks
    from toolchain.models import recorded_sha256
    from toolchain.removal import compare_models, group_masks, remove_units
    from toolchain.units import find_unit_layers

    torch.set_num_threads(args.threads)
    ds = load_dataset(DATASET)
    test = ds.split("test")
    rows, models_info = [], {}
    for name in args.models:
        model, meta, ckpt = load_baseline(name, args.img_size)
        pre = Preprocess.from_dict(meta["preprocess"]) if meta.get("preprocess") else \
            Preprocess.for_dataset(ds, meta.get("img_size", args.img_size), meta.get("in_chans", 1))
        x_test = pre(test.images)
        example = x_test[: args.n_example]
        layers = find_unit_layers(model)
        crit = get_criterion(args.criterion)
        targets = torch.as_tensor(test.labels[: args.n_example])
        scores = crit(model, example if crit.needs_data else None, targets if crit.needs_data else None, layers)
        dense_logits = _batched(model, x_test)
        dense = _metrics(dense_logits, test.labels, ds.class_names)
        models_info[name] = {"checkpoint": ckpt, "checkpoint_sha256": recorded_sha256(ckpt) if ckpt else None,
                             "random_init": ckpt is None, "img_size": pre.img_size,
                             "dense": dense, "units": sum(la.size for la in layers)}
        _log(f"{name}: dense {dense} ({'random init' if ckpt is None else ckpt})")
        ratios = list(args.ratios)
        lr = lossless_ratio(name)
        if lr is not None and lr not in ratios:
            ratios.append(lr)
        for ratio in ratios:
            for gran in args.granularities:
                variants = [(gran, None)] + ([(gran, args.round_to)] if args.round_to and gran == "group" else [])
                for granularity, round_to in variants:
                    t0 = time.perf_counter()
                    if granularity == "neuron":
                        masks = build_masks(scores, layers, ratio)
                    else:
                        masks = group_masks(model, scores, layers, ratio, example[:2], round_to=round_to)
                    pruned, rep = remove_units(model, masks, example, granularity=granularity)
                    t_remove = time.perf_counter() - t0
                    masked = apply_masks(model, MaskSet(keep=rep["keep"], layers=layers, meta={}))
                    masked_logits = _batched(masked, x_test)
                    del masked
                    pruned_logits = _batched(pruned, x_test)
                    parity = float((masked_logits - pruned_logits).abs().max())
                    cmp = compare_models(model, pruned, example[:1], batch_sizes=(1, 32),
                                         repeats=args.repeats, warmup=2)
                    row = {
                        "model": name, "ratio": ratio, "lossless": ratio == lr, "granularity": granularity,
                        "round_to": round_to,
                        "units_masked": rep["units"]["masked"], "units_removed": rep["units"]["removed"],
                        "removable_fraction": rep["removable_fraction"],
                        "params_ratio": cmp["params"]["ratio"], "macs_ratio": cmp["macs"]["ratio"],
                        "params_pruned": cmp["params"]["pruned"], "macs_pruned": cmp["macs"]["pruned"],
                        "size_ratio": cmp["size_bytes"]["ratio"],
                        "speedup_b1": cmp["latency"]["batch1"]["speedup"],
                        "speedup_b32": cmp["latency"]["batch32"]["speedup"],
                        "latency_ms_b1": {k: cmp["latency"]["batch1"][k]["median_ms"] for k in ("dense", "pruned")},
                        "latency_ms_b32": {k: cmp["latency"]["batch32"][k]["median_ms"] for k in ("dense", "pruned")},
                        "parity_max_abs": parity, "parity_ok": parity <= 1e-4 * max(1.0, float(masked_logits.abs().max())),
                        "pruned": _metrics(pruned_logits, test.labels, ds.class_names),
                        "remove_seconds": t_remove,
                    }
                    if "macs" not in models_info[name]:
                        models_info[name]["macs"] = cmp["macs"]["dense"]
                        models_info[name]["params"] = cmp["params"]["dense"]
                    rows.append(row)
                    _log(f"{name} r={ratio} {granularity}{'+r' + str(round_to) if round_to else ''}: "
                         f"MACs x{row['macs_ratio']:.2f} speedup b1 x{row['speedup_b1']:.2f} "
                         f"b32 x{row['speedup_b32']:.2f} parity {parity:.2e} acc {row['pruned']['accuracy']:.3f}")
                    del pruned
    return {"models": models_info, "rows": rows}


def to_markdown(doc: dict) -> str:
    lines = [
        "# Physical removal: MACs ratio vs measured eager speedup",
        "",
        f"Command: `{doc['command']}`  ",
        f"Dataset: {DATASET} test split ({doc['n_test']} images); criterion `{doc['criterion']}`; "
        f"torch {doc['torch']} eager, {doc['threads']} threads, CPU: {doc['machine'].get('cpu_model')}, "
        f"1-min load average {doc['loadavg_1min']['start']:.1f} → {doc['loadavg_1min']['end']:.1f} "
        f"(logical cores: {doc['machine'].get('logical_cores')}).  ",
        "Masks: `neuron` = toolchain.masking.build_masks defaults (global ranking of raw scores); `group` = "
        "group_masks defaults (global, per-layer mean-normalised scores summed over coupled members); "
        "`+roundN` = group_masks(round_to=N). No fine-tuning after pruning.  ",
        "Speedup = dense/pruned median latency (interleaved repeated runs in one process). Parity = max|Δ| "
        "between masked and removed logits over all test images.",
        "",
    ]
    for name, info in doc["models"].items():
        d = info["dense"]
        lines.append(f"- **{name}**: {'random-init (no baseline checkpoint)' if info['random_init'] else info['checkpoint']}"
                     f", {info.get('params', 0) / 1e6:.1f}M params, {info.get('macs', 0) / 1e6:.1f}M MACs, "
                     f"dense acc {d['accuracy']:.3f} / bal.acc {d['balanced_accuracy']:.3f}")
    lines += ["", "| model | ratio | granularity | removed/masked units | params ratio | MACs ratio | speedup b1 | "
              "speedup b32 | parity max abs | acc | bal. acc |", "|" + "---|" * 11]
    for r in doc["rows"]:
        gran = r["granularity"] + (f"+round{r['round_to']}" if r["round_to"] else "")
        lines.append(
            f"| {r['model']} | {r['ratio']:.2f}{' (lossless)' if r['lossless'] else ''} | {gran} | "
            f"{r['units_removed']}/{r['units_masked']} | {r['params_ratio']:.2f} | {r['macs_ratio']:.2f} | "
            f"{r['speedup_b1']:.2f} | {r['speedup_b32']:.2f} | {r['parity_max_abs']:.1e} | "
            f"{r['pruned']['accuracy']:.3f} | {r['pruned']['balanced_accuracy']:.3f} |")
    return "\n".join(lines) + "\n"


def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    markers = {"neuron": "o", "group": "s"}
    colors = {m: c for m, c in zip(doc["models"], ("tab:blue", "tab:orange", "tab:green", "tab:red"), strict=False)}
    top = max([1.0] + [r["macs_ratio"] for r in doc["rows"]] + [r["speedup_b1"] for r in doc["rows"]] +
              [r["speedup_b32"] for r in doc["rows"]])
    for ax, key, title in ((axes[0], "speedup_b1", "batch 1"), (axes[1], "speedup_b32", "batch 32")):
        ax.plot([1, top], [1, top], "k--", lw=0.8, label="speedup = MACs ratio")
        for r in doc["rows"]:
            filled = not r["round_to"]
            ax.scatter(r["macs_ratio"], r[key], marker=markers[r["granularity"]], color=colors[r["model"]],
                       facecolors=colors[r["model"]] if filled else "none", s=40)
        for m, c in colors.items():
            ax.scatter([], [], color=c, label=m)
        for g, mk in markers.items():
            ax.scatter([], [], color="grey", marker=mk, label=g)
        ax.scatter([], [], color="grey", facecolors="none", label="group + round_to")
        ax.set_xlabel("MACs ratio dense/pruned")
        ax.set_title(f"PyTorch eager speedup, {title}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("measured speedup dense/pruned")
    axes[1].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)


@study("removal_parity", outputs=("removal.json", "removal.md", "removal.png"))
def main(argv: list[str] | None = None) -> int:
    from toolchain.atomic import atomic_file

    p = StudyParser("removal_parity", __doc__)
    from toolchain.importance import available

    p.add_list("--models", default=",".join(DEFAULT_MODELS), help="baseline models (random init when absent)")
    p.add_list("--ratios", default="0.3,0.5,0.7", kind=float, help="pruning ratios")
    p.add_list("--granularities", default="neuron,group", help="neuron, group or group+rN (round to N)")
    p.add_argument("--round-to", type=int, default=8)
    p.add_argument("--criterion", default="magnitude", choices=available())
    p.add_argument("--img-size", type=int, default=32, help="for random-init models only")
    p.add_argument("--n-example", type=int, default=64, help="test images used as example/score input")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=min(2, torch.get_num_threads()))
    p.add_out()
    a = p.parse_args(argv)
    import os

    from benchmarks.harness import machine_info

    load_before = os.getloadavg()
    doc = run(a)
    from toolchain.data import load_dataset

    doc.update({
        "command": command_line("removal_parity", argv),
        "criterion": a.criterion, "torch": torch.__version__, "threads": a.threads,
        "n_test": int(len(load_dataset(DATASET).split("test").labels)), "machine": machine_info(),
        # latency medians are only as good as the machine is quiet: keep the load next to them
        "loadavg_1min": {"start": load_before[0], "end": os.getloadavg()[0]},
    })
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_file(out / "removal.json", "w") as fh:
        json.dump(doc, fh, indent=1, default=float)
    with atomic_file(out / "removal.md", "w") as fh:
        fh.write(to_markdown(doc))
    with atomic_file(out / "removal.png", "wb") as fh:
        plot(doc, fh)
    _log(f"wrote {out / 'removal.json'}, .md, .png")
    return 0
