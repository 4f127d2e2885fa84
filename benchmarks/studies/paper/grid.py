"""The paper's study at CPU scale: models x criteria x sampling x pruning ratios, swept on Ray.

    MEDPRUNE_DATA=/work/shared/data medprune study paper_grid \
        [--datasets pneumoniamnist] [--models vgg19,resnet50,vit_b16] [--criteria lrp,dlb,ig,...] \
        [--samplings confidence,random,clustering] [--ratios 0.15,0.3,0.5,0.7] \
        [--n-per-class 10] [--fidelity-images 16] [--test-limit N] [--val-limit N] [--pool-per-class N]

A *cell* is (dataset, model, criterion, sampling): unit scores are computed once on the reference
images, then every ratio is evaluated on the test split; the lossless ratio is searched on the
validation split (never on test, so the ratio is not selected on the data it is reported on) and
test metrics are reported at it; explanation fidelity compares input-level LRP heatmaps of the
dense and the masked model on a few test images (see ``benchmarks.studies.paper.cell``).

Each cell is a Ray task (``num_cpus=1``, one torch thread). Ray starts locally
(``ray.init(num_cpus=<cores>)``) unless ``RAY_ADDRESS`` names a cluster (which must see the same
checkpoint and data paths). Every finished cell is cached as one JSON file keyed by a hash of its
configuration and the checkpoint's sha256, written atomically by the driver, so an interrupted
sweep resumes where it stopped. Data-free criteria (magnitude, random) ignore the sampling, so
they are computed once per model and shown under every sampling.

Checkpoints come from ``toolchain.train`` (cached, so a trained baseline is reused, not retrained): the
configs recorded in ``benchmarks/results/baselines.json`` or ``benchmarks.studies.baselines.RUNS``; a dataset
without a baseline borrows the model's baseline hyperparameters with ``--train-subset`` train images.
``--checkpoint DATASET:MODEL=PATH`` injects one directly.

Writes benchmarks/results/paper_grid.{json,md} and paper_grid_*.png (``--out`` to change).
"""

from __future__ import annotations

import argparse
import json
import signal
from pathlib import Path

from toolchain.errors import ConfigError

from ..registry import StudyParser, command_line, study
from .config import (
    DATASETS,
    DEFAULT_LOAD_SIZE,
    MODELS,
    RATIOS,
    SAMPLINGS,
    Grid,
    Sizes,
    default_criteria,
)
from .sweep import run_grid, write_results


def parse_args(argv: list[str]) -> argparse.Namespace:
    from toolchain.importance import available
    from toolchain.sampling import STRATEGIES

    p = StudyParser("paper_grid", __doc__)
    p.add_list("--datasets", default="pneumoniamnist", help=f"datasets (the paper's: {','.join(DATASETS)})")
    p.add_list("--models", default=",".join(MODELS), help="model names or timm names")
    p.add_list("--criteria", default=None, choices=available(), help="criteria [default: all registered]")
    p.add_list("--samplings", default=",".join(SAMPLINGS), choices=STRATEGIES, help="reference samplings")
    p.add_list("--ratios", default=",".join(map(str, RATIOS)), kind=float, help="pruning ratios in (0, 1)")
    sizes = Sizes()
    p.add_argument("--n-per-class", type=int, default=sizes.n_per_class)
    p.add_argument("--pool-per-class", type=int, default=sizes.pool_per_class,
                   help="reference candidates per class for confidence/clustering (0: whole train split)")
    p.add_argument("--fidelity-images", type=int, default=sizes.fidelity_images)
    p.add_argument("--figure-images", type=int, default=sizes.figure_images)
    p.add_argument("--test-limit", type=int, default=None, help="stratified test subset (default/0: whole split)")
    p.add_argument("--val-limit", type=int, default=sizes.val_limit, help="stratified val subset (0: whole split)")
    p.add_argument("--lossless-tolerance", type=float, default=sizes.lossless_tolerance,
                   help="accuracy drop allowed at the lossless ratio, in points (on val)")
    p.add_argument("--lossless-sens-tolerance", type=float, default=sizes.lossless_sens_tolerance,
                   help="per-class sensitivity drop allowed, in points (on val)")
    p.add_argument("--lossless-resolution", type=float, default=sizes.lossless_resolution)
    p.add_argument("--lossless-coarse-step", type=float, default=sizes.lossless_coarse_step)
    p.add_argument("--load-size", action="append", default=[], metavar="DATASET=PX",
                   help="load size per dataset (default chest_xray_224=64)")
    p.add_argument("--checkpoint", action="append", default=[], metavar="DATASET:MODEL=PATH")
    p.add_argument("--train-subset", type=int, default=Grid().train_subset,
                   help="train images for checkpoints without a baseline (0: whole split)")
    p.add_argument("--no-train", action="store_true",
                   help="skip (dataset, model) pairs without a trained checkpoint instead of training them")
    p.add_argument("--option", action="append", default=[], metavar="CRITERION:KEY=VALUE",
                   help="criterion option (default ig:path=input), e.g. ig:n_steps=16")
    p.add_argument("--seed", type=int, default=sizes.seed)
    p.add_argument("--num-cpus", type=int, default=None, help="local Ray CPUs (default: this process's cores)")
    p.add_argument("--cache", type=Path, default=None, help="cell cache root (default $MEDPRUNE_CACHE/paper_grid)")
    p.add_out()
    p.add_argument("--report-only", action="store_true", help="re-render the report from --out's JSON")
    return p.parse_args(argv)


def grid_from_args(a: argparse.Namespace) -> Grid:
    load_sizes = dict(DEFAULT_LOAD_SIZE)
    for item in a.load_size:
        name, _, px = item.partition("=")
        if not px.isdigit():
            raise ConfigError(f"--load-size expects DATASET=PX, got {item!r}")
        load_sizes[name] = int(px)
    checkpoints = {}
    for item in a.checkpoint:
        cell, sep, path = item.partition("=")
        if not sep or ":" not in cell:
            raise ConfigError(f"--checkpoint expects DATASET:MODEL=PATH, got {item!r}")
        checkpoints[cell] = path
    options = Grid().criterion_options
    for item in a.option:
        crit, sep, rest = item.partition(":")
        key, eq, raw = rest.partition("=")
        if not sep or not eq or not key:
            raise ConfigError(f"--option expects CRITERION:KEY=VALUE, got {item!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        options.setdefault(crit, {})[key] = value
    sizes = Sizes(n_per_class=a.n_per_class, pool_per_class=a.pool_per_class or None,
                  fidelity_images=a.fidelity_images, figure_images=a.figure_images, test_limit=a.test_limit or None,
                  val_limit=a.val_limit or None, lossless_tolerance=a.lossless_tolerance,
                  lossless_sens_tolerance=a.lossless_sens_tolerance, lossless_resolution=a.lossless_resolution,
                  lossless_coarse_step=a.lossless_coarse_step, seed=a.seed)
    return Grid(datasets=a.datasets, models=a.models, criteria=a.criteria or default_criteria(),
                samplings=a.samplings, ratios=a.ratios, sizes=sizes, load_sizes=load_sizes, checkpoints=checkpoints,
                train_subset=a.train_subset or None, train=not a.no_train, criterion_options=options)


@study("paper_grid", outputs=("paper_grid.json", "paper_grid.md", "paper_grid_*.png"))
def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    console = Console(stderr=True)
    argv = list(argv or [])
    a = parse_args(argv)
    try:
        if a.report_only:
            source = a.out / "paper_grid.json"
            if not source.is_file():
                raise ConfigError(f"--report-only: {source} not found (run the sweep first)")
            results = json.loads(source.read_text())
        else:
            results = run_grid(grid_from_args(a), cache_root=a.cache, num_cpus=a.num_cpus, console=console,
                               command=command_line("paper_grid", argv))
        report = write_results(results, a.out)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: finished cells are cached; rerun the same command to resume[/]")
        return 130
    except SystemExit as exc:
        if exc.code != signal.SIGTERM:  # Ray's driver turns SIGTERM into sys.exit(15)
            raise
        console.print("[yellow]terminated: finished cells are cached; rerun the same command to resume[/]")
        return 143
    console.print(f"report: {report}  ({results['counts']} in {results['wall_s']:.0f}s)")
    return 0
