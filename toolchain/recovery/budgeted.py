"""Prune to a budget, recover, gate on val: the flow behind ``medprune prune --speedup/--macs-budget``.

    masker = masker_for(ctx.model, criterion, scores, layers, example)
    out = prune_to_budget(ctx, masker, example, parse_budget("macs", "0.33"), RecoveryConfig(epochs=2))
    out["chosen"]["val"], out["passes_at_budget"], out["model"]

Steps (named phases, each reading only the previous one's result):

1. *search*: :func:`toolchain.budget.search_budget` finds the smallest ratio whose physically removed
   model meets the budget (group granularity, so what is masked is what is removed);
2. *recover*: distillation fine-tuning of that model (:mod:`.finetune`, cached);
3. *gate* on **val** against the dense model: accuracy drop <= ``tolerance`` pts and every class's
   sensitivity drop <= ``sens_tolerance`` pts (the lossless rule of ``toolchain.prune_eval``).
4. If the gates fail at the budget, the ratio backs off (``backoff`` fractions of it) and the first
   ratio that passes on val is reported as the best passing budget. The test split is read once,
   for the model finally returned.

Iterative schedule (``steps`` > 1): the budget is reached in geometric steps (``value ** (i/steps)``
of a ratio-type budget); each step rescoring the current model with the same criterion, pruning,
and recovering from the *dense* teacher.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..budget import Budget, search_budget
from ..errors import ConfigError
from .finetune import RecoveryConfig, recover_cached

Log = Callable[[str], None]


@dataclass(frozen=True)
class Gates:
    tolerance: float = 1.0  # max accuracy drop, points
    sens_tolerance: float = 2.0  # max per-class sensitivity drop, points

    def check(self, dense: dict, pruned: dict) -> dict[str, Any]:
        from ..prune_eval import accuracy_drop, sensitivity_drops

        acc = accuracy_drop(dense, pruned)
        sens = sensitivity_drops(dense, pruned)
        worst = max(sens.values()) if sens else 0.0
        return {"accuracy_drop_pts": acc, "worst_sensitivity_drop_pts": worst,
                "passes": bool(acc <= self.tolerance + 1e-9 and worst <= self.sens_tolerance + 1e-9)}


def masker_for(model: nn.Module, criterion, scores: dict, layers, example: torch.Tensor, round_to: int | None = None):
    """A GroupMasker with the criterion's own ranking options (Torch-Pruning peers: TP's score as is)."""
    from ..removal import GroupMasker

    return GroupMasker(model, scores, layers, example, round_to, **dict(getattr(criterion, "group_options", {})))


def pruner_at(model: nn.Module, masker, example: torch.Tensor) -> Callable[[float], tuple[nn.Module, dict]]:
    """``ratio -> (physically pruned copy, removal report)`` through the one removal code path."""
    from ..removal import remove_units

    def prune(ratio: float):
        return remove_units(model, masker.masks(ratio), example, granularity="group", scores=None)

    return prune


def _val_split(ds) -> str:
    if "val" not in ds.splits:
        raise ConfigError(f"dataset {ds.name} has no val split; budgets are gated on val, never on test")
    return "val"


def _pruned_meta(ctx, report: dict, recipe: dict) -> dict:
    from ..removal import pruning_meta

    return {**ctx.meta, "pruning": pruning_meta(report, recipe)}


def recover_and_gate(ctx, pruned: nn.Module, report: dict, recipe: dict, rcfg: RecoveryConfig | None,
                     gates: Gates, *, console=None, log: Log | None = None) -> dict[str, Any]:
    """Val metrics of ``pruned`` before and after recovery, and the gate verdict (after)."""
    from ..evaluate import evaluate

    split = _val_split(ctx.ds)
    dense_val = evaluate(ctx.model, ctx.ds, split, ctx.preprocess, device=ctx.device)
    before = evaluate(pruned, ctx.ds, split, ctx.preprocess, device=ctx.device)
    row: dict[str, Any] = {"ratio": recipe.get("ratio"), "val_before": before, "model": pruned, "recovery": None}
    if rcfg is not None:
        meta = _pruned_meta(ctx, report, recipe)
        model, info = recover_cached(copy.deepcopy(pruned), ctx.model, ctx.ds, ctx.preprocess, rcfg, meta=meta,
                                     teacher_sha=ctx.sha256, console=console)
        row.update(model=model, recovery={k: v for k, v in info.items() if k != "val"})
    row["val"] = evaluate(row["model"], ctx.ds, split, ctx.preprocess, device=ctx.device)
    row["gates"] = gates.check(dense_val, row["val"])
    row["dense_val"] = dense_val
    if log:
        g = row["gates"]
        log(f"ratio {row['ratio']:.2f}: val accuracy {before['accuracy']:.4f} -> {row['val']['accuracy']:.4f} "
            f"(drop {g['accuracy_drop_pts']:.2f} pts, worst sensitivity drop {g['worst_sensitivity_drop_pts']:.2f}) "
            f"{'PASS' if g['passes'] else 'FAIL'}")
    return row


def prune_to_budget(ctx, masker, example: torch.Tensor, budget: Budget, rcfg: RecoveryConfig | None,
                    gates: Gates = Gates(), *, recipe: dict | None = None, backoff: Sequence[float] = (0.75, 0.5, 0.25),
                    latency_fn=None, latency_label: str | None = None, console=None, log: Log | None = None,
                    read_test: bool = True) -> dict[str, Any]:
    """Search → recover → gate on val (→ back off); see the module docstring. Returns a JSON-able dict
    plus ``model`` (the returned model) and ``pruned_report`` (its removal report)."""
    from ..budget import measure
    from ..evaluate import evaluate

    prune = pruner_at(ctx.model, masker, example)
    found = search_budget(prune, ctx.model, example, budget, latency_fn=latency_fn, latency_label=latency_label,
                          log=log)
    if not found.met and log:
        log(f"budget {budget.describe()} not reachable: ratio {found.ratio:.2f} gives {found.cost['ratio']:.2f}x")
    recipe = dict(recipe or {})
    attempts = []
    ratios = [found.ratio] + [round(found.ratio * f, 2) for f in backoff if round(found.ratio * f, 2) > 0]
    chosen = None
    for i, ratio in enumerate(ratios):
        model, report = (found.model, found.report) if i == 0 else prune(ratio)
        row = recover_and_gate(ctx, model, report, {**recipe, "ratio": ratio, "granularity": "group"}, rcfg, gates,
                               console=console, log=log)
        row["report"] = report
        row["cost"] = found.cost if i == 0 else measure(budget.kind, ctx.model, row["model"], example,
                                                          latency_fn=latency_fn)
        attempts.append(row)
        if row["gates"]["passes"]:
            chosen = row
            break
    final = chosen or attempts[0]
    test = None
    if read_test and "test" in ctx.ds.splits:
        test = {"dense": evaluate(ctx.model, ctx.ds, "test", ctx.preprocess, device=ctx.device),
                "pruned": evaluate(final["model"], ctx.ds, "test", ctx.preprocess, device=ctx.device)}
    return {
        "budget": {"kind": budget.kind, "value": budget.value, "describe": budget.describe()},
        "search": found.summary(),
        "passes_at_budget": bool(attempts[0]["gates"]["passes"]) and found.met,
        "best_passing_ratio": chosen["ratio"] if chosen else None,
        "best_passing_cost": chosen["cost"] if chosen else None,
        "attempts": [_public(a) for a in attempts],
        "chosen": _public(final),
        "test": test,
        "gates": {"tolerance_pts": gates.tolerance, "sens_tolerance_pts": gates.sens_tolerance, "split": "val"},
        "model": final["model"],
        "pruned_report": final["report"],
    }


def _public(row: dict) -> dict:
    report = row.get("report") or {}
    return {**{k: v for k, v in row.items() if k not in ("model", "report")},
            "units": report.get("units"), "params_after": report.get("params_after")}


def iterative_budget(ctx, criterion, x, y, layers_fn, example: torch.Tensor, budget: Budget, steps: int,
                     rcfg: RecoveryConfig, gates: Gates = Gates(), *, log: Log | None = None,
                     console=None) -> dict[str, Any]:
    """Prune a step, recover, rescore with the same criterion, repeat (ratio-type budgets only).

    ``layers_fn(model)`` returns the unit layers of the current (already pruned) model.
    """
    from ..budget import measure, meets

    if steps < 1:
        raise ConfigError(f"iterative steps must be >= 1, got {steps}")
    if budget.kind == "latency_ms" or (budget.kind in ("macs", "params") and budget.value > 1):
        raise ConfigError("the iterative schedule needs a relative budget (--speedup or a fraction for MACs/params)")
    dense, current, trail = ctx.model, ctx.model, []
    for i in range(1, steps + 1):
        # the step's budget is relative to the dense model, so geometric steps compound to the target
        value = budget.value ** (i / steps)
        step_budget = Budget(budget.kind, value)
        layers = layers_fn(current)
        scores = criterion(current, x if criterion.needs_data else None, y, layers)
        masker = masker_for(current, criterion, scores, layers, example)
        found = search_budget(pruner_at(current, masker, example), dense, example, step_budget, log=log)
        row = recover_and_gate(ctx, found.model, found.report, {"criterion": criterion.name, "ratio": found.ratio,
                                                                "step": i}, rcfg, gates, console=console, log=log)
        current = row["model"]
        cost = measure(budget.kind, dense, current, example)
        trail.append({"step": i, "step_budget": value, "ratio_of_current": found.ratio, "cost": cost,
                      **{k: v for k, v in _public(row).items() if k in ("val", "gates", "recovery")}})
    return {"steps": trail, "met": meets(budget, trail[-1]["cost"]), "model": current}
