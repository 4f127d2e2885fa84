"""Recovery schedule: a longer one-shot recovery, and an iterative one, against the recovery study's 2 epochs.

    medprune study recovery_schedule [--cached-only]

Two pre-registered questions (``_schedule_report.PREREGISTERED``, printed at the top of the results):

1. *Length.* Does recovering the same pruned model for ``--long-epochs`` (6) instead of the recovery
   study's 2 epochs, same distillation recipe (cosine over the longer run, early stopping on val
   balanced accuracy, best val epoch kept), let CNN cells pass deploy's val rule, and do they hold on test?
2. *Schedule.* Does the iterative schedule (``toolchain.recovery.iterative_budget``: prune a step,
   recover, rescore with the same criterion, repeat; ``--steps`` geometric MACs steps of
   ``--recover-epochs-per-step`` epochs each, the same total epochs as question 1) beat one-shot at the
   same MACs target?

Nothing here re-implements the recovery study: its recipe (checkpoints, reference images, distillation
weights, ORT threads/repeats) is read from the committed ``recovery.json``'s arguments (``--baseline``),
the 2-epoch cells are that study's cached cells, and the longer cells run through the same
``recovery_grid.run_model`` with only the epochs changed (cells cached beside the study's, keyed by
their recipe, so an interrupted run resumes). The iterative cell is cached under
``cache_dir()/studies/recovery_schedule``; each of its recoveries is cached by ``toolchain.recovery``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from .registry import RESULTS, StudyParser, command_line, study

CELL_VERSION = 1


def _cells(text: str) -> dict[str, dict[float, list[str]]]:
    """``"vgg19=5:lrp/taylor,resnet50=3:lrp"`` → {model: {MACs target: [criteria]}}."""
    out: dict[str, dict[float, list[str]]] = {}
    try:
        for part in filter(None, (s.strip() for s in text.split(","))):
            model, rest = part.split("=", 1)
            target, crits = rest.split(":", 1)
            out.setdefault(model.strip(), {})[float(target)] = [c for c in crits.split("/") if c]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected model=S:crit/crit,..., got {text!r}") from None
    if any(t <= 1 for targets in out.values() for t in targets):
        raise argparse.ArgumentTypeError(f"MACs targets must be > 1 (dense MACs ÷ S), got {text!r}")
    return out


def grid_args(baseline: dict, model: str, target: float, criteria: list[str], epochs: int,
              cached_only: bool) -> argparse.Namespace:
    """The recovery study's own arguments (as its results recorded them) for one model x target, with only
    the recovery epochs, the criteria and caching changed."""
    a = dict(baseline)
    a.update(criteria=list(criteria), model_macs={model: [target]}, macs=[target], recover_epochs=epochs,
             cached_only=cached_only, retime=False, align=False)
    return argparse.Namespace(**a)


def _cache_root() -> Path:
    from toolchain import settings

    root = settings.cache_dir() / "studies" / "recovery_schedule"
    root.mkdir(parents=True, exist_ok=True)
    return root


def iterative_cell(model: str, data: str, crit_name: str, target: float, steps: int, epochs: int,
                   base: argparse.Namespace, cached_only: bool, log) -> dict[str, Any] | None:
    """One iterative cell (cached): ``steps`` prune→recover→rescore steps to MACs ÷``target``, then the
    final model's val/test probabilities and its ORT speedup measured like the recovery study's cells."""
    from toolchain.budget import Budget, ort_latency_ms
    from toolchain.importance import get_criterion
    from toolchain.models import count_macs, count_params
    from toolchain.pipeline import digest
    from toolchain.prune_eval import load_context, reference_inputs
    from toolchain.recovery import Gates, iterative_budget
    from toolchain.units import find_unit_layers

    from .recovery_grid import _given, _probs, _write_json, recovery_config

    weights = _given(dict(c.split("=", 1) for c in base.checkpoint), data, model)
    if not weights:
        raise SystemExit(f"the baseline has no --checkpoint for {data}/{model}")
    ctx = load_context(weights)
    x, y, idx = reference_inputs(ctx, base.n_per_class, base.sampling, base.seed, pool_per_class=base.pool_per_class)
    rcfg = recovery_config(base, model)  # base carries recover_epochs = epochs (grid_args)
    key = digest({"v": CELL_VERSION, "ckpt": ctx.sha256, "crit": crit_name, "target": target, "steps": steps,
                  "refs": idx.tolist(), "recovery": rcfg.recipe(), "threads": base.threads})
    path = _cache_root() / f"{data}-{model}-{crit_name}-{target:g}-x{steps}-{key[:12]}.json"
    if path.is_file():
        log(f"{data}/{model} · {crit_name} · ÷{target:g} iterative x{steps}: cached")
        return json.loads(path.read_text())
    if cached_only:
        log(f"{data}/{model} · {crit_name} · ÷{target:g} iterative x{steps}: not computed (--cached-only)")
        return None
    t0 = time.perf_counter()
    example = x[:1].detach()
    out = iterative_budget(ctx, get_criterion(crit_name), x, y, find_unit_layers, example,
                           Budget("macs", 1.0 / target), steps, rcfg, Gates(),
                           log=lambda m: log(f"{model} · {crit_name} · iterative · {m}"))
    final = out.pop("model").eval()
    load = os.getloadavg()[0]
    lat = ort_latency_ms({"dense": ctx.model, "pruned": final}, example, repeats=base.repeats, threads=base.threads)
    cell = {"criterion": crit_name, "target_macs_div": target, "steps": steps, "epochs_per_step": epochs,
            "met": out["met"], "trail": out["steps"],
            "macs": {"dense": count_macs(ctx.model, example), "pruned": count_macs(final, example)},
            "params": {"dense": count_params(ctx.model), "pruned": count_params(final)},
            "latency_ms": lat, "speedup_ort": lat["dense"]["median_ms"] / lat["pruned"]["median_ms"],
            "load_avg_1min": load, "probs": {}, "wall_s": None}
    cell["macs"]["ratio"] = cell["macs"]["dense"] / cell["macs"]["pruned"]
    for split in ("val", "test"):
        cell["probs"][f"kd/{split}"], _ = _probs(final, ctx, split)
    cell["wall_s"] = round(time.perf_counter() - t0, 1)
    _write_json(path, cell)
    log(f"{model} · {crit_name} · iterative x{steps}: MACs ÷{cell['macs']['ratio']:.2f}, ORT ×{cell['speedup_ort']:.2f} "
        f"({cell['wall_s']:.0f}s)")
    return cell


@study("recovery_schedule", outputs=("recovery_schedule.json", "recovery_schedule.md", "recovery_schedule.png"))
def main(argv: list[str] | None = None) -> int:
    from toolchain.train import configure_threads

    from . import _schedule_report as report
    from .recovery_grid import run_model

    p = StudyParser("recovery_schedule", __doc__)
    p.add_argument("--data", default="pneumoniamnist", help="dataset (its checkpoint comes from the baseline)")
    p.add_argument("--oneshot", type=_cells, default=_cells("vgg19=5:lrp/taylor/tp-taylor,resnet50=3:lrp/tp-taylor"),
                   help="one-shot cells recovered longer: model=S:crit/crit,... [default: %(default)s]")
    p.add_argument("--iterative", type=_cells, default=_cells("vgg19=5:lrp"),
                   help="iterative cells: model=S:crit,... (empty: none)")
    p.add_argument("--long-epochs", type=int, default=6, help="one-shot recovery epochs (early stopping on val)")
    p.add_argument("--steps", type=int, default=3, help="iterative steps (geometric MACs steps to the target)")
    p.add_argument("--recover-epochs-per-step", type=int, default=2, help="recovery epochs of each iterative step")
    p.add_argument("--baseline", type=Path, default=RESULTS / "recovery.json",
                   help="the recovery study's results: its arguments are the recipe reused here")
    p.add_argument("--cached-only", action="store_true", help="report the cells already computed, compute none")
    p.add_out()
    args = p.parse_args(argv)
    if args.long_epochs < 1 or args.steps < 1 or args.recover_epochs_per_step < 1:
        p.error("--long-epochs, --steps and --recover-epochs-per-step must be >= 1")
    if not args.baseline.is_file():
        p.error(f"--baseline {args.baseline} not found (run `medprune study recovery` first)")
    baseline = json.loads(args.baseline.read_text())["args"]
    configure_threads()
    started = time.strftime("%Y-%m-%dT%H:%M:%S")

    def log(msg: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)

    oneshot = []
    for model, targets in args.oneshot.items():
        for target, crits in targets.items():
            short = run_model(model, args.data, grid_args(baseline, model, target, crits, baseline["recover_epochs"],
                                                          True), log)
            long = run_model(model, args.data, grid_args(baseline, model, target, crits, args.long_epochs,
                                                         args.cached_only), log)
            oneshot.append({"model": model, "target": target, "short": short, "long": long})
    iterative = []
    for model, targets in args.iterative.items():
        for target, crits in targets.items():
            base = grid_args(baseline, model, target, crits, args.recover_epochs_per_step, True)
            for crit in crits:
                cell = iterative_cell(model, args.data, crit, target, args.steps, args.recover_epochs_per_step, base,
                                      args.cached_only, log)
                if cell is not None:
                    iterative.append({"model": model, "target": target, "criterion": crit, "cell": cell})
    doc = report.build(oneshot, iterative, vars(args) | {"out": str(args.out), "baseline": str(args.baseline)},
                       command_line("recovery_schedule", argv), started)
    report.write(doc, Path(args.out))
    log(f"wrote {Path(args.out) / 'recovery_schedule.json'}")
    return 0
