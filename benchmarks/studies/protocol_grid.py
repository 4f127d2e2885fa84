"""The paper grid rerun under the selection protocol: choose on val, read test once, compare at equal cost.

    MEDPRUNE_DATA=/work/shared/data medprune study protocol_grid \
        --checkpoint vgg19=PATH --checkpoint resnet50=PATH [--checkpoint vgg19=PATH_OTHER_DATASET ...] \
        [--criteria lrp,dlb,ig,taylor,magnitude,random] [--sampling clustering] \
        [--ratios 0.1,0.2,...,0.8] [--tolerance 1] [--sens-tolerance 2] [--full-curves --budgets 0.75,0.5,0.25]

Per model: unit scores of every criterion on ``--n-per-class`` reference images per class (one
sampling); data-free criteria (magnitude, random) both raw and with per-layer L1 normalisation
(``toolchain.masking``), so a baseline does not collapse only because raw scores differ in scale
across layers. At every grid ratio the masked units are *physically removed* (``toolchain.removal``)
and the removed model's MACs/parameters counted and its val probabilities taken. The lossless ratio
is chosen on the whole val split with the bound rule of ``benchmarks.studies._protocol_rules``; only
then is test read, once, at the chosen ratio: whether the choice holds on test.

Val stops at the first ratio that fails (under both the bound rule and the old point rule, reported
beside it): the selected ratio is the largest ratio such that it and every smaller one pass, so no
later ratio can be chosen and evaluating it changes nothing. ``--full-curves`` evaluates every ratio on
val and on test instead, for the curves that compare criteria at equal units, equal MACs and equal
parameters (reporting only; nothing is chosen on them).

Headline: the fraction of attribution cells (criteria that need data) whose val-selected ratio holds on
test. Writes benchmarks/results/protocol_grid.{json,md,png} (``--out`` to change). Runs in one process
(no Ray; on a shared 2-core machine one thread is the fair share), printing progress per ratio.
"""

from __future__ import annotations

import datetime as _dt
import json
import time
from pathlib import Path

from toolchain.errors import ConfigError

from . import _protocol_rules as rules
from .registry import StudyParser, command_line, study

RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
BUDGETS = (0.75, 0.5, 0.25)
NORMALIZATIONS = {True: (None, "l1"), False: (None,)}  # data-free criterion -> variants run
DEVICE = "cpu"  # every cell loads, scores and evaluates here (run_model) and is keyed by it (_cell_key)


def parse_args(argv: list[str]):
    from toolchain.importance import available
    from toolchain.sampling import STRATEGIES

    from .paper.config import default_criteria

    p = StudyParser("protocol_grid", __doc__)
    p.add_argument("--checkpoint", action="append", default=[], metavar="MODEL=PATH",
                   help="a trained checkpoint per model (repeat)")
    p.add_argument("--from-baselines", type=Path, default=None, metavar="JSON",
                   help="take the checkpoints of a baselines_cpu.json (make baselines) instead of --checkpoint")
    p.add_argument("--runs", default=[], type=lambda t: [k.strip() for k in t.split(",") if k.strip()],
                   help="with --from-baselines: only these runs (MODEL:DATASET, comma list)")
    p.add_list("--criteria", default=",".join(default_criteria()), choices=available(), help="criteria")
    p.add_argument("--sampling", default="clustering", choices=STRATEGIES)
    p.add_list("--ratios", default=",".join(map(str, RATIOS)), kind=float, help="unit ratios in (0, 1)")
    p.add_list("--budgets", default=",".join(map(str, BUDGETS)), kind=float,
               help="MACs/params fractions of the dense model at which criteria are compared")
    p.add_argument("--tolerance", type=float, default=1.0, help="accuracy drop allowed, points")
    p.add_argument("--sens-tolerance", type=float, default=2.0, help="per-class sensitivity drop allowed, points")
    p.add_argument("--n-per-class", type=int, default=10)
    p.add_argument("--pool-per-class", type=int, default=300)
    p.add_argument("--n-boot", type=int, default=2000, help="paired bootstrap replicates")
    p.add_argument("--seed", type=int, default=0)
    p.add_out()
    p.add_argument("--full-curves", action="store_true",
                   help="every ratio on val and test (equal-cost comparison); default: val up to the first "
                        "failure, test at the chosen ratio only")
    p.add_argument("--report-only", action="store_true", help="re-render md/png from --out's JSON")
    p.add_argument("--merge", type=Path, nargs="+", default=None, metavar="DIR",
                   help="combine the protocol_grid.json of runs (one per model, same settings) into --out")
    a = p.parse_args(argv)
    if not (a.checkpoint or a.from_baselines or a.report_only or a.merge):
        raise ConfigError("give --checkpoint MODEL=PATH or --from-baselines JSON (or --merge DIR... / --report-only)")
    if any(not 0 < r < 1 for r in a.ratios) or any(not 0 < b <= 1 for b in a.budgets):
        raise ConfigError("--ratios must lie in (0, 1) and --budgets in (0, 1]")
    if a.tolerance < 0 or a.sens_tolerance < 0:
        raise ConfigError("tolerances must be >= 0 points")
    a.checkpoints = []  # (model, path): one model family may come with checkpoints of several datasets
    for item in a.checkpoint:
        model, sep, path = item.partition("=")
        if not sep or not model or not Path(path).exists():
            raise ConfigError(f"--checkpoint expects MODEL=PATH to an existing checkpoint, got {item!r}")
        a.checkpoints.append((model, path))
    a.checkpoints += _baseline_checkpoints(a.from_baselines, a.runs) if a.from_baselines else []
    return a


def _baseline_checkpoints(path: Path, runs: list[str]) -> list[tuple[str, str]]:
    """(model, checkpoint) of each run of a baselines_cpu.json, in its order (``runs`` filters by key)."""
    if not path.is_file():
        raise ConfigError(f"--from-baselines: {path} not found (run make baselines)")
    listed = {r["key"]: r["checkpoint"] for r in json.loads(path.read_text()).get("runs", [])}
    unknown = [k for k in runs if k not in listed]
    if unknown:
        raise ConfigError(f"--runs: {', '.join(unknown)} not in {path} (it has {', '.join(listed) or 'no runs'})")
    missing = [k for k in (runs or listed) if not Path(listed[k]).is_file()]
    if missing:
        raise ConfigError(f"--from-baselines: the checkpoints of {', '.join(missing)} are not in the training cache "
                          "(run make baselines)")
    return [(k.split(":")[0], listed[k]) for k in (runs or listed)]


def _probs(model, ctx, split: str):
    from toolchain.evaluate import predict

    return predict(model, ctx.ds, split, ctx.preprocess, 128, ctx.device)


def _removed(ctx, masks, example):
    """The physically removed model and its cost; masked in place where removal cannot follow an op."""
    from toolchain.removal import remove_units

    pruned, _ = remove_units(ctx.model, masks, example, strict=False)
    return pruned.eval()


def _costs(model, example) -> dict:
    from toolchain.models import count_macs, count_params

    return {"macs": int(count_macs(model, example)), "params": int(count_params(model))}


def run_cell(ctx, scores, layers, normalize, dense: dict, a, log) -> dict:
    """Val up to the first failure (every ratio with ``a.full_curves``), the choice, then test."""
    from toolchain.masking import build_masks

    names = list(ctx.ds.class_names)
    boot = dict(n_boot=a.n_boot, seed=a.seed)
    points, kept = [], {}
    for r in sorted(a.ratios):  # 1. val only
        t0 = time.perf_counter()
        masks = build_masks(scores, layers, r, "global", normalize)
        pruned = _removed(ctx, masks, dense["example"])
        cost = _costs(pruned, dense["example"])
        pv, _ = _probs(pruned, ctx, "val")
        d = rules.drops(dense["yv"], dense["pv"], pv, names, **boot)
        kept[r] = pruned
        points.append({"ratio": r, "units_pruned": masks.units_pruned, "units_total": masks.units_total,
                       "macs_frac": cost["macs"] / dense["cost"]["macs"],
                       "params_frac": cost["params"] / dense["cost"]["params"], **cost, "val": d,
                       "val_pass_bound": rules.passes_bound(d, a.tolerance, a.sens_tolerance),
                       "val_pass_point": rules.passes_point(d, a.tolerance, a.sens_tolerance)})
        log(f"    r={r:.2f} macs {points[-1]['macs_frac']:.2f} val acc drop {d['accuracy_drop_pts']:+.2f} "
            f"(ub {d['accuracy_drop_ci_pts'][1]:.2f}) {time.perf_counter() - t0:.0f}s")
        if not a.full_curves and rules.both_failed(points):
            break  # neither rule can choose a larger ratio now
    ratios = [p["ratio"] for p in points]
    chosen = rules.select_ratio(ratios, [p["val_pass_bound"] for p in points])
    chosen_point_rule = rules.select_ratio(ratios, [p["val_pass_point"] for p in points])
    read = ratios if a.full_curves else sorted({chosen, chosen_point_rule} - {0.0})
    for p in points:  # 2. test, read after the choice is fixed (at the chosen ratios only by default)
        model = kept.pop(p["ratio"])
        if p["ratio"] in read:
            _test_point(p, model, dense, ctx, names, a)
    by_ratio = {p["ratio"]: p for p in points}

    def verdict(r: float) -> dict:
        if r == 0.0:
            return {"ratio": 0.0, "holds": True, "dense": True}
        t = by_ratio[r]["test"]
        return {"ratio": r, "holds": rules.passes_point(t, a.tolerance, a.sens_tolerance), "dense": False,
                "test_accuracy_drop_pts": t["accuracy_drop_pts"], "test_accuracy_drop_ci_pts": t["accuracy_drop_ci_pts"],
                "test_sensitivity_drop_pts": t["sensitivity_drop_pts"], "macs_frac": by_ratio[r]["macs_frac"],
                "params_frac": by_ratio[r]["params_frac"], "test_metrics": by_ratio[r]["test_metrics"]}

    equal = ({key: {f"{b:g}": _budget_point(points, key, b) for b in a.budgets} for key in ("macs_frac", "params_frac")}
             if a.full_curves else None)  # needs test at every ratio
    return {"normalize": normalize or "none", "points": points, "selected": verdict(chosen),
            "selected_point_rule": verdict(chosen_point_rule), "equal_cost": equal}


def _test_point(p: dict, model, dense: dict, ctx, names: list[str], a) -> None:
    """Test drops and metrics (with intervals) of one evaluated ratio, added to its point."""
    from toolchain.metrics import compute_metrics

    pt, _ = _probs(model, ctx, "test")
    p["test"] = rules.drops(dense["yt"], dense["pt"], pt, names, n_boot=a.n_boot, seed=a.seed)
    m = compute_metrics(dense["yt"], pt, names, n_boot=min(a.n_boot, 1000), seed=a.seed)
    p["test_metrics"] = {k: rules.metric_ci(m, k) for k in rules.SUMMARY_KEYS}


def _budget_point(points, key: str, budget: float) -> dict | None:
    p = rules.at_budget(points, key, budget)
    return None if p is None else {"ratio": p["ratio"], key: p[key], **p["test_metrics"]}


def run_model(model_name: str, checkpoint: str, a, log, on_cell=None) -> dict:
    """Every cell of one model; ``on_cell(model_so_far)`` after each (a stopped run keeps what finished)."""
    import torch

    from toolchain.prune_eval import load_context, reference_inputs, score_units
    from toolchain.units import find_unit_layers

    ctx = load_context(checkpoint, device=DEVICE)
    layers = find_unit_layers(ctx.model)
    example = ctx.preprocess(ctx.ds.split("val").images[:1])
    pv, yv = _probs(ctx.model, ctx, "val")
    pt, yt = _probs(ctx.model, ctx, "test")
    dense = {"example": example, "cost": _costs(ctx.model, example), "pv": pv, "yv": yv, "pt": pt, "yt": yt}
    log(f"{model_name}: {len(layers)} unit layers, {sum(ly.size for ly in layers)} units, val n={len(yv)}, "
        f"test n={len(yt)}")
    x_ref, y_ref, ref_idx = reference_inputs(ctx, a.n_per_class, a.sampling, a.seed, pool_per_class=a.pool_per_class)
    cells = []
    for name in a.criteria:
        crit, keys = cell_keys(ctx.sha256, name, a, ctx.device)
        variants = tuple(keys)
        cached = {v: _cache_get(k) for v, k in keys.items()}
        scores, secs = None, 0.0
        if any(c is None for c in cached.values()):
            torch.manual_seed(a.seed)
            scores, secs = score_units(ctx.model, crit, x_ref, y_ref, layers)
        for normalize in variants:
            cell = cached[normalize]
            if cell is None:
                log(f"  {model_name}/{name}/{normalize or 'raw'} (scored in {secs:.1f}s)")
                cell = {"model": model_name, "criterion": name, "attribution": bool(crit.needs_data),
                        "sampling": a.sampling if crit.needs_data else None, "score_s": round(secs, 2),
                        "key": keys[normalize], **run_cell(ctx, scores, layers, normalize, dense, a, log)}
                _cache_put(keys[normalize], cell)
            else:
                log(f"  {model_name}/{name}/{normalize or 'raw'}: cached")
            cells.append(cell)
            log(f"  -> val-selected {cell['selected']['ratio']:.2f}, holds on test: {cell['selected']['holds']}")
            if on_cell:
                on_cell(_model_entry(model_name, ctx, dense, ref_idx, cells, a))
    return _model_entry(model_name, ctx, dense, ref_idx, cells, a)


def _model_entry(model_name: str, ctx, dense: dict, ref_idx, cells: list[dict], a) -> dict:
    from toolchain.metrics import compute_metrics

    names = list(ctx.ds.class_names)
    dense_test = compute_metrics(dense["yt"], dense["pt"], names, n_boot=1000, seed=a.seed)
    dense_val = compute_metrics(dense["yv"], dense["pv"], names, n_boot=1000, seed=a.seed)
    return {"model": model_name, "checkpoint": str(ctx.checkpoint), "sha256": ctx.sha256,
            "train_config": ctx.meta.get("train_config"), "dataset": ctx.ds.name,
            "dataset_fingerprint": ctx.ds.fingerprint, "class_names": names, "dense_cost": dense["cost"],
            "reference_indices": [int(i) for i in ref_idx],
            "dense": {"val": {k: rules.metric_ci(dense_val, k) for k in rules.SUMMARY_KEYS},
                      "test": {k: rules.metric_ci(dense_test, k) for k in rules.SUMMARY_KEYS}},
            "cells": list(cells)}


def cell_keys(sha256: str, name: str, a, device: str) -> tuple:
    """``(criterion, {normalisation: cache key})`` of one criterion's cells on a checkpoint."""
    from toolchain.importance import get_criterion

    from .paper.config import Grid

    options = Grid().criterion_options.get(name, {})  # the paper grid's options (IG along the input path)
    crit = get_criterion(name, **options)
    return crit, {v: _cell_key(sha256, name, options, v, crit, a, device=device)
                  for v in NORMALIZATIONS[not crit.needs_data]}


def _cell_key(sha256: str, criterion: str, options: dict, normalize, crit, a, *, device: str) -> str:
    """Everything that changes a cell: checkpoint, criterion (and its code), protocol settings, this code, and
    the device the cell computes on (``ctx.device``; keys from before it was passed wrote "cpu", so CPU keys
    are unchanged)."""
    from toolchain.pipeline import code_version, criterion_source_files, digest

    # the criterion's own code, not its siblings', and the studies this module imports by name, not every
    # study the study registry discovers: an edit to one criterion or study leaves the others' cells cached
    # (keys made before this narrowing hashed more files, so those cells are computed again once)
    code = code_version(*criterion_source_files(crit, rules, run_cell, _test_point, leaves=("benchmarks.studies",)))
    return digest({"sha256": sha256, "criterion": criterion, "options": options, "normalize": normalize,
                   "sampling": a.sampling if crit.needs_data else None, "n_per_class": a.n_per_class,
                   "pool": a.pool_per_class, "seed": a.seed, "ratios": sorted(a.ratios), "budgets": a.budgets,
                   "tol": [a.tolerance, a.sens_tolerance], "n_boot": a.n_boot, "device": device,
                   "full_curves": a.full_curves, "code": code})[:20]


def _cache_path(key: str) -> Path:
    from toolchain import settings

    return settings.cache_dir() / "protocol_grid" / f"{key}.json"


def _cache_get(key: str) -> dict | None:
    path = _cache_path(key)
    return json.loads(path.read_text()) if path.is_file() else None


def _cache_put(key: str, cell: dict) -> None:
    from toolchain.atomic import atomic_file

    with atomic_file(_cache_path(key), "w") as fh:
        json.dump(cell, fh)


@study("protocol_grid", outputs=("protocol_grid.json", "protocol_grid.md", "protocol_grid.png"))
def main(argv: list[str] | None = None) -> int:

    from ._protocol_report import write_report

    argv = list(argv or [])
    a = parse_args(argv)
    out = Path(a.out)
    if a.report_only:
        source = out / "protocol_grid.json"
        if not source.is_file():
            raise ConfigError(f"--report-only: {source} not found (run the grid first)")
        write_report(json.loads(source.read_text()), out)
        return 0

    if a.merge:
        _write(merge([_read(Path(d) / "protocol_grid.json") for d in a.merge], command_line("protocol_grid", argv)),
               out)
        return 0

    def log(msg: str) -> None:
        print(f"[{_dt.datetime.now(_dt.timezone.utc):%H:%M:%S}] {msg}", flush=True)

    t0 = time.perf_counter()
    models: list[dict] = []
    for m, path in a.checkpoints:  # results are written after every model: a partial run shows
        def partial(entry: dict) -> None:
            _write(_document(a, argv, [*models, entry], time.perf_counter() - t0), out)

        models.append(run_model(m, path, a, log, on_cell=partial))
    log(f"wrote {out / 'protocol_grid.json'}")
    return 0


# settings that must agree for runs to be merged into one table
# (whether curves were evaluated past the first failure does not change a choice, so it may differ)
# (runs of different samplings merge: a cell is one criterion x normalisation x sampling of one checkpoint)
_SHARED = ("tolerance_pts", "sens_tolerance_pts", "ratios", "budgets", "n_per_class", "n_boot", "seed")


def _read(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"--merge: {path} not found")
    return json.loads(path.read_text())


def merge(docs: list[dict], command: str) -> dict:
    """One document from runs with the same settings (their commands are kept). Cells of one checkpoint split
    over runs are combined; different checkpoints of one model and dataset stay separate entries."""
    differ = [k for k in _SHARED if any(d.get(k) != docs[0].get(k) for d in docs)]
    if differ:
        raise ConfigError(f"--merge: the runs differ in {', '.join(differ)}")
    models: dict[tuple, dict] = {}
    for d in docs:
        for m in d["models"]:  # runs before --full-curves existed evaluated every ratio
            for c in m["cells"]:
                c.setdefault("full_curves", d.get("full_curves", True))
                c.setdefault("sampling", d["sampling"] if c["attribution"] else None)
    for m in (m for d in docs for m in d["models"]):  # one checkpoint split over runs: its cells are combined
        seen = models.get((m["model"], m["dataset"], m["sha256"]))
        if seen is None:
            models[(m["model"], m["dataset"], m["sha256"])] = {**m, "cells": list(m["cells"])}
            continue
        have = {rules.cell_id(c): c.get("key") for c in seen["cells"]}
        if any(rules.cell_id(c) in have and (c.get("key") is None or have[rules.cell_id(c)] != c["key"])
               for c in m["cells"]):
            raise ConfigError(f"--merge: a cell of {m['model']} appears in more than one run")
        seen["cells"] += [c for c in m["cells"] if rules.cell_id(c) not in have]  # the same cached cell: once
    models = list(models.values())
    curves = {d.get("full_curves", True) for d in docs}
    return {**docs[0], "command": " && ".join([d["command"] for d in docs] + [command]),
            "sampling": ", ".join(dict.fromkeys(d["sampling"] for d in docs)),
            "full_curves": curves.pop() if len(curves) == 1 else "mixed",
            "checkpoints_source": "; ".join(dict.fromkeys(d["checkpoints_source"] for d in docs
                                                          if d.get("checkpoints_source"))) or None,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "wall_s": round(sum(d["wall_s"] for d in docs), 1),
            "models_requested": [n for d in docs for n in d.get("models_requested", [])],
            "summary": rules.summarise(models), "models": models}


def _write(doc: dict, out: Path) -> None:
    from toolchain.atomic import atomic_file

    from ._protocol_report import write_report

    out.mkdir(parents=True, exist_ok=True)
    with atomic_file(out / "protocol_grid.json", "w") as fh:
        json.dump(doc, fh, indent=1)
    write_report(doc, out)


def _document(a, argv: list[str], models: list[dict], wall: float) -> dict:
    return {
        "schema": "medprune.protocol_grid/1", "command": command_line("protocol_grid", argv),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "rule": rules.__doc__.strip(), "tolerance_pts": a.tolerance, "sens_tolerance_pts": a.sens_tolerance,
        "ratios": sorted(a.ratios), "budgets": a.budgets, "sampling": a.sampling, "n_per_class": a.n_per_class,
        "n_boot": a.n_boot, "seed": a.seed, "wall_s": round(wall, 1),
        "full_curves": a.full_curves, "models_requested": [m for m, _ in a.checkpoints],
        "checkpoints_source": str(a.from_baselines) if a.from_baselines else None,
        "summary": rules.summarise(models), "models": models}
