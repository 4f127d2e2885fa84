"""Stage 8, **test-report**: the test split, read once, after every choice was made on val.

Dense, pruned and deployed (temperature-scaled) models are scored on the whole test split with 95 %
intervals and per-class n (after pruning to a budget "pruned" is the recovered model, and the pruned model
before recovery is reported too, as ``pruned_before_recovery``: reported, never judged) (``toolchain.metrics.compute_metrics``), and the deployed model's drops
against the dense one get paired bootstrap intervals (``lossless.judge``). Then the **clinical gates**
judge those held-out numbers once: the test accuracy drop must be at most ``--tolerance`` points and
every class's sensitivity drop at most ``--sens-tolerance`` points (point estimates; the intervals are
reported beside them). With graded classes (``--ordinal``, or a checkpoint trained with it) the test
QWK drop must also be at most ``--qwk-tolerance`` points (``toolchain.ordinal``), and QWK and the mean
absolute grade error are reported with their intervals. A failure is exit 3 with the numbers, and no
package is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolchain.errors import GateError
from toolchain.lossless import judge

from .stage import Stage, added, live


@dataclass(frozen=True, kw_only=True)
class FinalReport(Stage):
    name = "test-report"
    version = 1
    checkpoint: str  # sha256 of the dense weights
    data: str  # dataset fingerprint
    pruned: str  # digest of the prune stage
    deployed: str  # digest of the stage holding the deployed weights (calibrate, else prune)
    tolerance: float
    sens_tolerance: float
    seed: int  # bootstrap seed
    ordinal: bool = added(False)  # graded classes: QWK and grade MAE, and their drops
    unrecovered: str | None = added(None)  # budget runs: digest of the prune stage before recovery
    ctx: Any = live()
    pruned_weights: Any = live()
    deployed_weights: Any = live()
    unrecovered_weights: Any = live()

    def run(self, workdir: Path) -> dict:
        from toolchain.evaluate import predict
        from toolchain.metrics import compute_metrics
        from toolchain.models import load_checkpoint
        from toolchain.ordinal import ordinal_drops

        ctx, names = self.ctx, list(self.ctx.ds.class_names)
        probs = {"dense": predict(ctx.model, ctx.ds, "test", ctx.preprocess)}
        weights = {"pruned": self.pruned_weights, "deployed": self.deployed_weights,
                   "pruned_before_recovery": self.unrecovered_weights}
        for which, path in weights.items():
            if path is None:
                continue
            model, _ = load_checkpoint(path)
            probs[which] = predict(model, ctx.ds, "test", ctx.preprocess)
        y = probs["dense"][1]
        out: dict[str, Any] = {"split": "test", "n": int(len(y)), "read": "once, after every choice was made on val"}
        for which, (p, _) in probs.items():
            out[which] = compute_metrics(y, p, names, seed=self.seed, ordinal=self.ordinal)
        out["drop"] = judge(y, probs["dense"][0], probs["deployed"][0], names, tolerance=self.tolerance,
                            sens_tolerance=self.sens_tolerance, seed=self.seed, split="test")
        if self.ordinal:
            out["ordinal_drop"] = ordinal_drops(y, probs["dense"][0], probs["deployed"][0], seed=self.seed)
        return out


def final_report(cfg, pipe, ctx, trained, pr, source, weights: Path, unrecovered=None):
    """The final report stage (call inside ``holdout.report_phase()``); ``unrecovered``: the prune stage
    before recovery (budget runs), whose test metrics are reported beside the recovered model's."""
    from toolchain.ordinal import is_ordinal

    return FinalReport(checkpoint=trained.sha256, data=ctx.ds.fingerprint, pruned=pr.key_digest,
                       deployed=source.key_digest, tolerance=cfg.tolerance, sens_tolerance=cfg.sens_tolerance,
                       seed=cfg.seed, ordinal=is_ordinal(ctx.ds), ctx=ctx, pruned_weights=pr.path / "pruned.safetensors",
                       deployed_weights=weights, unrecovered=unrecovered.key_digest if unrecovered else None,
                       unrecovered_weights=unrecovered.path / "pruned.safetensors" if unrecovered else None)(pipe)


def clinical_gates(cfg, report: dict) -> dict:
    """The gate record (manifest ``metrics.gates``); GateError (exit 3) with the numbers when it fails."""
    d = report["drop"]
    acc, acc_ci = d["accuracy_drop_pts"], d["accuracy_drop_ci_pts"]
    sens, sens_ci = d["sensitivity_drop_pts"], d["sensitivity_drop_ci_pts"]
    gates = {"split": "test", "n": d["n"], "rule": "point drops on the held-out test split <= tolerances",
             "accuracy_drop_pts": acc, "accuracy_drop_ci_pts": acc_ci, "sensitivity_drop_pts": sens,
             "sensitivity_drop_ci_pts": sens_ci, "support": d["support"], "tolerance_pts": cfg.tolerance,
             "sens_tolerance_pts": cfg.sens_tolerance, "passed": True}
    failed = []
    if acc > cfg.tolerance + 1e-9:
        failed.append(f"accuracy drop {acc:.2f} pts [95% CI {acc_ci[0]:.2f}, {acc_ci[1]:.2f}] (allowed "
                      f"{cfg.tolerance})")
    failed += [f"{name} sensitivity drop {v:.2f} pts [95% CI {sens_ci[name][0]:.2f}, {sens_ci[name][1]:.2f}] "
               f"(n={d['support'][name]}, allowed {cfg.sens_tolerance})"
               for name, v in sens.items() if v > cfg.sens_tolerance + 1e-9]
    failed += _qwk_gate(cfg, report.get("ordinal_drop"), gates)
    if failed:
        raise GateError(f"clinical gate failed on the test split (n={d['n']}, read once after choosing on val): "
                        f"{'; '.join(failed)}; no package written — lower --ratio or raise the tolerance")
    return gates


def _qwk_gate(cfg, od: dict | None, gates: dict) -> list[str]:
    """Graded classes: record the QWK drop in ``gates`` and return the failure line when it exceeds
    ``--qwk-tolerance`` (undefined QWK, a single grade on test, is recorded and not judged)."""
    if not od:
        return []
    drop, ci = od["qwk_drop_pts"], od["qwk_drop_ci_pts"]
    gates.update(qwk_drop_pts=drop, qwk_drop_ci_pts=ci, qwk_tolerance_pts=cfg.qwk_tolerance,
                 grade_mae_increase=od["grade_mae_increase"], grade_mae_increase_ci=od["grade_mae_increase_ci"])
    from toolchain.ordinal import qwk_drop_passes

    if qwk_drop_passes(drop, cfg.qwk_tolerance):
        return []
    return [f"QWK drop {drop:.2f} pts [95% CI {ci[0]:.2f}, {ci[1]:.2f}] (allowed {cfg.qwk_tolerance})"]
