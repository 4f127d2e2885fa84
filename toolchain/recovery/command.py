"""The budget branch of ``medprune prune``: options → prune_to_budget → table, checkpoint, JSON.

Kept apart from ``toolchain/commands/prune.py`` so the command module only parses and delegates.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from ..budget import Budget
from .budgeted import Gates, iterative_budget, masker_for, prune_to_budget
from .finetune import RecoveryConfig


def recovery_config(epochs: int | None, lr: float | None, temperature: float | None, kd_weight: float | None,
                    ce_weight: float | None, subset: int, device: str, quiet: bool, augment: bool | None = None,
                    seed: int | None = None) -> RecoveryConfig | None:
    """The recovery recipe (``finetune.RECIPE``) with the flags a user gave (``None``: the recipe's value), as
    ``medprune prune`` and ``medprune deploy`` both build it; None when ``epochs`` is 0 (no recovery)."""
    if epochs == 0:
        return None
    return RecoveryConfig.with_overrides(epochs=epochs, lr=lr, temperature=temperature, kd_weight=kd_weight,
                                         ce_weight=ce_weight, augment=augment, train_subset=subset or None,
                                         seed=seed, device=device, quiet=quiet)


def run_budget(ctx, crit, scores: dict, layers, x, y, budget: Budget, rcfg: RecoveryConfig | None, gates: Gates, *,
               steps: int = 1, round_to: int | None = None, out_path: Path | None = None, json_out: Path | None = None,
               meta: dict[str, Any], say, console, out) -> dict[str, Any]:
    """Prune ``ctx.model`` to ``budget`` (optionally iteratively), recover, gate on val; print and save."""
    from ..atomic import atomic_file
    from ..units import find_unit_layers

    example = ctx.preprocess(ctx.ds.split("train").images[:1]).to(ctx.device)
    recipe = {"criterion": crit.name, "budget": budget.describe(), "round_to": round_to,
              "recovery": rcfg.recipe() if rcfg else None}
    if steps > 1:
        if rcfg is None:
            from ..errors import ConfigError

            raise ConfigError("the iterative schedule recovers after each step; give --recover-epochs >= 1")
        it = iterative_budget(ctx, crit, x, y, find_unit_layers, example, budget, steps, rcfg, gates, log=say,
                              console=console)
        model, result = it.pop("model"), {"iterative": it}
        out.print(f"iterative: {steps} steps, budget {'met' if it['met'] else 'NOT met'} "
                  f"({budget.kind} ratio {it['steps'][-1]['cost']['ratio']:.2f}x)")
        report = None
    else:
        say(f"searching the ratio that meets {budget.describe()}")
        result = prune_to_budget(ctx, masker_for(ctx.model, crit, scores, layers, example, round_to), example, budget,
                                 rcfg, gates, recipe=recipe, console=console, log=say)
        model, report = result.pop("model"), result.pop("pruned_report")
        _print(result, budget, out)
    if out_path is not None:
        from ..models import save_checkpoint
        from ..removal import pruning_meta

        chosen_ratio = (result.get("chosen") or {}).get("ratio")
        pmeta = {**ctx.meta, "pruning": pruning_meta(report or {}, {**recipe, "ratio": chosen_ratio,
                                                                     "granularity": "group"}),
                 "budget": result.get("budget") or {"describe": budget.describe()}}
        rec = (result.get("chosen") or {}).get("recovery")
        if rec:  # the recovery recipe travels with the checkpoint (deploy manifests read it)
            pmeta["recovery"] = {k: rec.get(k) for k in ("key", "version", "recipe")}
        save_checkpoint(out_path, model, pmeta)
        out.print(f"checkpoint: {out_path}")
    if json_out is not None:
        payload = {"command": "medprune prune", "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **meta,
                   "recipe": recipe, **result}
        with atomic_file(json_out, "w") as fh:
            json.dump(payload, fh, indent=1, default=_jsonable)
        out.print(f"json: {json_out}")
    return result


def _jsonable(o):
    if isinstance(o, torch.Tensor) or hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


def _print(result: dict, budget: Budget, out) -> None:
    from rich.table import Table

    table = Table(title=f"prune to budget: {budget.describe()} (gates on val)")
    for col in ("ratio", f"{budget.kind} dense/pruned", "val acc before", "val acc after", "acc drop (pts)",
                "worst sens. drop (pts)", "gates"):
        table.add_column(col)
    for a in result["attempts"]:
        g = a["gates"]
        table.add_row(f"{a['ratio']:.2f}", f"{a['cost']['ratio']:.2f}x", f"{a['val_before']['accuracy']:.4f}",
                      f"{a['val']['accuracy']:.4f}", f"{g['accuracy_drop_pts']:.2f}",
                      f"{g['worst_sensitivity_drop_pts']:.2f}", "PASS" if g["passes"] else "FAIL")
    out.print(table)
    search = result["search"]
    if not search["met"]:  # say it here too: the search's own log line is hidden by --quiet
        out.print(f"budget NOT met ({budget.describe()}): the most compressed ratio tried, {search['ratio']:.2f}, "
                  f"gives {budget.kind} dense/pruned {search['cost']['ratio']:.2f}x")
    if result["passes_at_budget"]:
        out.print(f"budget met and gates pass on val at ratio {result['attempts'][0]['ratio']:.2f}")
    elif result["attempts"][0]["gates"]["passes"]:  # the budget, not the gates, failed (said above)
        out.print(f"gates pass on val at ratio {result['attempts'][0]['ratio']:.2f}")
    elif result["best_passing_ratio"] is not None:
        out.print(f"gates FAIL at the budget; best passing on val: ratio {result['best_passing_ratio']:.2f} "
                  f"({budget.kind} {result['best_passing_cost']['ratio']:.2f}x)")
    else:
        out.print("gates FAIL at the budget and at every backed-off ratio tried")
    if result.get("test"):
        t = result["test"]
        out.print(f"test (read once, for the returned model): accuracy {t['dense']['accuracy']:.4f} dense -> "
                  f"{t['pruned']['accuracy']:.4f} (n={t['pruned'].get('n')})")
