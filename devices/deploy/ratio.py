"""Stages 4–5, **ratio** and **gate-check**: how much to prune.

ratio: a fixed ``--ratio``, or ``auto``: the largest ratio lossless on val with the tolerances scaled by
``search_margin`` (``toolchain.prune_eval.find_lossless``).
gate-check (``auto`` only): that ratio must pass the clinical gates on test, else smaller candidates are
tried (see :meth:`GateCheck.run`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolchain.errors import GateError
from toolchain.prune_eval import RatioEvaluator

from .stage import Stage, live


@dataclass
class GroupEvaluator(RatioEvaluator):
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
                    round_to: int | None) -> RatioEvaluator:
    """Masks + metrics at any ratio for ``granularity`` (one evaluator serves search, back-off and prune)."""
    if granularity == "neuron":
        return RatioEvaluator(ctx, scores, layers, meta={"criterion": criterion})
    return GroupEvaluator(ctx, scores, layers, meta={"criterion": criterion}, example=example,
                          round_to=round_to or None)


@dataclass(frozen=True, kw_only=True)
class RatioChoice(Stage):
    name = "ratio"
    version = 1
    importance: str  # digest of the importance stage
    ratio: str  # "auto" or a fixed ratio ("0.2500")
    granularity: str
    tolerance: float
    sens_tolerance: float
    search_margin: float
    max_ratio: float
    round_to: int
    evaluator: Any = live()

    def run(self, workdir: Path) -> dict:
        from toolchain.prune_eval import find_lossless

        if self.ratio != "auto":
            return {"ratio": float(self.ratio), "search": None}
        found = find_lossless(self.evaluator, self.tolerance * self.search_margin,
                              self.sens_tolerance * self.search_margin, search_split="val",
                              max_ratio=self.max_ratio)
        return {"ratio": found["ratio"], "search": found}


@dataclass(frozen=True, kw_only=True)
class GateCheck(Stage):
    name = "gate-check"
    version = 2
    ratio_stage: str  # digest of the ratio stage
    tolerance: float
    sens_tolerance: float
    max_backoff: int
    chosen: Any = live()  # the ratio stage's result
    evaluator: Any = live()

    def run(self, workdir: Path) -> dict:
        """ratio=auto: the val choice must also pass the clinical gate on test, else step down.

        Val and test are different samples, so a ratio that is lossless on val can lose a few test
        images of the minority class. Candidates, largest first: the val choice, the smaller ratios
        the val search passed, then 0.02 steps down; at most ``max_backoff`` of them. The masked model
        is evaluated (removal is exact, checked in the prune stage). Using the test split here makes
        the packaged test metrics a *gated* estimate, which the manifest and model card say.
        """
        start = float(self.chosen["ratio"])
        passing = [t["ratio"] for t in ((self.chosen.get("search") or {}).get("trace") or []) if t["passes"]]
        grid = [round(start - 0.02 * k, 2) for k in range(1, 50)]
        candidates = sorted({r for r in [start, *passing, *grid] if 0 < r <= start}, reverse=True)
        tried = []
        for r in candidates[: self.max_backoff + 1]:
            res = self.evaluator.passes(r, "test", self.tolerance, self.sens_tolerance)
            tried.append(res)
            if res["passes"]:
                return {"ratio": r, "val_ratio": start, "tried_on_test": tried, "backed_off": r < start}
        if start == 0:
            return {"ratio": 0.0, "val_ratio": 0.0, "tried_on_test": [], "backed_off": False}
        worst = tried[-1] if tried else {}
        raise GateError(
            f"clinical gate: no pruning ratio from {start:.2f} down to {candidates[: self.max_backoff + 1][-1]:.2f} "
            f"keeps the test split within tolerance (last: accuracy drop {worst.get('accuracy_drop_pts', 0):.2f} "
            f"pts, worst sensitivity drop {worst.get('worst_sensitivity_drop_pts', 0):.2f} pts); no package written")


def choose_ratio(cfg, pipe, imp, evaluator) -> tuple[Any, float, dict | None]:
    """``(ratio stage, ratio to prune at, gate-check result or None)``."""
    chosen = RatioChoice(importance=imp.key_digest, ratio=cfg.ratio, granularity=cfg.granularity,
                         tolerance=cfg.tolerance, sens_tolerance=cfg.sens_tolerance,
                         search_margin=cfg.search_margin, max_ratio=cfg.max_ratio, round_to=cfg.round_to,
                         evaluator=evaluator)(pipe)
    if cfg.ratio != "auto":
        pipe.console.print(f"    pruning ratio {float(chosen.data['ratio']):.2f} (fixed)")
        return chosen, float(chosen.data["ratio"]), None
    gated = GateCheck(ratio_stage=chosen.key_digest, tolerance=cfg.tolerance, sens_tolerance=cfg.sens_tolerance,
                      max_backoff=cfg.max_backoff, chosen=chosen.data, evaluator=evaluator)(pipe)
    ratio = float(gated.data["ratio"])
    pipe.console.print(f"    pruning ratio {ratio:.2f} (lossless search on val, confirmed on test)")
    return chosen, ratio, gated.data
