"""Recovery with a larger selection split: the pre-registered design (selection_split_preregistration.md).

    medprune study recovery_selection [--checkpoint pneumoniamnist/vgg19=PATH ...] [--cached-only] [--runtimes]
        [--update-headline]

Deploy's lossless rule (upper 95 % paired-bootstrap bounds on val) cannot pass on PneumoniaMNIST or
chest_xray_224 as the recovery study splits them: losing one image of the ~135-image normal val class
bounds that class's sensitivity drop at 2.2 pts > 2. The design, fixed before any model of it existed
(``PREREGISTRATION``), carves a larger selection split from train *before dense training* (``SPLIT``)
and otherwise reuses the recovery study unchanged: its recipe (the committed ``recovery.json``'s own
arguments, ``--baseline``), its cells, cache and report (``recovery_grid.assemble``,
``_recovery_report``), with the design's criteria and MACs levels in the pre-registered order
(``CRITERIA``, ``LEVELS``). ``recovery_selection.{json,md,png}`` starts with the design, the val n per
class, the rule's val resolution and the earlier study's figures for the same dataset x model
(``_selection_report``).

Dense models: ``--checkpoint data/model=PATH`` (its recorded training split must be the design's), else
trained here with ``recovery_grid.train_recipe`` plus the design's split. Headline (pre-registered): a
dataset x model whose first ``HEADLINE_LEVELS`` MACs levels are complete for every criterion takes
``recovery/<dataset>/<model>/{speedup_lossless,best_criterion}`` from this design whatever the result
(``--update-headline`` writes them into headline.json); otherwise its headline stays on the earlier study.

``--arm long`` assembles the pre-registered longer-recovery arm (``LONG_PREREGISTRATION``, ``_selection_arms``):
the same VGG19 cells recovered for ``LONG_EPOCHS`` KD epochs at the MACs levels of each dataset x model
(``LONG_STAGES``: ÷5 and ÷8 for both pairs, then amendment 5's ÷6.5 and ÷7 for PneumoniaMNIST only), into
``recovery_selection_long.{json,md,png}``, with the headline chosen over both arms (``--design``: the 2-epoch arm's
results) over the long levels of every complete stage (a later stage counts once all its cells exist); the 2-epoch
assembly then leaves those keys to it. A run covering both datasets hands the recovery study its levels per
``data/model`` where they differ, so no dataset computes, or lists as missing, another's levels.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from toolchain.errors import ConfigError

from .registry import RESULTS, StudyParser, command_line, study

PREREGISTRATION = RESULTS / "selection_split_preregistration.md"
LONG_PREREGISTRATION = RESULTS / "recovery_long_preregistration.md"
# the selection split of each dataset (TrainConfig fields): PneumoniaMNIST keeps its official val and adds a
# stratified 20 % of train; chest_xray_224 (no official val) cuts 25 % of train instead of 10 %
SPLIT: dict[str, dict[str, float]] = {"pneumoniamnist": {"val_from_train": 0.2},
                                      "chest_xray_224": {"val_fraction": 0.25}}
CRITERIA = ("lrp", "dlb", "ig", "taylor", "tp-taylor", "tp-hessian", "tp-magnitude")
LEVELS = {"vgg19": (5.0, 3.0, 8.0), "resnet50": (3.0, 2.0, 5.0)}  # MACs ÷S in the order they are computed
HEADLINE_LEVELS = 2
HEADLINE = RESULTS / "headline.json"


def check_design_split(path: str, data: str) -> None:
    """ConfigError unless the checkpoint at ``path`` records the design's split of ``data``."""
    from toolchain.models.checkpoint import checkpoint_meta

    cfg = checkpoint_meta(path).get("train_config") or {}
    wrong = {k: cfg.get(k) for k, v in SPLIT[data].items() if cfg.get(k) != v}
    if wrong:
        raise ConfigError(f"checkpoint {path} was not trained with the design's split of {data} "
                          f"({SPLIT[data]}; it records {wrong})")


def design_checkpoint(model: str, data: str, given: dict[str, str]) -> str:
    """The design's dense checkpoint of ``data/model``: the given one (split checked), else trained here with
    the recovery study's recipe plus the design's split (cached like every ``medprune train``)."""
    from toolchain.train import TrainConfig, train

    from .recovery_grid import train_recipe

    path = given.get(f"{data}/{model}")
    if path:
        check_design_split(path, data)
        return path
    return str(train(TrainConfig(**train_recipe(model, data), **SPLIT[data], device="auto")))


def arm_levels(arm: str, data: str, model: str) -> tuple[float, ...]:
    """MACs levels of ``data/model`` in an arm (``design``: per model, in the order they are computed; ``long``: its
    pre-registered levels of that dataset x model); () when the arm has none."""
    from ._selection_arms import long_levels

    return long_levels(data, model) if arm == "long" else LEVELS.get(model, ())


def arm_models(arm: str) -> list[str]:
    """The models an arm has MACs levels for."""
    from ._selection_arms import LONG_STAGES

    return list(dict.fromkeys(p.split("/")[1] for p in LONG_STAGES)) if arm == "long" else list(LEVELS)


def model_macs(arm: str, data: list[str], models: list[str]) -> dict[str, list[float]]:
    """The recovery study's ``model_macs`` of a run: per model where its levels are the same on every dataset of the
    run (as the study's ``--model-macs``), per ``data/model`` where they differ (``recovery_grid.targets_for``)."""
    out: dict[str, list[float]] = {}
    for m in models:
        per = {d: list(arm_levels(arm, d, m)) for d in data}
        if len({tuple(v) for v in per.values()}) == 1:
            out[m] = per[data[0]]
        else:
            out.update({f"{d}/{m}": v for d, v in per.items()})
    return out


def grid_args(baseline: dict, args: argparse.Namespace, checkpoints: list[str]) -> argparse.Namespace:
    """The recovery study's arguments as its committed results recorded them, with the design's models, data,
    criteria, levels and checkpoints (and, ``--arm long``, its recovery epochs); the assembly flags of this run."""
    from ._selection_arms import LONG_EPOCHS

    arm = getattr(args, "arm", "design")
    a = {k: v for k, v in baseline.items() if k not in ("out", "skipped_pairs")}
    if arm == "long":
        a["recover_epochs"] = LONG_EPOCHS  # the only recipe field the long arm changes (its cache keys follow)
    a.update(models=list(args.models), data=list(args.data), criteria=list(CRITERIA),
             model_macs=model_macs(arm, list(args.data), list(args.models)), checkpoint=checkpoints,
             cached_only=args.cached_only, runtimes=args.runtimes, retime=False, recompute_stale=False,
             out=args.out, runtimes_per_cell=None)  # per-cell INT8 is the recovery study's; not inherited
    return argparse.Namespace(**a)


def _relative(path: Path) -> str:
    return path.name if path.parent == RESULTS else str(path)


def add_sections(doc: dict, runs: list[dict], earlier: dict, baseline_path: Path, arm: str = "design") -> None:
    """The design's own figures in ``doc`` (``doc["design"]``, ``models[*]["selection"]``); for the long arm every
    one of a dataset x model's levels is a headline level (counted stage by stage, ``_selection_arms``), and
    ``earlier`` is the 2-epoch arm's results."""
    from . import _selection_arms as arms
    from . import _selection_report as sel

    doc["design"] = {"preregistration": _relative(PREREGISTRATION), "split": SPLIT, "criteria": list(CRITERIA),
                     "earlier": _relative(baseline_path), "arm": arm}
    if arm == "long":
        pairs = [f"{r['dataset']}/{r['model']}" for r in runs]
        doc["design"].update(levels={p: list(arm_levels(arm, *p.split("/"))) for p in pairs},
                             stages={p: [list(st) for st in arms.LONG_STAGES.get(p, ())] for p in pairs},
                             arm_preregistration=_relative(LONG_PREREGISTRATION))
    else:
        doc["design"].update(levels={m: list(LEVELS[m]) for m in doc["args"]["models"] if m in LEVELS},
                             headline_levels=HEADLINE_LEVELS)
    for run in runs:
        label = f"{run['dataset']}:{run['model']}"
        levels = list(arm_levels(arm, run["dataset"], run["model"]))
        need = HEADLINE_LEVELS if arm == "design" else len(levels)
        doc["models"][label]["selection"] = sel.section(
            doc["models"][label], run["labels"]["val"], list(CRITERIA), levels, need, SPLIT[run["dataset"]],
            earlier.get("models", {}).get(label))


def update_headline(entries: dict[str, dict], path: Path) -> None:
    """Load-modify-dump ``entries`` into headline.json (written atomically; other keys untouched)."""
    from benchmarks import headline as hl
    from toolchain.atomic import atomic_file

    current = hl.load(path)
    current.update(entries)
    with atomic_file(path, "w") as fh:
        fh.write(json.dumps(current, indent=1, ensure_ascii=False) + "\n")


@study("recovery_selection", outputs=("recovery_selection.json", "recovery_selection.md", "recovery_selection.png",
                                     "recovery_selection_long.json", "recovery_selection_long.md",
                                     "recovery_selection_long.png"))
def main(argv: list[str] | None = None) -> int:
    from toolchain.train import configure_threads

    from . import _recovery_report as report
    from . import _selection_arms as arms
    from . import _selection_report as sel
    from .recovery_grid import assemble

    p = StudyParser("recovery_selection", __doc__)
    p.add_argument("--arm", choices=("design", "long"), default="design",
                   help="design: the pre-registered 2-epoch cells; long: its longer-recovery arm (VGG19, "
                        "recovery_long_preregistration.md) → recovery_selection_long.*")
    p.add_list("--models", default=None, choices=list(LEVELS), help="[default: vgg19,resnet50; --arm long: vgg19]")
    p.add_list("--data", default="pneumoniamnist,chest_xray_224", choices=list(SPLIT))
    p.add_argument("--checkpoint", action="append", default=[],
                   help="data/model=path of a dense checkpoint trained with the design's split (repeatable)")
    p.add_argument("--baseline", type=Path, default=RESULTS / "recovery.json",
                   help="the earlier recovery study's results: its recipe is reused and its figures compared")
    p.add_argument("--cached-only", action="store_true", help="report the cells already computed, compute none")
    p.add_argument("--runtimes", action="store_true", help="ORT/OpenVINO FP32 and INT8 columns (as the study's)")
    p.add_argument("--design", type=Path, default=RESULTS / "recovery_selection.json",
                   help="--arm long: the 2-epoch arm's results, pooled with the long arm for the headline")
    p.add_argument("--update-headline", action="store_true",
                   help="write the headline keys of the complete dataset x model pairs into headline.json")
    p.add_out()
    args = p.parse_args(argv)
    models = arm_models(args.arm)
    args.models = args.models or models
    if set(args.models) - set(models):
        p.error(f"--arm {args.arm} has levels for {', '.join(models)} only, not {', '.join(args.models)}")
    bare = [f"{d}/{m}" for d in args.data for m in args.models if not arm_levels(args.arm, d, m)]
    if bare:
        p.error(f"--arm {args.arm} has no MACs levels for {', '.join(bare)}")
    if not args.baseline.is_file():
        p.error(f"--baseline {args.baseline} not found (run `medprune study recovery` first)")
    if args.arm == "long" and not args.design.is_file():
        p.error(f"--design {args.design} not found (assemble the 2-epoch arm first: `medprune study "
                "recovery_selection`)")
    given = dict(c.split("=", 1) for c in args.checkpoint if "=" in c)
    if len(given) != len(args.checkpoint):
        p.error("--checkpoint takes data/model=path")
    earlier = json.loads(args.baseline.read_text())
    design = json.loads(args.design.read_text()) if args.arm == "long" else None
    stem = "recovery_selection_long" if args.arm == "long" else "recovery_selection"
    source = _source(Path(args.out) / f"{stem}.json") if args.update_headline else None
    configure_threads()

    def log(msg: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)

    pairs = [(d, m) for d in args.data for m in args.models]
    # --cached-only trains nothing: a pair without a --checkpoint is left out (the grid says so)
    found = {f"{d}/{m}": design_checkpoint(m, d, given) for d, m in pairs
             if f"{d}/{m}" in given or not args.cached_only}
    if not found:
        p.error("--cached-only without a --checkpoint data/model=PATH of the selected pairs: nothing to report")
    doc, runs = assemble(grid_args(earlier["args"], args, [f"{k}={v}" for k, v in found.items()]),
                         command_line("recovery_selection", argv), log)
    long_path = RESULTS / "recovery_selection_long.json"
    if design is None:
        add_sections(doc, runs, earlier, args.baseline)
        # pairs whose pre-registered long arm is complete take their headline from it: the preface says so
        owned = arms.superseded(json.loads(long_path.read_text()) if long_path.is_file() else None)
        preface = sel.preface(doc, doc["design"]["preregistration"], owned)
    else:
        add_sections(doc, runs, design, args.design, arm="long")
        arms.add_arms(doc, design)
        preface = arms.preface(doc, design, doc["design"]["arm_preregistration"], list(CRITERIA))
    preface += sel.search_aware_lines(doc, design)  # post hoc (issue 15): the search-aware rule's val choice
    report.write(doc, runs, Path(args.out), stem=stem, preface=preface)
    log(f"wrote {Path(args.out) / f'{stem}.json'}")
    if args.update_headline:
        if design is None:  # pairs whose long arm is complete take their headline from it (pre-registered)
            entries = {k: v for k, v in sel.headline_entries(doc, source).items() if k not in owned}
        else:
            entries = sel.headline_entries(doc, source, part="arms", arm="pooled over its 2- and "
                                           f"{arms.LONG_EPOCHS}-epoch KD recovery arms (recovery_long_preregistration.md)")
        update_headline(entries, HEADLINE)
        log(f"headline.json: {', '.join(entries) or 'no pair complete, nothing'} updated")
    return 0


def _source(path: Path) -> str:
    """A results file as headline.json names it (relative to the repository)."""
    try:
        return str(path.resolve().relative_to(RESULTS.parents[1]))
    except ValueError:
        raise ConfigError(f"--update-headline needs --out inside the repository, got {path}") from None
