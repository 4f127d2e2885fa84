"""Stage 6, **calibrate**: one temperature fit on val (minimum NLL), kept only if it also lowers val ECE,
folded into the classifier so the exported model needs nothing new and no prediction changes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .stage import Stage, live


@dataclass(frozen=True, kw_only=True)
class Calibrate(Stage):
    name = "calibrate"
    version = 3  # 3: no test evaluation here (the final report evaluates the deployed model on test)
    outputs = ("calibrated.safetensors",)
    policy: str = "nll-fit, kept if val ECE drops"
    prune: str  # digest of the prune stage
    pruned_path: Any = live()  # <prune stage>/pruned.safetensors
    ctx: Any = live()

    def run(self, workdir: Path) -> dict:
        from toolchain.models import load_checkpoint, save_checkpoint
        from toolchain.temperature import calibrate

        ctx = self.ctx
        pruned, meta = load_checkpoint(self.pruned_path)
        calibrated, report = calibrate(pruned, ctx.ds, ctx.preprocess, "val")
        save_checkpoint(workdir / "calibrated.safetensors", calibrated, {**meta, "calibration": report})
        return report


def calibrate_pruned(cfg, pipe, ctx, pr):
    """The calibrate stage's result, or None with ``--no-calibrate``."""
    if not cfg.calibrate:
        return None
    cal = Calibrate(prune=pr.key_digest, pruned_path=pr.path / "pruned.safetensors", ctx=ctx)(pipe)
    d = cal.data
    verdict = "applied" if d["applied"] else "not applied (val ECE did not improve; T = 1 kept)"
    pipe.console.print(f"    temperature {d['fitted_temperature']:.3f} fit on val (val ECE {d['ece_before']:.3f} "
                       f"→ {d['ece_after']:.3f}): {verdict}")
    return cal
