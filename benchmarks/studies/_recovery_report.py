"""Report of the recovery study: intervals, val-chosen headline, verdicts, Markdown and the Pareto plot.

Every accuracy-like figure carries a 95 % interval: test accuracy (class-stratified percentile
bootstrap, ``compute_metrics``), its drop vs the dense model and the worst per-class sensitivity drop
(paired bootstrap over the same test images, ``toolchain.metrics``), and criterion-vs-criterion
accuracy differences at the same MACs target (paired). Verdicts (``_recovery_verdicts``): *win*/*lose* when
the Holm-adjusted bootstrap p of the (dataset, model, state) table is < 0.05, else *tie*; attribution (lrp,
dlb, ig) and medprune's taylor are tallied apart.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import numpy as np

from toolchain.lossless import RULE

from ._recovery_verdicts import markdown as verdicts_markdown
from ._recovery_verdicts import verdicts as _verdicts

GATE_ACC, GATE_SENS = 1.0, 2.0  # points: deploy's --tolerance/--sens-tolerance defaults, applied on val
# a cell's probabilities per state: pruned as is, recovered (KD), recovered + val operating-point alignment
STATES = {"none": "no", "kd": "KD", "kda": "KD+align"}
POINT_RULE = ("point rule (the study's rule before): the point accuracy drop <= 1 pt and every class's point "
              "sensitivity drop <= 2 pts on val")
N_BOOT = 1000
# issue 15's speedup_lossless targets: CNNs on PneumoniaMNIST and chest_xray_224, ViT-B/16 on PneumoniaMNIST
TARGETS = {("pneumoniamnist", "vgg19"): 5, ("chest_xray_224", "vgg19"): 5, ("pneumoniamnist", "resnet50"): 3,
           ("chest_xray_224", "resnet50"): 3, ("pneumoniamnist", "vit_b16"): 2}


def test_drops(y, dense, pruned, n_boot: int = N_BOOT) -> dict[str, Any]:
    """A row's test figures: accuracy drop and worst per-class sensitivity drop (points, dense - pruned), each
    with its paired 95 % interval (``toolchain.metrics.paired_bootstrap_diff``, ``toolchain.lossless``)."""
    from toolchain.lossless import worst_sensitivity_drop
    from toolchain.metrics import paired_bootstrap_diff

    acc = paired_bootstrap_diff(y, dense, pruned, "accuracy", n_boot=n_boot)
    worst = worst_sensitivity_drop(y, dense, pruned, n_boot=n_boot)
    return {"accuracy_drop_pts": {"value": 100.0 * acc["diff"], "ci": [100.0 * c for c in acc["ci"]]},
            "worst_sensitivity_drop_pts": {"value": worst["value"], "ci": worst["ci"]},
            "worst_class": worst["class"], "n": worst["n"]}


def accuracy_summary(y, p, names) -> dict:
    """Accuracy and balanced accuracy with their 95 % intervals, and n (also the runtime columns' summary)."""
    from toolchain.metrics import compute_metrics

    m = compute_metrics(np.asarray(y), np.asarray(p), names)
    return {k: m.get(k) for k in ("accuracy", "accuracy_ci", "balanced_accuracy", "balanced_accuracy_ci", "n")}


def _val_figures(y, dense, probs, names) -> dict[str, Any]:
    """Val drops and both rules' verdicts (``toolchain.lossless.judge``, the rule deploy applies)."""
    from toolchain.lossless import judge

    j = judge(y, dense, probs, names, tolerance=GATE_ACC, sens_tolerance=GATE_SENS)
    sens_hi = [ci[1] for ci in j["sensitivity_drop_ci_pts"].values()]
    return {"accuracy_drop_pts": j["accuracy_drop_pts"], "accuracy_drop_ci_pts": j["accuracy_drop_ci_pts"],
            "worst_sensitivity_drop_pts": j["worst_sensitivity_drop_pts"],
            "worst_sensitivity_drop_upper_pts": max(sens_hi) if sens_hi else 0.0,
            "sensitivity_drop_pts": j["sensitivity_drop_pts"], "sensitivity_drop_ci_pts": j["sensitivity_drop_ci_pts"],
            "passes_bound": j["passes"], "passes_point": j["passes_point"], "failed": j["failed"],
            "n_boot": j["n_boot"]}


def state_figures(run: dict, probs: dict) -> dict[str, Any]:
    """``{"val": ..., "test": ...}`` of one model state (``probs`` per split) against ``run``'s dense model:
    val drops with deploy's rule, test accuracy and drops, each with its 95 % interval and n."""
    y, names, dense = run["labels"], run["class_names"], run["dense"]
    return {"val": {**_val_figures(y["val"], dense["val"], probs["val"], names),
                    **accuracy_summary(y["val"], probs["val"], names)},
            "test": {**accuracy_summary(y["test"], probs["test"], names),
                     **test_drops(y["test"], dense["test"], probs["test"])}}


def summarise_run(run: dict, state: str = "kd") -> dict[str, Any]:
    """Rows of every cell x state; the headline chosen among the recovered rows of ``state`` (the recipe)."""
    recipe, rows = state, []  # the loop below rebinds ``state``: the headline reads the recipe's state
    for key, cell in run["cells"].items():
        for state in STATES:
            if f"{state}/val" not in cell["probs"]:
                continue
            probs = {s: cell["probs"][f"{state}/{s}"] for s in ("val", "test")}
            rows.append({
                "criterion": cell["criterion"], "target_macs_div": cell["target_macs_div"], "state": state,
                "recovered": state != "none",
                "ratio": cell["ratio"], "macs_ratio": cell["macs"]["ratio"], "params_ratio":
                    cell["params"]["dense"] / cell["params"]["pruned"], "macs": cell["macs"]["pruned"],
                "params": cell["params"]["pruned"], "speedup_ort": cell["speedup_ort"],
                "latency_ms": {k: cell["latency_ms"][k]["median_ms"] for k in ("dense", "pruned")},
                **state_figures(run, probs),
                "recovery": cell.get("recovery", {}).get("summary") if state != "none" else None,
                "alignment": cell.get("alignment") if state == "kda" else None,
                "_key": key,
            })
    return {"rows": rows, "headline": headline(rows, recipe), "verdicts": verdicts(run, rows)}


def choose(rows: list[dict], flag: str = "passes_bound") -> dict | None:
    """The most compressed row passing ``flag`` on val (ties: higher val balanced accuracy, then the first)."""
    passing = [r for r in rows if r["val"][flag]]
    return max(passing, key=lambda r: (r["macs_ratio"], r["val"]["balanced_accuracy"] or 0)) if passing else None


def _chosen(rows: list[dict], flag: str) -> dict[str, Any] | None:
    """:func:`choose`'s row, judged on test."""
    c = choose(rows, flag)
    if c is None:
        return None
    t = c["test"]
    return {"speedup_ort": c["speedup_ort"], "macs_ratio": c["macs_ratio"], "criterion": c["criterion"],
            "target": c["target_macs_div"], "state": c.get("state", "kd"),
            "val_accuracy_drop_pts": c["val"]["accuracy_drop_pts"],
            "val_worst_sensitivity_drop_pts": c["val"]["worst_sensitivity_drop_pts"],
            "test_accuracy_drop_pts": t["accuracy_drop_pts"],
            "test_worst_sensitivity_drop_pts": t["worst_sensitivity_drop_pts"],
            "holds_on_test": holds_on_test(t)}


def holds_on_test(t: dict) -> bool:
    """Deploy's test gate on a row's test figures: the point drops within the gates (accuracy, worst class)."""
    return bool(t["accuracy_drop_pts"]["value"] <= GATE_ACC + 1e-9
                and t["worst_sensitivity_drop_pts"]["value"] <= GATE_SENS + 1e-9)


def headline(rows: list[dict], state: str | None = None) -> dict[str, Any]:
    """speedup_lossless under deploy's bound rule (the headline) and under the point rule (shown beside it),
    and best_criterion, all chosen on val among the recovered rows of ``state`` (default: the last recovery
    state present, ``STATES`` order); test is read for the chosen models only."""
    states = [s for s in STATES if s != "none" and any(r.get("state", "kd") == s for r in rows)]
    state = state or (states[-1] if states else None)
    kd = [r for r in rows if r.get("state", "kd") == state] or rows
    by_crit: dict[str, list[float]] = {}
    for r in kd:
        by_crit.setdefault(r["criterion"], []).append(r["val"]["balanced_accuracy"] or 0.0)
    best = max(by_crit, key=lambda c: float(np.mean(by_crit[c]))) if by_crit else None
    sl = _chosen(kd, "passes_bound")
    # what deploy ships under its rule: the val-chosen model if it also passes deploy's test gate; else the
    # dense one (x1.00) — none passes on val, or the chosen one fails the test gate (deploy exits 3, no package)
    if sl and sl["holds_on_test"]:
        ships = {"speedup_ort": sl["speedup_ort"], "model": f"{sl['criterion']} MACs ÷{sl['macs_ratio']:.2f}",
                 "holds_on_test": True}
    else:
        why = (f"the val-chosen {sl['criterion']} MACs ÷{sl['macs_ratio']:.2f} (x{sl['speedup_ort']:.2f}) fails "
               "deploy's test gate: no package" if sl else "no recovered model passes deploy's rule on val")
        ships = {"speedup_ort": 1.0, "model": f"dense ({why})", "holds_on_test": True}
    return {"best_criterion": best, "best_criterion_rule": "highest mean val balanced accuracy over recovered cells",
            "val_mean_balanced_accuracy": {c: float(np.mean(v)) for c, v in by_crit.items()}, "state": state,
            "rule": "bound", "speedup_lossless": sl, "deploy_ships": ships,
            "speedup_lossless_point": _chosen(kd, "passes_point")}


def verdicts(run: dict, rows: list[dict]) -> list[dict]:
    """Each medprune criterion vs each peer at the same target and state (test), Holm-adjusted per state."""
    return _verdicts(run, rows, list(STATES), N_BOOT)


def build(runs: list[dict], args: dict, command: str, started: str) -> dict[str, Any]:
    from benchmarks.harness import machine_info

    models = {}
    from ._recovery_heads import table as heads_table
    from ._recovery_latency import table as latency_table
    from ._recovery_oppoint import table as oppoint_table
    from ._recovery_oppoint import val_resolution as oppoint_val_resolution

    for run in runs:
        s = summarise_run(run, "kda" if args.get("recipe") == "kd+align" else "kd")
        s["operating_point"] = oppoint_table(run, s["rows"])
        s["equal_latency"] = latency_table(run, s["rows"], s["headline"]["state"])
        s["val_resolution"] = oppoint_val_resolution(run["labels"]["val"], run["class_names"])
        s["class_names"] = list(run["class_names"])
        s["heads"] = heads_table(run)  # ViT: heads vs MLP units removed per cell (empty for CNNs)
        for r in s["rows"]:
            r.pop("_key", None)
        # "dataset:model": one section per dense checkpoint (headline paths split on "/")
        models[f"{run['dataset']}:{run['model']}"] = {
            "model": run["model"], "checkpoint": run["checkpoint"], "checkpoint_sha256": run["checkpoint_sha256"],
            "train_command": run["train_command"], "dataset": run["dataset"],
            "dataset_fingerprint": run["dataset_fingerprint"], **s}
    return {"command": command, "started": started, "args": args, "machine": machine_info(),
            "host": platform.node(), "gates": {"accuracy_drop_pts": GATE_ACC, "worst_sensitivity_drop_pts": GATE_SENS,
                                               "split": "val"}, "models": models}


def _ci(d: dict, nd: int = 1) -> str:
    ci = d.get("ci")
    return f"{d['value']:.{nd}f} [{ci[0]:.{nd}f}, {ci[1]:.{nd}f}]" if ci else f"{d['value']:.{nd}f}"


def _budget_text(args: dict, model: str) -> str:
    """What this run spent on recovery, from its own arguments (never a fixed sentence)."""
    subsets = args.get("recover_subset") or {}
    subset = subsets.get(model, subsets.get("*", 0)) if isinstance(subsets, dict) else 0
    epochs = args.get("recover_epochs")
    where = f"a {subset}-image train subset" if subset else "the full train split"
    return (f"Budget of this run: at most {epochs} distillation epoch(s) on {where} (best val epoch kept), "
            "MACs targets tried only as listed.")


def _target_line(model: str, rows: list[dict], sl: dict | None, budget: str = "", state: str | None = None,
                 dataset: str = "pneumoniamnist") -> str:
    """The issue's target against what was reached, and what limits it (accuracy or latency vs MACs)."""
    target = TARGETS.get((dataset, model))
    kd = [r for r in rows if r.get("state", "kd") == state] or [r for r in rows if r["recovered"]] or rows
    if not kd:
        return ""
    fastest = max(kd, key=lambda r: r["speedup_ort"])
    per_mac = float(np.median([r["speedup_ort"] / r["macs_ratio"] for r in kd]))
    reached = sl["speedup_ort"] if sl else 1.0
    # the figure is judged once on test: a val-chosen model that fails on test does not count
    held = bool(sl and sl["holds_on_test"])
    verdict = ("reached" if target and held and reached >= target
               else "NOT reached" + ("" if held or not sl else " (the val-chosen model fails the gates on test)"))
    why = []
    if not any(r["val"]["passes_bound"] for r in kd if r["macs_ratio"] >= (target or 0)):
        why.append("accuracy: no recovered model at that MACs reduction passes the val rule")
    if per_mac < 0.9:
        why.append(f"latency does not follow MACs (median measured speedup per MACs reduction {per_mac:.2f})")
    head = (f"Target (issue 15): speedup_lossless >= {target}x — {verdict} (x{reached:.2f})." if target else
            f"No issue-15 target for {model} on {dataset} (speedup_lossless x{reached:.2f}).")
    return (f"{head} Fastest recovered "
            f"model measured: x{fastest['speedup_ort']:.2f} at MACs ÷{fastest['macs_ratio']:.2f} ({fastest['criterion']},"
            f" val rule {'passes' if fastest['val']['passes_bound'] else 'fails'}). "
            + (f"Limits: {'; '.join(why)}." if why and verdict != "reached" else "")
            + ("" if held or not sl else " Limits: accuracy on test (worst per-class sensitivity).")
            + (" " + budget if budget else ""))


def _recipe_lines(rows: list[dict], recipe: str | None) -> list[str]:
    """Per recovery state: models passing deploy's rule / the point rule on val, and the most compressed passing
    one (val only: how the recipe is chosen)."""
    states = [st for st in STATES if st != "none" and any(r.get("state") == st for r in rows)]
    if len(states) < 2:
        return []
    parts = []
    for st in states:
        mine = [r for r in rows if r.get("state") == st]
        bound = [r for r in mine if r["val"]["passes_bound"]]
        best = max(bound, key=lambda r: r["macs_ratio"], default=None)
        parts.append(f"{STATES[st]}{' (recipe)' if st == recipe else ''}: {len(bound)} / "
                     f"{sum(r['val']['passes_point'] for r in mine)} of {len(mine)}, "
                     + (f"÷{best['macs_ratio']:.2f} {best['criterion']}" if best else "none"))
    return ["", "Recipes on val (models passing deploy's rule / the point rule; most compressed passing deploy's "
            "rule): " + "; ".join(parts)]


def _speedup_line(label: str, sl: dict | None, h: dict) -> str:
    if not sl:
        return f"{label}: no {STATES.get(h.get('state'), 'recovered')} model passes this rule on val"
    return (f"{label}: ×{sl['speedup_ort']:.2f} measured (MACs ÷{sl['macs_ratio']:.2f}, {sl['criterion']}, "
            f"{STATES.get(sl.get('state'), 'KD')}); val drops {sl['val_accuracy_drop_pts']:.1f} / "
            f"{sl['val_worst_sensitivity_drop_pts']:.1f} pts; test accuracy drop {_ci(sl['test_accuracy_drop_pts'])} "
            f"pts, worst sensitivity drop {_ci(sl['test_worst_sensitivity_drop_pts'])} pts; holds on test: "
            f"{sl['holds_on_test']}")


def markdown(doc: dict) -> str:
    from .recovery_grid import macs_targets

    lines = ["# Recovery study: criteria at equal MACs, with and without distillation recovery", "",
             f"Command: `{doc['command']}`  ", f"Started: {doc['started']} on {doc['host']}  ",
             f"Gates (applied on val): accuracy drop <= {GATE_ACC:g} pt, every class's sensitivity drop <= "
             f"{GATE_SENS:g} pts. **Headline rule = deploy's** (`toolchain.lossless`, also the protocol grid's): "
             f"{RULE}. Shown beside it: the {POINT_RULE}. Either way the choice is made on val only and the chosen "
             "model is judged once on test (holds on test: point drops within the gates). "
             "Test figures: 95 % intervals (accuracy: class-stratified bootstrap; drops: paired bootstrap vs dense "
             "over the same test images). Speedup: ONNX Runtime CPU batch 1, dense and pruned timed interleaved in "
             f"one process ({doc['args'].get('threads')} intra-op thread(s)), on a shared 2-core machine.", "",
             "Issue 15's targets for every pair, against headline.json, with what limits each: "
             "[recovery_targets.md](recovery_targets.md) (`medprune study recovery_targets`).", ""]
    a = doc["args"]
    if a.get("recover_epochs"):
        from toolchain.recovery import RecoveryConfig

        lines += [f"Recovery recipe (every criterion alike): up to {a['recover_epochs']} epoch(s), loss "
                  f"{a.get('kd_weight', 1.0):g} x KD (T = {RecoveryConfig().temperature:g}) + {a.get('ce_weight', 1.0):g} x class-weighted CE, lr "
                  f"{a.get('recover_lr') or 'of the dense model'}, batches {'augmented' if a.get('recover_augment') else 'not augmented'}"
                  ", warm-up + cosine, best val-balanced-accuracy epoch kept."
                  + (" Then **operating-point alignment** (`--align`, `toolchain.recovery.align`): a per-class logit "
                     "offset (K - 1 free numbers; 1 for two classes) minimising the mean KL(dense || softmax(student "
                     "+ offset)) over the val images is folded into the classifier bias. Val thus both fits the "
                     "offset and makes every choice below (rule, most compressed passing model, best criterion), so "
                     "val figures of aligned rows are slightly optimistic; test is read once, after." if a.get("align")
                     else ""), ""]
    if doc["args"].get("cached_only"):
        lines += ["This document was assembled with `--cached-only` from cells computed by parallel runs of the same "
                  "command, one per model x criterion (and target), without that flag; cells listed as missing below "
                  "were not computed within the session's CPU time.", ""]
        if doc["args"].get("skipped_pairs"):
            lines += ["Not assembled (no dense checkpoint given, so no cell of them exists): "
                      + ", ".join(doc["args"]["skipped_pairs"]) + ".", ""]
    from ._recovery_quant_cells import overview as quant_cells_overview

    lines += quant_cells_overview(doc["models"])  # INT8 per cell, all pairs (each pair's table is in its section)
    for label, m in doc["models"].items():
        model = m.get("model", label)
        h = m["headline"]
        have = {(r["criterion"], r["target_macs_div"]) for r in m["rows"]}
        targets = macs_targets(doc["args"].get("model_macs"), m["dataset"], model, doc["args"].get("macs"))
        missing = [f"{c} ÷{t:g}" for t in targets for c in doc["args"].get("criteria", []) if (c, t) not in have]
        lines += [f"## {model} ({m['dataset']})", "",
                  f"Dense checkpoint `{m['checkpoint']}` sha256 `{m['checkpoint_sha256'][:16]}…` "
                  f"(`{m['train_command']}`)", ""]
        sl = h["speedup_lossless"]
        lines += [_speedup_line("**speedup_lossless** (deploy's bound rule on val, test-judged once)", sl, h), "",
                  _speedup_line("speedup under the old point rule on val (for comparison, not the headline)",
                                h.get("speedup_lossless_point"), h), "",
                  _target_line(model, m["rows"], sl, _budget_text(doc["args"], model), h.get("state"),
                               m["dataset"])]
        lines += _recipe_lines(m["rows"], h.get("state"))
        if m.get("val_resolution"):
            res = m["val_resolution"]
            lines += ["", "Val resolution of deploy's rule: a model that loses exactly one val image of a class and "
                      "changes nothing else gets an upper bound on that class's sensitivity drop of "
                      + ", ".join(f"{v:.1f} pts ({c})" for c, v in res.items())
                      + f" (tolerance {GATE_SENS:g}); "
                      + ("so in practice a model passes only if it loses no val image of "
                         + ", ".join(c for c, v in res.items() if v > GATE_SENS + 1e-9) + "."
                         if any(v > GATE_SENS + 1e-9 for v in res.values()) else "one lost image can pass.")]
        if missing:
            lines += ["", f"Missing cells (not computed): {', '.join(missing)}"]
        if "quant" in m:
            from ._recovery_quant import markdown as quant_markdown

            lines += [""] + (quant_markdown(m["quant"]) or ["INT8 columns: not measured (no cached measurement)."])
        if "quant_cells" in m:
            from ._recovery_quant_cells import markdown as quant_cells_markdown

            lines += [""] + quant_cells_markdown(m["quant_cells"])
        lines += ["", f"**best_criterion** (mean val balanced accuracy, {STATES.get(h.get('state'), 'recovered')}): "
                  f"{h['best_criterion']}", "",
                  "| criterion | MACs ÷ target | recovery | ratio | MACs ÷ | params ÷ | ORT speedup | val acc drop "
                  "(upper) | val worst sens. drop (upper) | val pass bound / point | test acc [95 % CI] (n) | "
                  "test acc drop pts | test worst sens. drop pts |",
                  "|---|---:|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
        order = list(STATES)
        for r in sorted(m["rows"], key=lambda r: (r["target_macs_div"], order.index(r.get("state", "kd")),
                                                  r["criterion"])):
            t, v = r["test"], r["val"]
            ci = t.get("accuracy_ci") or [float("nan")] * 2
            yes = {True: "yes", False: "no"}
            lines.append(f"| {r['criterion']} | {r['target_macs_div']:g} | {STATES[r.get('state', 'kd')]} | "
                         f"{r['ratio']:.2f} | {r['macs_ratio']:.2f} | {r['params_ratio']:.2f} | "
                         f"{r['speedup_ort']:.2f} | {v['accuracy_drop_pts']:.1f} ({v['accuracy_drop_ci_pts'][1]:.1f}) | "
                         f"{v['worst_sensitivity_drop_pts']:.1f} ({v['worst_sensitivity_drop_upper_pts']:.1f}) | "
                         f"{yes[v['passes_bound']]} / {yes[v['passes_point']]} | {t['accuracy']:.3f} [{ci[0]:.3f}, "
                         f"{ci[1]:.3f}] ({t['n']}) | {_ci(t['accuracy_drop_pts'])} | "
                         f"{_ci(t['worst_sensitivity_drop_pts'])} |")
        from ._recovery_oppoint import markdown as oppoint_markdown

        lines += [""] + oppoint_markdown(m.get("operating_point") or [], STATES, m.get("class_names") or [])
        from ._recovery_heads import markdown as heads_markdown

        lines += heads_markdown(m.get("heads") or [])
        lines += verdicts_markdown(m["verdicts"], STATES)
        from ._recovery_latency import markdown as latency_markdown

        lines += latency_markdown(m.get("equal_latency") or [], STATES.get(h.get("state"), "recovered"))
    return "\n".join(lines) + "\n"


def write(doc: dict, runs: list[dict], out: Path, stem: str = "recovery", preface: list[str] = ()) -> None:
    """``out/<stem>.{json,md,png}``; ``preface``: Markdown lines put right under the title (a design's own)."""
    from toolchain.atomic import atomic_file, atomic_path

    from ._recovery_quant_record import split

    out.mkdir(parents=True, exist_ok=True)
    # the per-cell INT8 section (--runtimes-per-cell) goes to <stem>_int8.json, which is written first: with it,
    # <stem>.json would pass the 2 MiB limit on tracked files; <stem>.json keeps a pointer and the summary
    saved, int8 = split(doc, f"{stem}_int8.json")
    if int8 is not None:
        with atomic_file(out / f"{stem}_int8.json", "w") as fh:
            json.dump(int8, fh, separators=(",", ":"), default=str)
    with atomic_file(out / f"{stem}.json", "w") as fh:
        # compact: the per-row bootstrap intervals make an indented file > 2 MiB; recovery.md is the readable view
        json.dump(saved, fh, separators=(",", ":"), default=str)
    title, _, body = markdown(doc).partition("\n")
    text = "\n".join([title, "", *preface, body]) if preface else f"{title}\n{body}"
    if doc.get("cell_versions"):  # the reused cells computed by other code (``_recovery_versions``)
        from ._recovery_versions import markdown as versions_markdown

        text = text.rstrip("\n") + "\n\n" + versions_markdown(doc["cell_versions"])
    with atomic_file(out / f"{stem}.md", "w") as fh:
        fh.write(text)
    from ._recovery_plot import plot

    with atomic_path(out / f"{stem}.png") as tmp:
        plot(doc, tmp)
