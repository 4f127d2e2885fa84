"""224 px on CPU: LRP scoring cost, removal parity, export parity and dense vs pruned latency (ORT, OpenVINO).

    MEDPRUNE_DATA=/work/shared/data medprune study res224 --models vgg19,resnet50,vit_b16

For each of the paper's architectures at its canonical 224 px build (VGG19 with the 7x7 fc6 head,
ResNet50, ViT-B/16 with 14x14 patches + CLS = 197 tokens), on ``--n`` chest_xray_224 train images
(grey, 224 px, balanced over the two classes):

* ``cost``: LRP unit scoring time / one frozen-weight batched forward+backward on the same images,
  measured by ``lrp_cost.measure`` (the same function, interleaved pairs, median ratio);
* ``removal``: the lowest-LRP ``--ratio`` of units masked, then physically removed; parity is the
  max |masked - removed| logit over the images;
* ``export``: dense and pruned models exported (ONNX fp32, OpenVINO fp32 from that ONNX) and compared
  with torch on the images (max |Δlogit|);
* ``latency``: batch-1 latency of dense and pruned on ONNX Runtime and on OpenVINO, the two models of a
  runtime timed interleaved in one process (median of ``--runs``), and the dense/pruned ratio.

Weights are untrained (seeded init; BatchNorm statistics and affine randomised so no residual branch is
the zero that timm's init makes it; the classifier scaled so the largest |logit| on the images is 8, the
size of a trained classifier's logits, so parities compare with export's fp32 gate, 1e-4 + 1e-5 x 8):
time, parity and latency do not depend on training, accuracy does and is not reported here. ``--parts`` reruns some measurements and keeps the others from the existing
results file. Writes benchmarks/results/res224.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from toolchain.errors import ConfigError

from .registry import StudyParser, command_line, study

SIZE = 224
MODELS = ("vgg19", "resnet50", "vit_b16")
PARTS = ("cost", "removal", "export", "latency")
RUNTIMES = ("onnxruntime", "openvino")
GREY_MEAN, GREY_STD = 0.449, 0.226  # ImageNet's channel means/stds averaged, as an imported grey model uses
LOGIT_SCALE = 8.0  # largest |logit| on the images after scaling the classifier: a trained model's order
BN_RANGES = {"running_mean": (-0.1, 0.1), "running_var": (0.5, 2.0), "weight": (0.5, 1.5), "bias": (-0.1, 0.1)}


def _log(msg: str) -> None:
    print(f"[res224 {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def chest_xray_images(data_dir: Path, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` chest_xray_224 train images (balanced, seeded) as grey 224 px model inputs, and their labels."""
    from PIL import Image

    from toolchain.data import Preprocess

    root = data_dir / "chest_xray_224" / "train"
    classes = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if len(classes) != 2:
        raise ConfigError(f"chest_xray_224 not found under {data_dir} (set MEDPRUNE_DATA or --data-dir)")
    rng = np.random.default_rng(seed)
    per_class = []
    for label, cls in enumerate(classes):
        files = sorted((root / cls).glob("*.jpeg"))
        per_class.append([(files[i], label) for i in rng.choice(len(files), -(-n // 2), replace=False)])
    picks = [p for pair in zip(*per_class, strict=True) for p in pair][:n]  # alternate the classes
    images = np.stack([np.asarray(Image.open(f).convert("L").resize((SIZE, SIZE))) for f, _ in picks])
    pre = Preprocess(SIZE, 1, (GREY_MEAN,), (GREY_STD,))
    return pre(images), torch.tensor([label for _, label in picks])


def untrained(arch: str, x: torch.Tensor) -> nn.Module:
    """The canonical 224 px build, seeded, with non-trivial BatchNorm and logits of a trained model's size
    (see module docstring)."""
    from toolchain.models import build_model

    torch.manual_seed(0)
    model = build_model(arch, 2, in_chans=1, img_size=SIZE).eval()
    gen = torch.Generator().manual_seed(1)
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        for attr, (lo, hi) in BN_RANGES.items():
            getattr(bn, attr).data.uniform_(lo, hi, generator=gen)
    head = model.get_classifier()  # the last op: scaling it scales the logits exactly
    scale = LOGIT_SCALE / float(_logits(model, x).abs().max())
    with torch.no_grad():
        head.weight.mul_(scale)
        head.bias.mul_(scale)
    return model


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([model(x[i:i + 1]) for i in range(len(x))])


def prune(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ratio: float) -> tuple[nn.Module, dict]:
    """(removed model, removal row): LRP ranking on ``x``, global ``ratio`` masks, removal, parity."""
    from toolchain.importance import get_criterion
    from toolchain.masking import apply_masks, build_masks
    from toolchain.removal import remove_units
    from toolchain.units import find_unit_layers

    layers = find_unit_layers(model)
    scores = get_criterion("lrp", batch_size=len(x))(model, x, y, layers)
    masks = build_masks(scores, layers, ratio)
    t0 = time.perf_counter()
    removed, rep = remove_units(model, masks, x[:1])
    remove_s = time.perf_counter() - t0
    masked_logits = _logits(apply_masks(model, masks), x)
    parity = float((masked_logits - _logits(removed, x)).abs().max())
    return removed.eval(), {
        "ratio": ratio, "units_total": masks.units_total, "units_masked": masks.units_pruned,
        "units_removed": rep["units"]["removed"], "params_dense": rep["params_before"],
        "params_pruned": rep["params_after"], "parity_max_abs": parity, "remove_s": remove_s,
        "dense_max_abs_logit": float(_logits(model, x).abs().max()), "pruned_max_abs_logit": float(masked_logits.abs().max())}


def export_both(model: nn.Module, x: torch.Tensor, y: torch.Tensor, folder: Path, name: str) -> dict:
    """ONNX and OpenVINO fp32 files of ``model`` with their parity against torch on ``x``."""
    from export.exporter import export_model
    from export.verify import TOLERANCES

    meta = {**model.medprune_spec, "class_names": ["normal", "pneumonia"],
            "preprocess": {"img_size": SIZE, "in_chans": 1, "mean": [GREY_MEAN], "std": [GREY_STD]}}
    xs, ys = x.numpy(), y.numpy()
    t0 = time.perf_counter()
    # measured, not gated: export's fixed fp32 gate (|Δlogit| <= 1e-4) is what this study checks
    measure_only = {**TOLERANCES, "fp32": {"max_abs_logit": float("inf")}}
    onnx = export_model(model, meta, folder, "onnx", "fp32", name=name, eval_x=xs, eval_y=ys, tolerances=measure_only)
    t1 = time.perf_counter()
    ov = export_model(model, meta, folder, "openvino", "fp32", name=name, eval_x=xs, eval_y=ys, base_onnx=onnx.path,
                      tolerances=measure_only)
    t2 = time.perf_counter()
    return {
        "onnxruntime": {"path": onnx.path, "max_abs_logit": onnx.verification["max_abs_logit"],
                        "top1_agreement": onnx.verification["top1_agreement"], "export_s": t1 - t0},
        "openvino": {"path": ov.path, "max_abs_logit": ov.verification["max_abs_logit"],
                     "top1_agreement": ov.verification["top1_agreement"], "export_s": t2 - t1},
    }


def interleaved_latency(paths: dict[str, Path], runtime: str, runs: int, threads: int, warmup: int = 3) -> dict:
    """Batch-1 milliseconds of each model of ``paths`` on ``runtime``, timed interleaved in this process."""
    from benchmarks._runner import open_backend

    backends = {k: open_backend(p, runtime, threads) for k, p in paths.items()}
    x = np.random.default_rng(0).standard_normal((1, 1, SIZE, SIZE)).astype(np.float32)
    for b in backends.values():
        b.set_batch(1)
        for _ in range(warmup):
            b.run(x)
    ms: dict[str, list[float]] = {k: [] for k in backends}
    for _ in range(runs):
        for k, b in backends.items():
            t0 = time.perf_counter()
            b.run(x)
            ms[k].append((time.perf_counter() - t0) * 1e3)
    out = {k: {"median_ms": statistics.median(v), "runs_ms": v} for k, v in ms.items()}
    out["speedup"] = out["dense"]["median_ms"] / out["pruned"]["median_ms"]
    out["runtime_version"] = backends["dense"].version()
    return out


def measure_model(arch: str, x: torch.Tensor, y: torch.Tensor, args, parts: set[str], command: str) -> dict:
    from .lrp_cost import measure

    row: dict = {"model": arch}
    if "cost" in parts:
        _log(f"{arch}: LRP cost vs frozen forward+backward ({len(x)} images, {args.repeats} pairs)")
        # lrp_cost's own settings object: its LRP part only, on the canonical 224 px build
        settings = argparse.Namespace(img_size=SIZE, repeats=args.repeats, composite=args.composite, ig_steps=0)
        cost = measure(arch, x, y, settings, ["lrp"], command)
        run = cost["lrp_run"]
        row["cost"] = {**{k: cost[k] for k in ("params", "unit_layers", "units", "frozen_fwd_bwd_s", "lrp_s",
                                               "ratio_per_pair", "ratio_median")},
                       "threads": torch.get_num_threads(), "load_average": run["load_average"],
                       **{k: run[k] for k in ("cpu_s", "cpu_ratio_per_pair", "cpu_ratio_median")}}
        _log(f"{arch}: LRP / fwd+bwd {cost['ratio_median']:.2f} (CPU time {run['cpu_ratio_median']:.2f}, "
             f"load {run['load_average']})")
    if not parts & {"removal", "export", "latency"}:
        return row
    model = untrained(arch, x)
    removed, row["removal"] = prune(model, x, y, args.ratio)
    _log(f"{arch}: removal parity {row['removal']['parity_max_abs']:.2e}, params "
         f"{row['removal']['params_dense'] / 1e6:.1f}M -> {row['removal']['params_pruned'] / 1e6:.1f}M")
    if not parts & {"export", "latency"}:
        return row
    with tempfile.TemporaryDirectory(prefix="medprune-res224-") as tmp:
        files = {which: export_both(m, x, y, Path(tmp), f"{arch}_{which}")
                 for which, m in (("dense", model), ("pruned", removed))}
        del model, removed
        row["export"] = {which: {rt: {k: v for k, v in r.items() if k != "path"} for rt, r in f.items()}
                         for which, f in files.items()}
        row["export_parity_max_abs"] = max(r["max_abs_logit"] for f in row["export"].values() for r in f.values())
        _log(f"{arch}: export parity max {row['export_parity_max_abs']:.2e}")
        if "latency" in parts:
            row["latency"] = {rt: interleaved_latency({w: files[w][rt]["path"] for w in files}, rt, args.runs,
                                                      args.threads) for rt in RUNTIMES}
            _log(f"{arch}: batch-1 speedup " + ", ".join(f"{rt} {row['latency'][rt]['speedup']:.2f}x"
                                                         for rt in RUNTIMES))
    return row


def merge(previous: dict | None, row: dict, parts: set[str]) -> dict:
    """``row``'s measured parts over the previous result of that model (parts not rerun are kept)."""
    old = next((r for r in (previous or {}).get("models", []) if r["model"] == row["model"]), {})
    keep = {k: v for k, v in old.items() if k in PARTS and k not in parts}
    if "export" in keep:
        keep["export_parity_max_abs"] = old["export_parity_max_abs"]
    return {**keep, **row}


@study("res224", outputs=("res224.json", "res224.md", "res224.png"))
def main(argv: list[str] | None = None) -> dict:
    from toolchain import settings

    from ._res224_report import write_report

    parser = StudyParser("res224", __doc__)
    parser.add_list("--models", default=",".join(MODELS), choices=MODELS)
    parser.add_list("--parts", default=",".join(PARTS), choices=PARTS, help="measurements to (re)run")
    parser.add_argument("--n", type=int, default=2, help="chest_xray_224 train images (scoring, parity)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved LRP / forward+backward pairs")
    parser.add_argument("--composite", default="epsilon_plus_flat")
    parser.add_argument("--ratio", type=float, default=0.5, help="fraction of units removed")
    parser.add_argument("--runs", type=int, default=20, help="timed batch-1 runs per model and runtime")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-dir", type=Path, default=None, help="data root [default: MEDPRUNE_DATA]")
    parser.add_out()
    args = parser.parse_args(argv)
    if args.n < 1 or args.repeats < 1 or args.runs < 1 or not 0 < args.ratio < 1:
        raise ConfigError("res224: --n, --repeats and --runs must be >= 1 and --ratio in (0, 1)")
    data_dir = args.data_dir or settings.data_dir()
    if data_dir is None:
        raise ConfigError("res224 reads chest_xray_224: set MEDPRUNE_DATA or pass --data-dir")
    torch.set_num_threads(args.threads)
    parts = set(args.parts)
    x, y = chest_xray_images(Path(data_dir), args.n)
    command = command_line("res224", argv)
    header = {"img_size": SIZE, "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
              "load_average": [round(v, 2) for v in os.getloadavg()]}
    settings_of = {"cost": {"n_images": len(x), "repeats": args.repeats, "composite": args.composite},
                   "removal": {"n_images": len(x), "ratio": args.ratio}, "export": {"n_images": len(x)},
                   "latency": {"runs": args.runs, "threads": args.threads}}
    finished: dict[str, dict] = {}
    for arch in args.models:
        row = measure_model(arch, x, y, args, parts, command)
        for part in parts & set(row):  # each part says how and when it was measured
            row[part].update(settings_of[part], command=command, measured=time.strftime("%Y-%m-%d %H:%M UTC",
                                                                                         time.gmtime()))
        finished[arch] = row
        # re-read before every write: runs of other models or parts may have written meanwhile
        path = args.out / "res224.json"
        latest = json.loads(path.read_text()) if path.exists() else {}
        models = [r for r in latest.get("models", []) if r["model"] not in finished]
        models += [merge(latest, r, parts) for r in finished.values()]
        kept = {k: latest[k] for k in ("cpu_deploy",) if k in latest}  # the recorded 128 px deploy, not measured here
        results = {**kept, **header, "load_average_end": [round(v, 2) for v in os.getloadavg()],
                   "models": sorted(models, key=lambda r: MODELS.index(r["model"]))}
        write_report(results, args.out)  # after every model: a stopped run keeps what finished
    return results
