"""Stage 4, **ratio**: how much to prune, decided on val.

A fixed ``--ratio``, or ``auto``: the largest ratio (0.01 grid, up to ``--max-ratio``) that passes the
lossless rule (``toolchain.lossless``: paired bootstrap bounds of the accuracy and per-class sensitivity drops,
and of the QWK drop for graded classes: ``toolchain.ordinal.with_qwk_bound``) on the whole val split, found by ``toolchain.prune_eval.find_lossless`` (coarse scan, then bisection).
The search only ever returns a ratio that passed the rule on val, so no back-off is needed afterwards;
nothing here reads the test split.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolchain.lossless import RULE, resolution_warnings, rule_line
from toolchain.prune_eval import BoundEvaluator

from .stage import Stage, added, live

# the lossless rule's evaluator lives in toolchain.prune_eval: `prune --find-lossless` searches with it too
ValEvaluator = BoundEvaluator


@dataclass
class GroupEvaluator(ValEvaluator):
    """Group granularity: coupled units are scored and masked together (removal agrees exactly)."""

    example: Any = None  # a small input batch for Torch-Pruning's graph tracing
    round_to: int | None = None

    @functools.cached_property
    def _masker(self):
        from toolchain.removal import GroupMasker

        # the graph analysis runs once per search, not once per ratio tried
        return GroupMasker(self.ctx.model, self.scores, list(self.layers), self.example, self.round_to)

    def masks(self, ratio: float):
        return self._masker.masks(ratio)


def ratio_evaluator(ctx, scores, layers, example, *, criterion: str, granularity: str,
                    round_to: int | None, seed: int, qwk_tolerance: float | None = None) -> ValEvaluator:
    """Masks + judgements at any ratio for ``granularity`` (one evaluator serves the search and prune);
    ``qwk_tolerance`` (points, graded classes only) adds the QWK drop to the rule."""
    if granularity == "neuron":
        return ValEvaluator(ctx, scores, layers, meta={"criterion": criterion}, seed=seed,
                            qwk_tolerance=qwk_tolerance)
    return GroupEvaluator(ctx, scores, layers, meta={"criterion": criterion}, seed=seed, example=example,
                          round_to=round_to or None, qwk_tolerance=qwk_tolerance)


@dataclass(frozen=True, kw_only=True)
class RatioChoice(Stage):
    name = "ratio"
    version = 2  # 2: the paired-bootstrap lossless rule on the whole val split
    importance: str  # digest of the importance stage
    ratio: str  # "auto" or a fixed ratio ("0.2500")
    granularity: str
    tolerance: float
    sens_tolerance: float
    search_margin: float  # the search uses tolerances x margin (1: the full tolerances)
    max_ratio: float
    round_to: int
    seed: int  # bootstrap seed
    qwk_tolerance: float | None = added(None)  # graded classes: the evaluator's QWK bound (margin applied)
    search_aware: bool = added(False)  # Bonferroni over the ratios the search may judge (toolchain.lossless)
    evaluator: Any = live()

    def run(self, workdir: Path) -> dict:
        from toolchain.prune_eval import find_lossless

        tol, sens_tol = self.tolerance * self.search_margin, self.sens_tolerance * self.search_margin
        _, y = self.evaluator.probs(0.0, "val")
        warnings = resolution_warnings(y, self.evaluator.ctx.ds.class_names, tol, sens_tol)
        search = None
        if self.ratio == "auto":
            search = find_lossless(self.evaluator, tol, sens_tol, search_split="val", max_ratio=self.max_ratio,
                                   search_aware=self.search_aware)
            ratio = float(search["ratio"])
        else:
            ratio = float(self.ratio)
        k = search.get("search_k", 1) if search else 1  # a fixed ratio is one candidate: the 95 % rule
        val = self.evaluator.passes(ratio, "val", tol, sens_tol, **({"k": k} if k > 1 else {}))
        if self.ratio != "auto" and not val["passes"]:
            warnings.append(f"the fixed ratio {ratio:.2f} fails the lossless rule on val ({'; '.join(val['failed'])})"
                            "; the test gates still judge it")
        rule = (rule_line(k) if self.search_aware else RULE) + (
            "; graded classes: also the QWK drop's upper bound <= qwk-tolerance (points)"
            if self.qwk_tolerance is not None else "")
        return {"ratio": ratio, "mode": "auto" if self.ratio == "auto" else "fixed", "rule": rule,
                "split": "val", "val": val, "search": search, "warnings": warnings}


def choose_ratio(cfg, pipe, imp, evaluator) -> tuple[Any, float, dict]:
    """``(ratio stage, ratio to prune at, selection record for the manifest)``."""
    chosen = RatioChoice(importance=imp.key_digest, ratio=cfg.ratio, granularity=cfg.granularity,
                         tolerance=cfg.tolerance, sens_tolerance=cfg.sens_tolerance,
                         search_margin=cfg.search_margin, max_ratio=cfg.max_ratio, round_to=cfg.round_to,
                         seed=cfg.seed, qwk_tolerance=evaluator.qwk_tolerance, search_aware=cfg.search_aware,
                         evaluator=evaluator)(pipe)
    d = chosen.data
    v = d["val"]
    ci = v["accuracy_drop_ci_pts"]
    if cfg.search_aware:
        pipe.console.print(f"    rule: {d['rule']}")
    pipe.console.print(f"    pruning ratio {d['ratio']:.2f} ({d['mode']}; on val n={v['n']}: accuracy drop "
                       f"{v['accuracy_drop_pts']:.2f} pts [{100 * v['confidence']:.4g}% CI {ci[0]:.2f}, {ci[1]:.2f}], worst sensitivity "
                       f"drop {v['worst_sensitivity_drop_pts']:.2f} pts)")
    for line in d["warnings"]:
        pipe.console.print(f"[yellow]    warning: {line}[/]")
    selection = {k: d[k] for k in ("ratio", "mode", "rule", "split", "val", "warnings")}
    if d["search"]:
        selection["search"] = {k: v for k, v in d["search"].items() if k != "trace"}
        selection["search"]["tried"] = [{"ratio": t["ratio"], "passes": t["passes"],
                                         "accuracy_drop_ci_pts": t["accuracy_drop_ci_pts"]} for t in d["search"]["trace"]]
    return chosen, float(d["ratio"]), selection
