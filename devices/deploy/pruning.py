"""Stage 5, **prune**: masks at the chosen ratio, physical removal (parity masked vs removed checked on
val images), dense vs pruned val metrics. Test is not read here: the clinical gates judge the test split
once, in the final report (``report.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .stage import Stage, live


@dataclass(frozen=True, kw_only=True)
class Prune(Stage):
    name = "prune"
    version = 3  # 3: val metrics and val parity images (test is read only by the final report)
    outputs = ("masks", "pruned.safetensors")
    ratio_stage: str  # digest of the ratio stage (criterion, sampling, checkpoint, data are upstream of it)
    ratio: float
    seed: int
    recipe: dict  # criterion, sampling, n_per_class, pool_per_class, granularity, round_to, ratio_search
    ctx: Any = live()
    evaluator: Any = live()
    scores: Any = live()
    example: Any = live()

    def run(self, workdir: Path) -> dict:
        import torch

        from toolchain.evaluate import evaluate
        from toolchain.masking import apply_masks
        from toolchain.removal import compare_models, remove_units, save_pruned

        ctx, gran, round_to = self.ctx, self.recipe["granularity"], self.recipe["round_to"]
        masks = self.evaluator.masks(self.ratio)
        masks.save(workdir / "masks")
        pruned, report = remove_units(ctx.model, masks, self.example, gran, round_to or None, scores=self.scores,
                                      strict=False)
        masked = apply_masks(ctx.model, masks)
        xt = ctx.preprocess(ctx.ds.split("val").images[:256])
        with torch.no_grad():
            parity = float((masked(xt) - pruned(xt)).abs().max())
        r = self.recipe  # key order as recorded since the first release (it is hashed into the weights file)
        recipe = {"criterion": r["criterion"], "sampling": r["sampling"], "n_per_class": r["n_per_class"],
                  "pool_per_class": r["pool_per_class"], "ratio": self.ratio, "granularity": gran,
                  "round_to": round_to, "seed": self.seed, "ratio_search": r["ratio_search"]}
        save_pruned(workdir / "pruned.safetensors", pruned, ctx.meta, report, recipe)
        dense_m = evaluate(ctx.model, ctx.ds, "val", ctx.preprocess)
        pruned_m = evaluate(pruned, ctx.ds, "val", ctx.preprocess)
        # sizes only: latency is measured by the bench stage, never stored in the manifest
        sizes = compare_models(ctx.model, pruned, self.example[:1], batch_sizes=())
        sizes = {k: sizes[k] for k in ("params", "macs", "size_bytes") if k in sizes}
        return {"recipe": recipe, "parity_masked_vs_removed": parity, "val": {"dense": dense_m, "pruned": pruned_m},
                "compare": sizes, "removal": {k: v for k, v in report.items() if k != "keep"}}


def prune_recipe(cfg) -> dict:
    """The recipe recorded with the pruned weights and in the manifest."""
    return {"criterion": cfg.criterion, "sampling": cfg.sampling, "n_per_class": cfg.n_per_class,
            "pool_per_class": cfg.pool_per_class, "granularity": cfg.granularity, "round_to": cfg.round_to,
            "ratio_search": _ratio_search(cfg)}


def _ratio_search(cfg) -> str:
    budget = cfg.budget()
    if budget is not None:
        return (f"smallest ratio meeting the budget ({budget['kind']} {budget['value']:g}), recovered by distillation; "
                "backed off on val if the recovered model fails the lossless rule")
    return "largest lossless on val (paired bootstrap bound)" if cfg.ratio == "auto" else "fixed"
