"""protocol_grid.md and protocol_grid.png from the protocol grid's JSON (``--report-only`` re-renders)."""

from __future__ import annotations

from pathlib import Path

from toolchain.atomic import atomic_file


def _frac(h: dict) -> str:
    if not h or h.get("fraction") is None:
        return "n/a"
    lo, hi = h["ci"]
    return f"{h['k']}/{h['n']} = {h['fraction']:.2f} [{lo:.2f}, {hi:.2f}]"


def _acc(m: dict | None) -> str:
    if not m or m.get("value") is None:
        return "n/a"
    ci = m.get("ci")
    return f"{100 * m['value']:.1f} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else f"{100 * m['value']:.1f}"


def _drop(v, ci) -> str:
    return f"{v:+.2f} [{ci[0]:+.2f}, {ci[1]:+.2f}]"


def _label(c: dict, multi: bool = False) -> str:
    """``criterion (normalisation)``; with ``multi`` (runs of several samplings) an attribution cell's sampling too."""
    return (f"{c['criterion']}" + ("" if c["normalize"] == "none" else f" ({c['normalize']})")
            + (f" [{c.get('sampling')}]" if multi and c.get("attribution") else ""))


def _multi(doc: dict) -> bool:
    return "," in str(doc.get("sampling"))


def markdown(doc: dict) -> str:
    s, multi = doc["summary"], _multi(doc)
    lines = [
        "# Paper grid under the selection protocol", "",
        f"Cells: {', '.join(sorted({m['dataset'] for m in doc['models']}))} x "
        f"{', '.join(sorted({m['model'] for m in doc['models']}))} x "
        f"{', '.join(dict.fromkeys(c['criterion'] for m in doc['models'] for c in m['cells']))} "
        f"({sum(len(m['cells']) for m in doc['models'])} cells; see **Not run** for what is missing).", "",
        f"Command: `{doc['command']}`  ", f"Created {doc['created']}, wall {doc['wall_s'] / 60:.1f} min, "
        f"sampling {doc['sampling']} ({doc['n_per_class']}/class), ratios {doc['ratios']}, tolerance "
        f"{doc['tolerance_pts']} pts accuracy / {doc['sens_tolerance_pts']} pts per-class sensitivity.", "",
        " ".join(doc["rule"].split("\n\n")[1:2]).replace("\n", " "), "",
        "**Holds on test.** Test is read after the choice: point accuracy drop and every class's point "
        "sensitivity drop within the tolerances. Intervals: accuracy exact (Clopper-Pearson), balanced "
        f"accuracy class-stratified bootstrap, drops paired bootstrap ({doc['n_boot']} replicates); all 95 %.", "",
        "**Costs.** MACs and parameters are counted on the physically removed model (`toolchain.removal`, neuron "
        "granularity; units whose group cannot be removed stay masked and are counted). Data-free criteria run raw "
        "and with per-layer L1 normalisation (`toolchain.masking`, global ranking).", "",
        _checkpoints_note(doc), "",
        {False: "**Val stops at the first failure** (bound and point rule), test is read at the chosen ratio only; "
                "the equal-cost comparison needs `--full-curves` and is not in this run.",
         "mixed": "Runs merged here differ in coverage: models whose cells evaluated every ratio on val and test show "
                  "the equal-cost tables; the others stopped val at the first failure and read test at the chosen "
                  "ratio only (the choice is the same either way).",
         }.get(doc.get("full_curves", True), "Every ratio was evaluated on val and test (`--full-curves`)."), "",
        # merged runs list a model once per run: compare the sets of names, not the counts
        *([f"**PARTIAL:** not finished: {', '.join(missing)}.", ""]
          if (missing := sorted(set(doc.get("models_requested", [])) - {m["model"] for m in doc["models"]}))
          else []),
        *[f"**Not run:** {m['model']} ({m['sha256'][:8]}) {', '.join(miss)} (stopped for time)." for m in doc["models"]
          if (miss := sorted({_label(c, multi) for o in doc["models"] for c in o["cells"]}
                             - {_label(c, multi) for c in m["cells"]}))],
        "", "## Headline: val-selected ratios that hold on test", "",
        "| cells | bound rule (protocol) | point rule on whole val (old rule) | chose dense |", "|---|---|---|---|",
        f"| all attribution cells | {_frac(s['attribution']['bound_rule'])} | {_frac(s['attribution']['point_rule'])} "
        f"| {s['attribution']['dense_selected']} |"]
    for k, v in s["per_criterion"].items():
        lines.append(f"| {k} | {_frac(v['bound_rule'])} | {_frac(v['point_rule'])} | {v['dense_selected']} |")
    for k, v in (s.get("per_sampling", {}) if multi else {}).items():
        lines.append(f"| attribution cells, {k} sampling | {_frac(v['bound_rule'])} | {_frac(v['point_rule'])} "
                     f"| {v['dense_selected']} |")
    for k, v in (s.get("per_model", {}) if len(s.get("per_model", {})) > 1 else {}).items():
        lines.append(f"| attribution cells, {k.replace('/', ' x ')} | {_frac(v['bound_rule'])} | "
                     f"{_frac(v['point_rule'])} | {v['dense_selected']} |")
    lines += ["", "k/n = fraction [exact 95 % interval]. A cell that chose ratio 0 (dense) holds trivially; "
              "the last column counts them.", ""]
    made = _baseline_shas()
    for m in doc["models"]:
        lines += [f"## {m['model']} on {m['dataset']} (checkpoint {m['sha256'][:8]})", "",
                  f"Checkpoint `{m['checkpoint']}`, weights sha256 `{m['sha256']}`, data fingerprint "
                  f"`{(m['dataset_fingerprint'] or '')[:16]}`; dense test accuracy {_acc(m['dense']['test']['accuracy'])} "
                  f"(n={m['dense']['test']['accuracy']['n']}), val {_acc(m['dense']['val']['accuracy'])} "
                  f"(n={m['dense']['val']['accuracy']['n']}); dense {m['dense_cost']['macs'] / 1e6:.0f} M MACs, "
                  f"{m['dense_cost']['params'] / 1e6:.1f} M params. Train config: lr {(m['train_config'] or {}).get('lr')}, "
                  f"epochs {(m['train_config'] or {}).get('epochs')}, train subset "
                  f"{(m['train_config'] or {}).get('train_subset')}"
                  f"{' (**make baselines**)' if m['sha256'] in made else ''}.", "",
                  *[line for w in resolution(m, doc) for line in (f"**Val resolution:** {w}.", "")],
                  "| criterion | val-selected ratio | MACs / params at it | test acc. drop, pts [95 %] | "
                  "holds | point-rule ratio | holds |", "|---|---|---|---|---|---|---|"]
        for c in m["cells"]:
            sel, old = c["selected"], c["selected_point_rule"]
            drop = "dense" if sel["dense"] else _drop(sel["test_accuracy_drop_pts"], sel["test_accuracy_drop_ci_pts"])
            cost = "1.00 / 1.00" if sel["dense"] else f"{sel['macs_frac']:.2f} / {sel['params_frac']:.2f}"
            lines.append(f"| {_label(c, multi)} | {sel['ratio']:.2f} | {cost} | {drop} | {'yes' if sel['holds'] else '**no**'}"
                         f" | {old['ratio']:.2f} | {'yes' if old['holds'] else '**no**'} |")
        if any(c.get("equal_cost") is None for c in m["cells"]):  # val stopped at the first failure
            lines.append("")
            continue
        lines += ["", "Test accuracy % [95 %] (n per cell = test n) at equal units, equal MACs, equal parameters "
                  "(first grid ratio whose removed-model cost is <= the budget; its actual fraction in brackets):", ""]
        budgets = [f"{b:g}" for b in doc["budgets"]]
        head = ["criterion"] + [f"units {r:g}" for r in (0.3, 0.5, 0.7) if r in doc["ratios"]]
        head += [f"MACs<={b}" for b in budgets] + [f"params<={b}" for b in budgets]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for c in m["cells"]:
            by = {p["ratio"]: p for p in c["points"]}
            row = [_label(c, multi)] + [_acc(by[r]["test_metrics"]["accuracy"]) for r in (0.3, 0.5, 0.7) if r in by]
            for key in ("macs_frac", "params_frac"):
                for b in budgets:
                    p = c["equal_cost"][key][b]
                    row.append("none" if p is None else f"{_acc(p['accuracy'])} ({p[key]:.2f})")
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    lines += ["## The paper's claims, re-judged from this run", ""] + [f"- {t}" for t in claims(doc)] + [""]
    return "\n".join(lines)


def resolution(m: dict, doc: dict) -> list[str]:
    """Where one val image moves accuracy or a class's sensitivity by more than its tolerance (the rule can then
    pass only ratios that lose no val image of it), from the val class counts recorded with the cells."""
    import numpy as np

    from toolchain.lossless import resolution_warnings

    support = next((p["val"]["support"] for c in m["cells"] for p in c.get("points", [])), None)
    if not support:
        return []
    labels = np.repeat(np.arange(len(support)), [support[name] for name in m["class_names"]])
    return resolution_warnings(labels, m["class_names"], doc["tolerance_pts"], doc["sens_tolerance_pts"])


def claims(doc: dict) -> list[str]:
    """Short verdicts from this run (rules, not prose typed by hand); what the reduced grid cannot judge."""
    from .paper.claims import ATTRIBUTION, LOW_RATIO, PAPER_RANGES

    out = []
    families = {m["model"] for m in doc["models"]}
    for name, (lo, hi) in PAPER_RANGES.items():
        if name not in families:
            out.append(f"{name} lossless range {lo:.0%}-{hi:.0%}: NOT JUDGED (no {name} in this run)")
            continue
        chosen = [c["selected"]["ratio"] for m in doc["models"] if m["model"] == name for c in m["cells"]
                  if c["criterion"] in ATTRIBUTION]
        verdicts = [_bracket_verdict(r, doc["ratios"], lo, hi) for r in chosen]
        brackets = ", ".join(f"[{r:.2f}, {_next(r, doc['ratios']):.2f})" for r in chosen)
        overall = ("NOT JUDGED (no attribution cell)" if not verdicts else verdicts[0] if len(set(verdicts)) == 1
                   else "PARTIAL" if "CONFIRMED" in verdicts else "UNRESOLVED at this grid step"
                   if "REFUTED" not in verdicts else "PARTIAL (some cells refute)")
        out.append(f"{name} lossless range {lo:.0%}-{hi:.0%}: the val-selected lossless ratio of each "
                   f"{'/'.join(ATTRIBUTION)} cell (all datasets run) lies in {brackets} (selected grid ratio, next "
                   f"grid ratio, which failed) -> {overall}")
    out.append(_vit_most_robust(doc, ATTRIBUTION))
    for m in doc["models"]:
        ranks = sorted(((c["selected"]["ratio"], _label(c)) for c in m["cells"]), reverse=True)
        best = [lbl for r, lbl in ranks if r == ranks[0][0]]
        where = f"{m['model']} on {m['dataset']}, {m['sha256'][:8]}"
        out.append(f"LRP best ({where}, by val-selected lossless ratio): first is {', '.join(best)} at "
                   f"{ranks[0][0]:.2f}; LRP {next(r for r, lbl in ranks if lbl == 'lrp'):.2f}" if any(
                       lbl == "lrp" for _, lbl in ranks) else f"LRP best ({where}): NOT JUDGED (no lrp cell)")
        improved = [f"{_label(c, _multi(doc))}@{p['ratio']:g} ({_drop(-p['test']['accuracy_drop_pts'], [-x for x in p['test']['accuracy_drop_ci_pts'][::-1]])} pts)"
                    for c in m["cells"] for p in c["points"] if p["ratio"] <= LOW_RATIO + 1e-9
                    and "test" in p and p["test"]["accuracy_drop_ci_pts"][1] < 0]
        out.append(f"Low ratios (<= {LOW_RATIO:g}) improve test accuracy ({where}, at the ratios where test was read): "
                   + (f"gain with paired 95 % interval above 0 at {'; '.join(improved)}" if improved else
                      "no cell gains beyond its paired 95 % interval -> NOT SUPPORTED"))
    out.append(_attribution_beats_data_free(doc, ATTRIBUTION))
    out += _sampling_claims(doc)
    # a variant stored at another load size (breastmnist_64) is that dataset
    absent = [d for d in PAPER_DATASETS if not any(m["dataset"] == d or m["dataset"].startswith(f"{d}_")
                                                   for m in doc["models"])]
    if absent:
        out.append(f"Datasets not in this run: {', '.join(absent)} (no claim is judged on them)")
    return out


def _attribution_beats_data_free(doc: dict, attribution) -> str:
    """The paper's central claim: attribution criteria keep accuracy at larger ratios than magnitude / random.
    Rule, per checkpoint with both kinds of cell: the median val-selected ratio of its attribution cells
    against the largest of its data-free cells (raw or L1-normalised)."""
    import statistics

    verdicts, detail = [], []
    for m in doc["models"]:
        attr = [c["selected"]["ratio"] for c in m["cells"] if c["criterion"] in attribution]
        free = [c["selected"]["ratio"] for c in m["cells"] if not c["attribution"]]
        if not attr or not free:
            continue
        med, best = statistics.median(attr), max(free)
        verdicts.append("above" if med > best else "equal" if med == best else "below")
        detail.append(f"{m['model']} {m['sha256'][:8]}: {med:.2f} vs {best:.2f} ({verdicts[-1]})")
    if not verdicts:
        return "Attribution beats magnitude/random: NOT JUDGED (no checkpoint with both kinds of cell)"
    verdict = ("CONFIRMED" if all(v == "above" for v in verdicts) else "REFUTED" if "above" not in verdicts
               else "PARTIAL")
    return ("Attribution beats magnitude/random (median val-selected ratio of the lrp/dlb/ig cells vs the best "
            f"data-free cell, per checkpoint): {'; '.join(detail)} -> {verdict}")


def _sampling_claims(doc: dict) -> list[str]:
    """Sampling barely matters / clustering best, judged where one checkpoint x criterion ran with several
    samplings. Rules: barely matters when the val-selected ratios of the samplings lie within one grid step
    of each other; clustering best when its ratio is the largest (ties count)."""
    grid = sorted({0.0, *doc["ratios"]})
    by: dict[tuple, dict[str, float]] = {}
    for m in doc["models"]:
        for c in m["cells"]:
            if c.get("attribution") and c.get("sampling"):
                by.setdefault((m["model"], m["sha256"][:8], c["criterion"]), {})[c["sampling"]] = c["selected"]["ratio"]
    groups = {k: v for k, v in by.items() if len(v) > 1}
    if not groups:
        return [f"Sampling barely matters / clustering best: NOT JUDGED (one sampling, {doc['sampling']}, per cell)"]
    close = {k: grid.index(max(v.values())) - grid.index(min(v.values())) <= 1 for k, v in groups.items()}
    detail = "; ".join(f"{k[0]} {k[1]} {k[2]}: " + ", ".join(f"{s} {r:.2f}" for s, r in sorted(v.items()))
                       for k, v in groups.items())
    n = len(groups)
    barely = "CONFIRMED" if all(close.values()) else "REFUTED" if not any(close.values()) else "PARTIAL"
    with_clustering = {k: v for k, v in groups.items() if "clustering" in v}
    best = sum(v["clustering"] == max(v.values()) for v in with_clustering.values())
    out = [f"Sampling barely matters (val-selected ratios of the samplings within one grid step, {sum(close.values())}"
           f"/{n} checkpoint x criterion groups): {detail} -> {barely}"]
    if with_clustering:
        verdict = ("CONFIRMED" if best == len(with_clustering) else "REFUTED" if best == 0 else "PARTIAL")
        out.append(f"Clustering best sampling (its val-selected ratio the largest, ties count): {best}/"
                   f"{len(with_clustering)} groups -> {verdict}")
    return out


def _vit_most_robust(doc: dict, attribution) -> str:
    """Claim 1 on the datasets where all three families ran: ViT's median val-selected ratio is the largest."""
    import statistics

    per: dict[str, dict[str, list[float]]] = {}
    for m in doc["models"]:
        per.setdefault(m["dataset"], {}).setdefault(m["model"], []).extend(
            c["selected"]["ratio"] for c in m["cells"] if c["criterion"] in attribution)
    complete = {d: {k: statistics.median(v) for k, v in fam.items() if v} for d, fam in per.items()
                if {"vgg19", "resnet50", "vit_b16"} <= {k for k, v in fam.items() if v}}
    if not complete:
        return "ViT most robust to pruning: NOT JUDGED (no dataset with all three models in this run)"
    wins = {d: med["vit_b16"] > max(v for k, v in med.items() if k != "vit_b16") for d, med in complete.items()}
    detail = "; ".join(f"{d}: " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(med.items()))
                       for d, med in complete.items())
    verdict = "CONFIRMED" if all(wins.values()) else "REFUTED" if not any(wins.values()) else "PARTIAL"
    return (f"ViT most robust to pruning (median val-selected ratio of its attribution cells is the largest, "
            f"per dataset): {detail} -> {verdict}")


def _checkpoints_note(doc: dict) -> str:
    src = doc.get("checkpoints_source")
    made = _baseline_shas()  # a merge of --from-baselines runs with runs given by path: mark each model instead
    if src and all(m["sha256"] in made for m in doc["models"]):
        return (f"**Checkpoints.** From `{src}` (`make baselines`: one CPU schedule for every model, each model's "
                "learning rate chosen on val by the hyper-parameter policy); each model section names its weights "
                "sha256.")
    return ("**Checkpoints.** Given by path (their train configs are listed per model); those trained by `make "
            "baselines` (one CPU schedule, lr chosen on val by the hyper-parameter policy) are marked **make "
            "baselines** (their weights sha256 is in `baselines_cpu.json`); the others were not trained under the policy.")


def _baseline_shas() -> set[str]:
    """Weights sha256 of the checkpoints make baselines trained (benchmarks/results/baselines_cpu.json)."""
    import json

    from .registry import RESULTS

    path = RESULTS / "baselines_cpu.json"
    try:
        return {r["weights_sha256"] for r in json.loads(path.read_text()).get("runs", [])}
    except (OSError, ValueError, KeyError):
        return set()


PAPER_DATASETS = ("pneumoniamnist", "breastmnist", "chest_xray_224")  # the paper grid's datasets


def _next(r: float, ratios: list[float]) -> float:
    """The grid ratio above ``r`` (the first that failed on val), 1.0 when ``r`` is the largest."""
    above = [x for x in sorted(ratios) if x > r + 1e-9]
    return above[0] if above else 1.0


def _bracket_verdict(r: float, ratios: list[float], lo: float, hi: float) -> str:
    """The true boundary lies in [r, next): inside the paper's range, outside it, or not resolved by the grid."""
    nxt = _next(r, ratios)
    if r >= lo - 1e-9 and nxt <= hi + 1e-9:
        return "CONFIRMED"
    if nxt <= lo + 1e-9 or r > hi + 1e-9:
        return "REFUTED"
    return "UNRESOLVED at this grid step"


def plot(doc: dict, path: Path) -> None:
    """Val accuracy drop (paired 95 % CI) per evaluated ratio; test drops as stars where test was read."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = doc["models"]
    fig, axes = plt.subplots(len(models), 2, figsize=(11, 3.6 * len(models)), squeeze=False)
    for row, m in zip(axes, models, strict=True):
        for ax, key, xlabel in ((row[0], "ratio", "units pruned (fraction)"),
                                (row[1], "macs_frac", "MACs of the removed model (fraction of dense)")):
            for c in m["cells"]:
                pts = c["points"]
                ys = [p["val"]["accuracy_drop_pts"] for p in pts]
                lo = [y - p["val"]["accuracy_drop_ci_pts"][0] for y, p in zip(ys, pts, strict=True)]
                hi = [p["val"]["accuracy_drop_ci_pts"][1] - y for y, p in zip(ys, pts, strict=True)]
                style = "-" if c["attribution"] else "--"
                line = ax.errorbar([p[key] for p in pts], ys, yerr=[lo, hi], fmt=style + "o", ms=3, capsize=2,
                                   label=_label(c))
                tested = [p for p in pts if "test" in p]
                ax.plot([p[key] for p in tested], [p["test"]["accuracy_drop_pts"] for p in tested], "*", ms=9,
                        color=line[0].get_color())
            ax.axhline(doc["tolerance_pts"], color="k", lw=0.8, ls=":")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("accuracy drop, pts (val; * test)")
            ax.set_title(f"{m['model']} / {m['dataset']} (val n={m['dense']['val']['accuracy']['n']}, "
                         f"test n={m['dense']['test']['accuracy']['n']})", fontsize=9)
            if key == "macs_frac":
                ax.invert_xaxis()
        row[0].legend(fontsize=7)
    fig.tight_layout()
    with atomic_file(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=90)
    plt.close(fig)


def write_report(doc: dict, out: Path) -> Path:
    out = Path(out)
    with atomic_file(out / "protocol_grid.md", "w") as fh:
        fh.write(markdown(doc))
    plot(doc, out / "protocol_grid.png")
    return out / "protocol_grid.md"
