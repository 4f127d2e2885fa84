"""Stage 6, **prune**: masks at the chosen ratio, physical removal, dense vs pruned test metrics; then the
**clinical gates** on those metrics (exit 3, no package, when they fail)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolchain.errors import GateError

from .stage import Stage, live


@dataclass(frozen=True, kw_only=True)
class Prune(Stage):
    name = "prune"
    version = 2
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
        xt = ctx.preprocess(ctx.ds.split("test").images[:256])
        with torch.no_grad():
            parity = float((masked(xt) - pruned(xt)).abs().max())
        r = self.recipe  # key order as recorded since the first release (it is hashed into the weights file)
        recipe = {"criterion": r["criterion"], "sampling": r["sampling"], "n_per_class": r["n_per_class"],
                  "pool_per_class": r["pool_per_class"], "ratio": self.ratio, "granularity": gran,
                  "round_to": round_to, "seed": self.seed, "ratio_search": r["ratio_search"]}
        save_pruned(workdir / "pruned.safetensors", pruned, ctx.meta, report, recipe)
        dense_m = evaluate(ctx.model, ctx.ds, "test", ctx.preprocess)
        pruned_m = evaluate(pruned, ctx.ds, "test", ctx.preprocess)
        # sizes only: latency is measured by the bench stage, never stored in the manifest
        sizes = compare_models(ctx.model, pruned, self.example[:1], batch_sizes=())
        sizes = {k: sizes[k] for k in ("params", "macs", "size_bytes") if k in sizes}
        return {"recipe": recipe, "parity_masked_vs_removed": parity, "dense": dense_m, "pruned": pruned_m,
                "compare": sizes, "removal": {k: v for k, v in report.items() if k != "keep"}}


def prune_recipe(cfg) -> dict:
    """The recipe recorded with the pruned weights and in the manifest."""
    return {"criterion": cfg.criterion, "sampling": cfg.sampling, "n_per_class": cfg.n_per_class,
            "pool_per_class": cfg.pool_per_class, "granularity": cfg.granularity, "round_to": cfg.round_to,
            "ratio_search": "lossless on val, confirmed by the test gate" if cfg.ratio == "auto" else "fixed"}


def clinical_gates(cfg, dense: dict, pruned: dict) -> dict:
    """The gate record (manifest ``metrics.gates``); GateError (exit 3) when the pruned model fails."""
    from toolchain.prune_eval import accuracy_drop, sensitivity_drops

    acc = accuracy_drop(dense, pruned)
    sens = sensitivity_drops(dense, pruned)
    worst_cls = max(sens, key=sens.get) if sens else None
    gates = {"split": "test", "accuracy_drop_pts": acc, "sensitivity_drop_pts": sens,
             "tolerance_pts": cfg.tolerance, "sens_tolerance_pts": cfg.sens_tolerance, "passed": True}
    if acc > cfg.tolerance + 1e-9:
        raise GateError(f"clinical gate: pruned accuracy drops {acc:.2f} pts on the test split "
                        f"(allowed {cfg.tolerance}); no package written — lower --ratio or raise --tolerance")
    if worst_cls is not None and sens[worst_cls] > cfg.sens_tolerance + 1e-9:
        raise GateError(f"clinical gate: sensitivity for {worst_cls} drops {sens[worst_cls]:.2f} pts on the "
                        f"test split (allowed {cfg.sens_tolerance}); no package written — lower --ratio or "
                        "raise --sens-tolerance")
    return gates
