"""What the package says about itself: ``manifest.json`` (facts, machine-readable) and ``MODEL_CARD.md``
(the same facts for a reader, rendered from ``templates/model_card.md``)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from string import Template
from typing import Any

CARD_TEMPLATE = Path(__file__).with_name("templates") / "model_card.md"
RUNTIME_LINES = {
    "tensorrt": "On the device (steps in `JETSON.md`): `./build_engine.sh` (trtexec builds a TensorRT engine from "
                "the ONNX file beside the package and records its checksums) then `./run_trt.sh` for latency and "
                "agreement on `testset.npz`; `python3 predict.py IMAGE` uses that engine when its recorded ONNX "
                "checksum matches, else says so and falls back to ONNX Runtime. INT8 is not offered for Jetson "
                "until measured on a GPU.",
    "openvino": "`python3 predict.py IMAGE` runs the OpenVINO IR (`--runtime onnxruntime` for the ONNX file).",
}
DEFAULT_RUNTIME_LINE = "`python3 predict.py IMAGE` runs the ONNX file with onnxruntime."


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return (out.stdout.strip() or None) if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def build_manifest(cfg, profile, ctx, *, exported: str, pr, exp, bench, fid: dict | None, cal: dict | None,
                   test: dict, gates: dict, selection: dict, training: dict | None, reports: dict) -> dict:
    """Everything reproducible about the package (package-level fields are added by export.package)."""
    from toolchain import __version__

    from .description import dataset_description

    summary = bench.data["summary"]
    return {
        "runtime_target": profile.name,
        "precision": cfg.precision,
        "exported_precision": exported,
        "input": {"name": "image", "shape": [None, int(ctx.meta["in_chans"]), int(ctx.meta["img_size"]),
                                             int(ctx.meta["img_size"])], "dtype": "float32", "layout": "NCHW"},
        # the test split, read once after every choice was made on val; 95 % intervals and n throughout
        "metrics": {"split": "test", "n": test["n"], "read": test["read"], "dense": test["dense"],
                    "pruned": test["pruned"],  # after pruning to a budget: the recovered model
                    # what the package's model computes: the pruned model with its temperature folded in
                    "deployed": test["deployed"], "drop": test["drop"], "gates": gates,
                    "val": pr.data["val"], **_before_recovery(test, pr.data)},
        "recovery": recovery_record(pr.data, selection),
        # how the ratio was chosen (val only): the rule, its numbers with intervals, and its warnings
        "selection": selection,
        "warnings": list(selection.get("warnings") or []),
        "calibration": cal or {"temperature": 1.0, "note": "not calibrated (--no-calibrate)"},
        "explanation_fidelity": fid,
        "pruning": {**pr.data["recipe"], "removal": pr.data["removal"], "compare": pr.data["compare"],
                    "parity_masked_vs_removed": pr.data["parity_masked_vs_removed"]},
        "export_verification": exp.data["verification"],
        # numbers measured here vary run to run: they live in reports/, the manifest only points there
        "benchmark": {"reports": sorted(f"reports/{n}" for n in reports),
                      "kind": "measured" if summary["measured"] else "predicted",
                      "note": "latency/throughput/memory are in reports/ (measured on the build machine "
                              "or predicted for an absent device); they are not reproducible byte for byte"},
        "dataset": {"name": ctx.ds.name, "fingerprint": ctx.ds.fingerprint,
                    "source": Path(str(getattr(ctx.ds, "source", "") or "")).name or None,
                    # the card's Data section: this dataset's own description, or a line saying there is none
                    "description": dataset_description(ctx.ds, cfg.data_description),
                    "split": split_record(ctx.ds)},
        "training": training,
        # what the training images looked like: predict.py and medprune predict warn about inputs far from it
        "input_profile": input_profile_for(ctx),
        "source_checkpoint_sha256": ctx.sha256,
        "seeds": {"train": (training or {}).get("seed", cfg.seed), "sampling": cfg.seed,
                  "fidelity": cfg.seed, "export_calibration": cfg.seed},
        "medprune": {"version": __version__, "git_commit": git_commit()},
        "reproducibility": "same seed and inputs → identical files except reports/*; in manifest.json only "
                           "files['reports/…'] and manifest_sha256 differ",
    }


def _before_recovery(test: dict, pruned: dict) -> dict:
    """Budget runs: the pruned model before recovery, on test (reported, not judged) and on val."""
    if "pruned_before_recovery" not in test:
        return {}
    return {"pruned_before_recovery": test["pruned_before_recovery"],
            "val_before_recovery": pruned.get("val_before_recovery")}


def recovery_record(pruned: dict, selection: dict) -> dict | None:
    """Budget runs: the budget, the cost measured at the chosen ratio, and the recovery recipe; None otherwise."""
    if selection.get("mode") != "budget":
        return None
    budget = selection.get("budget") or {}
    cost = budget.get("cost") or {}
    rec = (pruned.get("recipe") or {}).get("recovery") or {}
    timed = budget.get("kind") in ("speedup", "latency_ms")
    return {"budget": {k: budget.get(k) for k in ("kind", "value", "met", "passes_at_budget")},
            # every ratio tried (the budget's, then back-offs while the recovered model fails on val)
            "attempts": selection.get("attempts"),
            # at the packaged ratio, on the model before recovery (recovery keeps the architecture)
            # latency measured here or predicted for an absent target (the label says which), else counted
            "measured": {"quantity": (budget.get("latency_quantity") or "batch-1 latency, median ms") if timed
                         else budget.get("kind"),
                         "dense": cost.get("dense"), "pruned": cost.get("pruned"),
                         "speedup" if timed else "reduction": cost.get("ratio"),
                         "label": budget.get("latency_label") if timed else "counted"},
            # chosen on val among the pre-declared candidates (devices/deploy/recover.CANDIDATES), or as given
            "recipe_name": selection.get("recovery_recipe"),
            "recipe": rec.get("recipe"), "key": rec.get("key"), "version": rec.get("version"),
            "fit": (pruned.get("recovery") or {}).get("summary"),
            "val_rule": {k: (selection.get("val") or {}).get(k) for k in ("passes", "failed")}}


def split_record(ds) -> dict:
    """How the val split every choice was made on came about (the checkpoint's training split, as loaded):
    the official one, enlarged by a fraction of train (``--val-from-train``), or cut from train
    (``--val-fraction``, data without a val split); with the images per split."""
    from toolchain.data.splits import VAL_CUT, VAL_FROM_TRAIN

    moved, cut = ds.params.get(VAL_FROM_TRAIN), ds.params.get(VAL_CUT)
    return {"val": "official + moved from train" if moved else "cut from train" if cut else "official",
            VAL_FROM_TRAIN: moved, VAL_CUT: cut, "n": {name: len(ds.splits[name]) for name in ds.splits}}


def _split_line(split: dict | None) -> str:
    """The model card's sentence on the val split (manifest ``dataset.split``)."""
    from toolchain.data.splits import VAL_CUT, VAL_FROM_TRAIN

    if not split:
        return ""
    n = split["n"]
    if split.get(VAL_FROM_TRAIN):
        how = (f"the official val split plus {split[VAL_FROM_TRAIN]['fraction']:.0%} of train moved there "
               f"(stratified, seed {split[VAL_FROM_TRAIN]['seed']}; `--val-from-train`)")
    elif split.get(VAL_CUT):
        how = (f"{split[VAL_CUT]['fraction']:.0%} of train cut from it (stratified, seed {split[VAL_CUT]['seed']}; "
               "the data has no val split; `--val-fraction`)")
    else:
        how = "the official val split"
    caveat = ("" if split["val"] == "official" else " A val carved from train shares its distribution: it cannot "
              "show a shift to the test set's or another site's images.")
    return (f" Val (n={n.get('val')}), where every choice was made, is {how}; train n={n.get('train')}, "
            f"test n={n.get('test')}.{caveat}")


def input_profile_for(ctx) -> dict:
    """The training images' profile the checkpoint recorded, else (a model imported without ``--data``)
    the profile of the deploy data's train split, the images it is deployed for."""
    from toolchain.data.input_profile import input_profile

    return ctx.meta.get("input_profile") or input_profile(ctx.ds)


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def _ci(m: dict, key: str) -> str:
    """``value [lo, hi]`` of figure ``key`` in metrics ``m``."""
    ci = m.get(f"{key}_ci")
    return _fmt(m.get(key)) + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")


def _metric_rows(test: dict, cal: dict) -> list[str]:
    """Dense vs deployed on test, each figure with its 95 % interval and the n behind it."""
    d, dep = test["dense"], test["deployed"]
    name = "deployed" + (f" (pruned, temperature {cal['temperature']:.3f})" if "fit_split" in cal else " (pruned)")
    rows = [f"| metric (n) | dense | {name} |", "|---|---:|---:|"]
    graded = ("qwk", "grade_mae") if "qwk" in d else ()  # ordered grades (--ordinal): toolchain.ordinal
    for key in ("accuracy", "balanced_accuracy", "auc", *graded):
        rows.append(f"| {key} ({test['n']}) | {_ci(d, key)} | {_ci(dep, key)} |")
    rows.append(f"| ece ({test['n']}) | {_fmt(d.get('ece'))} | {_fmt(dep.get('ece'))} |")
    for cls, row in d.get("per_class", {}).items():
        other = dep["per_class"][cls]
        rows.append(f"| sensitivity {cls} ({row.get('support')}) | {_ci(row, 'sensitivity')} | "
                    f"{_ci(other, 'sensitivity')} |")
        rows.append(f"| specificity {cls} ({row.get('n_negative')}) | {_ci(row, 'specificity')} | "
                    f"{_ci(other, 'specificity')} |")
    return rows


def _selection_line(selection: dict) -> str:
    v = selection["val"]
    ci = v["accuracy_drop_ci_pts"]
    how = {"auto": "the largest ratio on a 0.01 grid that passes the rule",
           "budget": f"the smallest ratio meeting the budget ({selection.get('budget', {}).get('kind')}), "
                     "recovered by distillation and judged by the rule"}.get(selection["mode"],
                                                                             "a fixed ratio, judged by the rule")
    worst = max(v["sensitivity_drop_ci_pts"].items(), key=lambda kv: kv[1][1], default=None)
    sens = (f"; worst class sensitivity drop bound {worst[1][1]:.2f} pts ({worst[0]}, n={v['support'][worst[0]]})"
            if worst else "")
    qwk = (v.get("ordinal") or {}).get("qwk_drop_ci_pts")
    sens += f"; QWK drop bound {qwk[1]:.2f} pts" if qwk else ""
    return (f"Rule — {selection['rule']}. Ratio {selection['ratio']:.2f} is {how}: on val (n={v['n']}) the accuracy "
            f"drop is {v['accuracy_drop_pts']:.2f} pts [{100 * v.get('confidence', 0.95):.4g}% CI {ci[0]:.2f}, "
            f"{ci[1]:.2f}]{sens}; it "
            f"{'passes' if v['passes'] else 'does not pass'} the rule.{_budget_line(selection.get('budget'))}")


def _budget_line(budget: dict | None) -> str:
    """The budget's cost at the packaged ratio, with how it was obtained (measured here, predicted, counted)."""
    if not budget:
        return ""
    cost = budget.get("cost") or {}
    timed = budget.get("kind") in ("speedup", "latency_ms")
    return (f" Budget {budget['kind']} {budget['value']:g}: dense/pruned {cost.get('ratio', float('nan')):.2f}x "
            f"({budget.get('latency_label') if timed else 'counted'}); {'met' if budget.get('met') else 'NOT met'}.")


def _gates_line(gates: dict) -> str:
    ci = gates["accuracy_drop_ci_pts"]
    sens = gates.get("sensitivity_drop_pts") or {}
    worst = max(sens, key=sens.get) if sens else None
    worst_txt = (f"worst per-class sensitivity drop {sens[worst]:.2f} pts ({worst}, 95% CI "
                 f"{gates['sensitivity_drop_ci_pts'][worst][0]:.2f} to {gates['sensitivity_drop_ci_pts'][worst][1]:.2f}; "
                 f"allowed {gates['sens_tolerance_pts']})" if worst else "no per-class sensitivity")
    qwk = gates.get("qwk_drop_ci_pts")
    qwk_txt = (f", QWK drop {gates['qwk_drop_pts']:.2f} pts (95% CI {qwk[0]:.2f} to {qwk[1]:.2f}; allowed "
               f"{gates['qwk_tolerance_pts']})" if qwk else "")
    return (f"Clinical gates passed on the test split (n={gates['n']}): accuracy drop "
            f"{gates['accuracy_drop_pts']:.2f} pts (95% CI {ci[0]:.2f} to {ci[1]:.2f}; allowed "
            f"{gates['tolerance_pts']}), {worst_txt}{qwk_txt}.")


def _calibration_line(cal: dict) -> str:
    if "fit_split" not in cal:
        return "Probabilities are not recalibrated after pruning (--no-calibrate)."
    if not cal.get("applied", True):
        return (f"A temperature fit on the {cal['fit_split']} split (T = {cal['fitted_temperature']:.3f}) did not "
                "lower that split's ECE, so the pruned model's probabilities are kept (T = 1); recalibrate for a "
                "new site.")
    return (f"Probabilities are temperature-scaled (T = {cal['temperature']:.3f}, fit on the {cal['fit_split']} "
            "split, folded into the classifier; predictions are unchanged); recalibrate for a new site.")


def model_card(cfg, ctx, manifest: dict, profile) -> str:
    """MODEL_CARD.md: ``templates/model_card.md`` filled from the manifest."""
    metrics = manifest["metrics"]
    cal = manifest.get("calibration") or {}
    fid = manifest.get("explanation_fidelity") or {}
    cmp = manifest["pruning"].get("compare") or {}
    train = manifest.get("training") or {}
    warnings = "".join(f"\n- **Warning:** {w}" for w in manifest.get("warnings") or []) + "\n"
    fidelity_line = (f"Explanation fidelity (LRP heatmaps, pruned vs dense, {fid.get('images')} test images): "
                     f"Spearman {_fmt(fid.get('spearman_mean'))}, top-10% IoU {_fmt(fid.get('iou10_mean'))}."
                     if fid else "Explanation fidelity: not measured.")
    return Template(CARD_TEMPLATE.read_text()).substitute(
        model=cfg.model, dataset=ctx.ds.name, target=profile.name, runtime=profile.runtime,
        precision=manifest["precision"], classes=", ".join(ctx.ds.class_names),
        runtime_line=RUNTIME_LINES.get(profile.runtime, DEFAULT_RUNTIME_LINE),
        fingerprint=ctx.ds.fingerprint[:16], split_line=_split_line(manifest["dataset"].get("split")),
        data_description=manifest["dataset"]["description"]["text"],
        img_size=ctx.meta["img_size"], in_chans=ctx.meta["in_chans"],
        epochs=train.get("epochs", cfg.epochs), seed=train.get("seed", cfg.seed), criterion=cfg.criterion,
        n_per_class=cfg.n_per_class, sampling=cfg.sampling, ratio_pct=f"{manifest['pruning']['ratio']:.0%}",
        granularity=cfg.granularity, ratio_search=manifest["pruning"]["ratio_search"],
        params_dense=cmp.get("params", {}).get("dense", "?"), params_pruned=cmp.get("params", {}).get("pruned", "?"),
        macs_dense=cmp.get("macs", {}).get("dense", "?"), macs_pruned=cmp.get("macs", {}).get("pruned", "?"),
        selection_line=_selection_line(manifest["selection"]), warnings=warnings,
        metrics_rows="\n".join(_metric_rows(metrics, cal)),
        gates_line=_gates_line(metrics["gates"]), fidelity_line=fidelity_line, calibration_line=_calibration_line(cal))
