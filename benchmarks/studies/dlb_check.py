"""How DL-Backtrace ranks units compared with LRP: Spearman rank correlation of their unit scores.

    MEDPRUNE_DATA=/work/shared/data medprune study dlb_check --checkpoints a.safetensors,b.safetensors

For each checkpoint (or, without one, each of ``--models`` built untrained at 32 px): DLB and LRP
(``epsilon_plus_flat``) score every unit on ``--n`` class-balanced train images; reported are the
Spearman correlation over all units, its median over unit layers, and, when the running DLB code has
a ReLU gate (the implementation before it followed the reference code), on how many layers the gate
changed a relevance. Writes benchmarks/results/dlb_check.json (``--out``) with the git commit it ran at,
so the same command run at two commits gives the before/after of ``dlb_check.md``.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import torch

from toolchain.atomic import atomic_file
from toolchain.importance import get_criterion
from toolchain.units import find_unit_layers

from .registry import RESULTS, StudyParser, command_line, study


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def _gate_counter():
    """Patch the old DLB linear rule (if present) to count layers whose ReLU gate changed something."""
    from toolchain.importance import _dlb_rules

    if not hasattr(_dlb_rules, "LinearSpec") or "gate_hint" not in _dlb_rules.LinearSpec.__dataclass_fields__:
        return None, lambda: None
    counts = {"relu_layers": 0, "gated_layers": 0}
    original = _dlb_rules.linear_backward

    def counting(spec, x, rel):
        if spec.relu:
            counts["relu_layers"] += 1
            counts["gated_layers"] += int(spec.gate_hint is not None and bool((spec.gate_hint & (rel != 0)).any()))
        return original(spec, x, rel)

    _dlb_rules.linear_backward = counting
    return counts, lambda: setattr(_dlb_rules, "linear_backward", original)


def _model_and_images(source: str, n: int, dataset: str):
    from toolchain.prune_eval import load_context, reference_inputs

    if source.endswith(".safetensors"):
        ctx = load_context(source, dataset)
        x, y, _ = reference_inputs(ctx, max(1, n // 2), "random", 0)
        return ctx.model.eval(), x, y
    from toolchain.models import build_model

    torch.manual_seed(0)
    model = build_model(source, num_classes=2, in_chans=1, img_size=32).eval()
    return model, torch.randn(n, 1, 32, 32), None


def measure(source: str, n: int, dataset: str) -> dict:
    model, x, y = _model_and_images(source, n, dataset)
    layers = find_unit_layers(model)
    counts, restore = _gate_counter()
    try:
        dlb = get_criterion("dlb")(model, x, y, layers)
    finally:
        restore()
    lrp = get_criterion("lrp")(model, x, y, layers)
    per_layer = [spearman(dlb[ly.name].numpy(), lrp[ly.name].numpy()) for ly in layers if ly.size > 2]
    flat = [np.concatenate([s[ly.name].numpy() for ly in layers]) for s in (dlb, lrp)]
    return {"source": source, "n_images": len(x), "unit_layers": len(layers),
            "spearman_all_units": spearman(*flat), "spearman_per_layer_median": float(np.median(per_layer)),
            "spearman_per_layer_min": float(np.min(per_layer)), "relu_gate": counts}


@study("dlb_check", outputs=("dlb_check.json",))
def main(argv: list[str] | None = None) -> dict:
    p = StudyParser("dlb_check", __doc__)
    p.add_argument("--checkpoints", default="", help="comma list of .safetensors checkpoints")
    p.add_argument("--models", default="vgg19,resnet50", help="untrained models when no checkpoint is given")
    p.add_argument("--dataset", default="pneumoniamnist")
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--out", type=Path, default=RESULTS / "dlb_check.json")
    a = p.parse_args(argv)
    torch.set_num_threads(2)
    sources = [s for s in (a.checkpoints or a.models).split(",") if s]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    rows = []
    for source in sources:
        rows.append(measure(source, a.n, a.dataset))
        print(json.dumps(rows[-1]), flush=True)
    doc = {"command": command_line("dlb_check", argv), "commit": commit, "rows": rows}
    with atomic_file(a.out, "w") as fh:
        json.dump(doc, fh, indent=1)
    return doc
