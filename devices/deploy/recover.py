"""Stages 4 and 5b when a budget is given (``--speedup``, ``--macs-budget``, ``--params-budget``, ``--latency-ms``).

4 **budget** replaces the lossless ratio search: the smallest ratio whose *physically removed* model meets
  the budget (``toolchain.budget.search_budget``). Latency is measured with ONNX Runtime on this machine
  (batch 1, dense and pruned interleaved) for CPU-runtime targets; for a target that is not attached (TensorRT
  on a Jetson) it is the roofline prediction on that target's profile, labelled ``predicted (roofline,
  <profile>)``, with the MACs ratio only as a labelled fallback (``budget_latency``).
5b **recover**: the pruned model of stage 5 is fine-tuned with distillation from the dense model
  (``toolchain.recovery``, cached by its own key) and judged on val by the deploy's lossless rule
  (``lossless.judge``). Its weights replace the pruned ones downstream (calibrate, export, test report,
  package); the manifest's pruning record carries the budget, the measured cost and the recovery recipe.

Nothing here reads the test split; the clinical gates judge the recovered model on test once, as always.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolchain.lossless import RULE, judge, rule_line

from .budget_latency import latency_for, latency_source
from .stage import Stage, added, live

BACKOFF = (0.75, 0.5, 0.25)  # fractions of the budget's ratio tried when its recovered model fails on val
# recovery recipes tried in order on val (overrides of toolchain.recovery.finetune.RECIPE): pure distillation,
# then cross-entropy + distillation with augmentation (the recipe deploy used before the recipe was unified,
# which passed the earlier ResNet50 SPEEDUP=3 deploy); the first passing deploy's rule on val is packaged
CANDIDATES = {"kd": {}, "kd+ce+augment": {"ce_weight": 1.0, "augment": True}}


@dataclass(frozen=True, kw_only=True)
class BudgetRatio(Stage):
    name = "budget"
    version = 2  # 2: latency from budget_latency (roofline for an absent target), not the runtime's name
    importance: str  # digest of the importance stage
    budget: dict  # {"kind", "value"} (toolchain.budget.Budget)
    granularity: str
    round_to: int
    latency: dict  # budget_latency.latency_source: measured here, roofline-predicted, or counted
    max_ratio: float
    evaluator: Any = live()
    scores: Any = live()
    example: Any = live()

    def run(self, workdir: Path) -> dict:
        from toolchain.budget import Budget, search_budget
        from toolchain.removal import remove_units

        ctx = self.evaluator.ctx

        def prune(ratio: float):
            return remove_units(ctx.model, self.evaluator.masks(ratio), self.example, self.granularity,
                                self.round_to or None, scores=self.scores, strict=False)

        latency_fn, label, quantity = latency_for(self.latency, ctx.model, self.example[:1])
        found = search_budget(prune, ctx.model, self.example[:1], Budget(**self.budget), max_ratio=self.max_ratio,
                              latency_fn=latency_fn, latency_label=label)
        return {**found.summary(), "latency_quantity": quantity}


@dataclass(frozen=True, kw_only=True)
class Recover(Stage):
    name = "recover"
    version = 1
    outputs = ("pruned.safetensors",)
    prune: str  # digest of the prune stage
    recovery: dict  # RecoveryConfig.recipe()
    budget: dict
    tolerance: float
    sens_tolerance: float
    seed: int
    search_k: int = added(1)  # --search-aware: candidates the back-off may judge on val (toolchain.lossless)
    ctx: Any = live()
    pruned: Any = live()  # the prune StageResult
    device: str = live("cpu")

    def run(self, workdir: Path) -> dict:
        from toolchain.evaluate import evaluate, predict
        from toolchain.models import load_checkpoint, save_checkpoint
        from toolchain.recovery import RecoveryConfig, recover_cached

        ctx, d = self.ctx, self.pruned.data
        model, meta = load_checkpoint(self.pruned.path / "pruned.safetensors")
        rcfg = RecoveryConfig(**self.recovery, device=self.device)
        recovered, info = recover_cached(model, ctx.model, ctx.ds, ctx.preprocess, rcfg, meta=meta,
                                         teacher_sha=ctx.sha256, console=None)
        record = {"key": info["key"], "version": info.get("version"), "recipe": info["recipe"]}
        save_checkpoint(workdir / "pruned.safetensors", recovered, {**meta, "recovery": record})
        p_dense, y = predict(ctx.model, ctx.ds, "val", ctx.preprocess)
        p_rec, _ = predict(recovered, ctx.ds, "val", ctx.preprocess)
        judged = judge(y, p_dense, p_rec, ctx.ds.class_names, tolerance=self.tolerance,
                       sens_tolerance=self.sens_tolerance, seed=self.seed, k=self.search_k)
        return {**d, "recipe": {**d["recipe"], "budget": self.budget, "recovery": record},
                "val": {"dense": d["val"]["dense"], "pruned": evaluate(recovered, ctx.ds, "val", ctx.preprocess)},
                "val_before_recovery": d["val"]["pruned"], "judge_val": judged,
                "recovery": {"history": info.get("history"), "summary": info.get("summary")}}


def budget_ratio(cfg, pipe, imp, evaluator, scores, example, profile) -> tuple[Any, float]:
    """``(budget stage, ratio to prune at)``."""
    st = BudgetRatio(importance=imp.key_digest, budget=cfg.budget(), granularity=cfg.granularity,
                     round_to=cfg.round_to, latency=latency_source(cfg.budget(), profile, cfg.precision),
                     max_ratio=cfg.max_ratio, evaluator=evaluator, scores=scores, example=example)(pipe)
    d = st.data
    pipe.console.print(f"    budget {cfg.budget()['kind']} {cfg.budget()['value']:g}: ratio {d['ratio']:.2f} gives "
                       f"{d['cost']['ratio']:.2f}x ({d['latency_label']})"
                       + ("" if d["met"] else " — budget NOT reachable up to --max-ratio"))
    return st, float(d["ratio"])


@dataclass(frozen=True, kw_only=True)
class BudgetCost(Stage):
    """The budget's quantity (dense vs pruned) of a backed-off prune stage, measured as the search measures it."""

    name = "budget-cost"
    version = 2  # 2: latency from budget_latency, as BudgetRatio 2
    prune: str  # digest of the prune stage
    budget: dict
    latency: dict  # budget_latency.latency_source
    ctx: Any = live()
    pruned: Any = live()  # the prune StageResult
    example: Any = live()

    def run(self, workdir: Path) -> dict:
        from toolchain.budget import measure
        from toolchain.models import load_checkpoint

        model, _ = load_checkpoint(self.pruned.path / "pruned.safetensors")
        latency_fn, label, quantity = latency_for(self.latency, self.ctx.model, self.example[:1])
        cost = measure(self.budget["kind"], self.ctx.model, model.eval(), self.example[:1], latency_fn=latency_fn)
        return {"cost": cost, "latency_label": label, "latency_quantity": quantity}


def recovery_candidates(cfg) -> list[tuple[str, Any]]:
    """``[(name, RecoveryConfig)]`` tried in order on val: ``CANDIDATES`` over the one recovery recipe, or only
    the recipe the user set when a loss/augmentation flag is given (``--recover-epochs`` applies to all)."""
    from toolchain.recovery import RecoveryConfig

    given = {"temperature": cfg.kd_temperature, "kd_weight": cfg.kd_weight, "ce_weight": cfg.ce_weight,
             "augment": cfg.recover_augment}
    common = {"epochs": cfg.recover_epochs, "seed": cfg.seed}
    if any(v is not None for v in given.values()):
        return [("as given", RecoveryConfig.with_overrides(**common, **given))]
    return [(name, RecoveryConfig.with_overrides(**common, **over)) for name, over in CANDIDATES.items()]


def recover_pruned(cfg, pipe, ctx, pr, budget_stage, prune_at, example, profile) -> tuple[Any, dict, Any]:
    """``(recover stage, selection record for the manifest, prune stage it recovered)``; GateError otherwise.

    The budget's model is recovered with each recipe of :func:`recovery_candidates` in turn and judged on val by
    deploy's rule; the first that passes is packaged (the recipe is a val choice, like the ratio). If none
    passes, smaller budgets are searched on val (``BACKOFF`` fractions of the ratio, each with the candidates)
    and deploy stops before reading test (GateError, no package) naming the best budget passing on val, or
    packages that one with ``--ship-best-passing`` (labelled: the budget is NOT met).
    """
    from toolchain.errors import GateError
    from toolchain.settings import resolve_device

    b = budget_stage.data
    ratios = [b["ratio"]] + [r for r in dict.fromkeys(round(b["ratio"] * f, 2) for f in BACKOFF) if 0 < r < b["ratio"]]
    attempts, found = [], None
    # --search-aware: every (ratio, recipe) pair the back-off may judge on val counts, fixed before the first
    search_k = len(ratios) * len(recovery_candidates(cfg)) if cfg.search_aware else 1
    rule = rule_line(search_k) if cfg.search_aware else RULE
    if cfg.search_aware:
        pipe.console.print(f"    rule: {rule}")
    for i, ratio in enumerate(ratios):
        pruned = pr if i == 0 else prune_at(ratio)
        cost = ({k: b[k] for k in ("cost", "latency_label", "latency_quantity")} if i == 0 else
                BudgetCost(prune=pruned.key_digest, budget=cfg.budget(),
                           latency=latency_source(cfg.budget(), profile, cfg.precision), ctx=ctx, pruned=pruned,
                           example=example)(pipe).data)
        for name, rcfg in recovery_candidates(cfg):
            rec = Recover(prune=pruned.key_digest, recovery=rcfg.recipe(), budget=cfg.budget(), tolerance=cfg.tolerance,
                          sens_tolerance=cfg.sens_tolerance, seed=cfg.seed, search_k=search_k, ctx=ctx, pruned=pruned,
                          device=resolve_device(cfg.device))(pipe)
            v = rec.data["judge_val"]
            attempts.append({"ratio": ratio, "recipe": name, "cost": cost["cost"], "latency_label": cost["latency_label"],
                             "latency_quantity": cost["latency_quantity"],
                             "passes": v["passes"], "failed": v["failed"], "accuracy_drop_pts": v["accuracy_drop_pts"],
                             "worst_sensitivity_drop_pts": v["worst_sensitivity_drop_pts"]})
            pipe.console.print(f"    recovered ({name}) at ratio {ratio:.2f} ({cost['cost']['ratio']:.2f}x): val accuracy "
                               f"drop {v['accuracy_drop_pts']:.2f} pts, worst sensitivity drop "
                               f"{v['worst_sensitivity_drop_pts']:.2f} pts ({'passes' if v['passes'] else 'FAILS'} the rule)")
            if v["passes"]:
                found = (rec, pruned, attempts[-1])
                break
        if found:
            break
    kind_value = f"{cfg.budget()['kind']} {cfg.budget()['value']:g}"
    at_budget = [a for a in attempts if a["ratio"] == b["ratio"]]
    fails = "; ".join(f"{a['recipe']}: {', '.join(a['failed'])}" for a in at_budget if not a["passes"])
    met_here = found is not None and found[2]["ratio"] == b["ratio"]  # passes at the budget's own ratio
    if found is None or (not met_here and not cfg.ship_best_passing):
        best = (f"best passing on val: {found[2]['cost']['ratio']:.2f}x (ratio {found[2]['ratio']:.2f}, recovery "
                f"{found[2]['recipe']}); --ship-best-passing packages it" if found else
                f"no smaller budget tried passes either (ratios {', '.join(f'{r:.2f}' for r in ratios[1:])})")
        raise GateError(f"budget {kind_value} not met on val: at ratio {b['ratio']:.2f} ({b['cost']['ratio']:.2f}x) the "
                        f"recovered model fails deploy's lossless rule ({fails}); {best}. Test not read, no package "
                        "written")
    rec, pruned, chosen = found
    warnings = [] if b["met"] else [f"budget not reachable up to ratio {b['ratio']:.2f} ({b['cost']['ratio']:.2f}x)"]
    if not met_here:
        warnings.append(f"budget {kind_value} not met on val ({fails}); packaged the best budget passing on val "
                        f"(--ship-best-passing): ratio {chosen['ratio']:.2f}, {chosen['cost']['ratio']:.2f}x")
    elif len(attempts) > 1:
        warnings.append(f"recovery recipe chosen on val: {chosen['recipe']} (the first candidate of "
                        f"{', '.join(CANDIDATES)} that passes the rule; {fails})")
    selection = {"ratio": chosen["ratio"], "mode": "budget", "rule": rule, "split": "val", "val": rec.data["judge_val"],
                 "warnings": warnings, "attempts": attempts, "recovery_recipe": chosen["recipe"],
                 "budget": {**cfg.budget(), "met": bool(b["met"] and met_here),
                            "budget_ratio_met": b["met"], "passes_at_budget": met_here,
                            "cost": chosen["cost"], "latency_label": chosen["latency_label"],
                            "latency_quantity": chosen["latency_quantity"]}}
    return rec, selection, pruned
