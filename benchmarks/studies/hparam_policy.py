"""One hyper-parameter policy for every model: the learning rate of each chosen on val by the same sweep.

    MEDPRUNE_DATA=/work/shared/data medprune study hparam_policy \
        [--models vgg19,resnet50,vit_b16] [--data pneumoniamnist] [--lr-factors 0.333,1,3] [--seed 0]

Policy (the same for every model, no model retrained alone): each model trains with its recipe
(``toolchain.recipes``: lr, build args) at ``lr x factor`` for every factor, everything else equal (the
shared CPU schedule ``toolchain.recipes.CPU_BUDGET``: epochs, train subset, warm-up; seed, augmentation,
CPU); the learning rate whose checkpoint has the highest *val* balanced accuracy (the training's own
selection metric) is chosen; ties keep the recipe's lr. Edge rule: when the chosen lr is the smallest or
the largest of the sweep, the sweep is extended one factor-3 step beyond it in that direction and the
choice repeated, at most twice per model (a choice still at the edge after that is reported as such).
Test metrics are neither read nor reported here.
Training goes through ``toolchain.train`` (cached by config, data fingerprint, device and code), so a
checkpoint trained before is reused. ``medprune study baselines_cpu`` runs this policy first and trains
every dataset with the chosen learning rates (the checkpoints the protocol grid is given).

Writes benchmarks/results/hparam_policy.{json,md} (``--out`` to change).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import time
from pathlib import Path

from toolchain.errors import ConfigError

from .registry import StudyParser, command_line, study

FACTORS = (1 / 3, 1.0, 3.0)
EDGE_STEP, MAX_EXTENSIONS = 3.0, 2  # the edge rule: one factor-3 step outwards, at most twice per model
MODELS = ("vgg19", "resnet50", "vit_b16")  # the paper's three families


def candidates(model: str, a, n_train: int) -> list:
    """The TrainConfigs of the sweep of ``model`` (recipe lr x each factor, everything else shared)."""
    from toolchain.recipes import CPU_BUDGET, recipe_for
    from toolchain.train import TrainConfig

    recipe = recipe_for(model)
    base = recipe.train_args() if recipe else {"lr": TrainConfig.lr}
    base.update(CPU_BUDGET.schedule(n_train))  # one schedule for every model (the recipe's warm-up too)
    return [TrainConfig(model=model, data=a.data, seed=a.seed, device="cpu", quiet=True,
                        **{**base, "lr": _round(base["lr"] * f)}) for f in a.lr_factors]


def choose(rows: list[dict], recipe_lr: float) -> dict:
    """The row with the highest val balanced accuracy; ties go to the recipe's lr, then the smaller lr."""
    if not rows:
        raise ConfigError("no trained candidates to choose from")
    return max(rows, key=lambda r: (r["val_balanced_accuracy"], r["lr"] == recipe_lr, -r["lr"]))


def extension(rows: list[dict], recipe_lr: float, extended: int, max_extensions: int = MAX_EXTENSIONS) -> float | None:
    """The edge rule: the next lr to train when the choice is at an edge of the sweep, else None.

    One ``EDGE_STEP`` beyond the smallest / largest lr when that one is chosen, while fewer than
    ``max_extensions`` extensions were made (a one-point sweep has no edge to extend).

        >>> rows = [{"lr": 1e-3, "val_balanced_accuracy": 0.8}, {"lr": 3e-3, "val_balanced_accuracy": 0.9}]
        >>> extension(rows, 1e-3, extended=0)
        0.009
    """
    lrs = sorted(r["lr"] for r in rows)
    if extended >= max_extensions or len(lrs) < 2:
        return None
    best = choose(rows, recipe_lr)["lr"]
    if best == lrs[-1]:
        return _round(best * EDGE_STEP)
    if best == lrs[0]:
        return _round(best / EDGE_STEP)
    return None


def _round(lr: float) -> float:
    return float(f"{lr:.3g}")  # the sweep's lrs as a user would type them (3 significant digits)


def run_model(model: str, a, log) -> dict:
    from toolchain.data import load_dataset
    from toolchain.models import read_sidecar
    from toolchain.recipes import recipe_for
    from toolchain.train import TrainConfig, train

    n_train = len(load_dataset(a.data).split("train").labels)
    recipe = recipe_for(model)
    recipe_lr = recipe.lr if recipe else TrainConfig.lr
    cfgs, rows = candidates(model, a, n_train), []
    while cfgs:
        cfg = cfgs.pop(0)
        t0 = time.perf_counter()
        weights = train(cfg)
        weights, side = read_sidecar(weights)
        val = side["meta"]["metrics"]["val"]  # the training's own val evaluation; test is not read
        rows.append({"lr": cfg.lr, "epochs": cfg.epochs, "train_subset": cfg.train_subset,
                     "checkpoint": str(weights), "sha256": side.get("weights_sha256"),
                     "val_balanced_accuracy": val["balanced_accuracy"], "val_balanced_accuracy_ci":
                     val.get("balanced_accuracy_ci"), "val_accuracy": val["accuracy"],
                     "val_accuracy_ci": val.get("accuracy_ci"), "val_n": val["n"],
                     "seconds": round(time.perf_counter() - t0, 1),  # ~0 when the cache had it
                     "train_wall_s": (side["meta"].get("train") or {}).get("wall_s")})  # when it was trained
        log(f"{model} lr {cfg.lr:g}: val balanced accuracy {val['balanced_accuracy']:.4f} (n={val['n']})")
        if not cfgs:  # the initial sweep is done: the edge rule may add one step outwards
            extended = len(rows) - len(a.lr_factors)
            lr = extension(rows, recipe_lr, extended)
            if lr is not None and lr not in {r["lr"] for r in rows}:
                log(f"{model}: lr {choose(rows, recipe_lr)['lr']:g} chosen at the edge; extending to {lr:g}")
                cfgs.append(dataclasses.replace(cfg, lr=lr))
    chosen = choose(rows, recipe_lr)
    return {"model": model, "recipe_lr": recipe.lr if recipe else None, "candidates": rows, "chosen": chosen,
            "extensions": len(rows) - len(a.lr_factors)}


def policy(a, argv: list[str], log) -> dict:
    """Run the sweep of every model in ``a.models`` and return the document (written by :func:`write`)."""
    if any(f <= 0 for f in a.lr_factors):
        raise ConfigError("--lr-factors must be > 0")
    models = [run_model(m, a, log) for m in a.models]
    return {"schema": "medprune.hparam_policy/1", "command": command_line("hparam_policy", argv),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "data": a.data,
            "seed": a.seed, "lr_factors": list(a.lr_factors),
            "policy": __doc__.split("\n\n")[2].replace("\n", " "), "models": models}


def write(doc: dict, out: Path) -> None:
    from toolchain.atomic import atomic_file

    with atomic_file(out / "hparam_policy.json", "w") as fh:
        json.dump(doc, fh, indent=1)
    with atomic_file(out / "hparam_policy.md", "w") as fh:
        fh.write(markdown(doc))


def add_options(p) -> None:
    """The policy's options (shared with ``baselines_cpu``, which runs the policy first)."""
    p.add_list("--models", default=",".join(MODELS), help="model families")
    p.add_argument("--policy-data", dest="data", default="pneumoniamnist", help="dataset whose val split chooses")
    p.add_list("--lr-factors", default=",".join(f"{f:.3g}" for f in FACTORS), kind=float,
               help="multiples of each recipe's lr")
    p.add_argument("--seed", type=int, default=0)


def markdown(doc: dict) -> str:
    lines = ["# One hyper-parameter policy, chosen on val per model", "", f"Command: `{doc['command']}`", "",
             doc["policy"], "", "| model | lr | val balanced acc. [95 %] | val acc. [95 %] | n | chosen |",
             "|---|---|---|---|---|---|"]
    for m in doc["models"]:
        for r in m["candidates"]:
            ba, acc = r["val_balanced_accuracy_ci"] or [float("nan")] * 2, r["val_accuracy_ci"] or [float("nan")] * 2
            lines.append(f"| {m['model']} | {r['lr']:g} | {100 * r['val_balanced_accuracy']:.1f} [{100 * ba[0]:.1f}, "
                         f"{100 * ba[1]:.1f}] | {100 * r['val_accuracy']:.1f} [{100 * acc[0]:.1f}, {100 * acc[1]:.1f}] "
                         f"| {r['val_n']} | {'**yes**' if r is m['chosen'] or r == m['chosen'] else ''} |")
    edge = [m["model"] for m in doc["models"] if len(m["candidates"]) > 1
            and m["chosen"]["lr"] in (min(r["lr"] for r in m["candidates"]), max(r["lr"] for r in m["candidates"]))]
    ext = [f"{m['model']} {m['extensions']}" for m in doc["models"] if m.get("extensions")]
    if ext:
        lines += ["", "Sweep extended by the edge rule (steps outwards): " + ", ".join(ext) + "."]
    if edge:
        lines += ["", f"Still chosen at the edge of the sweep: {', '.join(edge)} (the edge rule's cap of "
                  f"{MAX_EXTENSIONS} extensions reached, or an older run without it: a wider sweep might choose further out)."]
    return "\n".join(lines) + "\n"


@study("hparam_policy", outputs=("hparam_policy.json", "hparam_policy.md"))
def main(argv: list[str] | None = None) -> int:
    argv = list(argv or [])
    p = StudyParser("hparam_policy", __doc__)
    add_options(p)
    p.add_out()
    a = p.parse_args(argv)
    doc = policy(a, argv, log)
    write(doc, Path(a.out))
    return 0


def log(msg: str) -> None:
    print(f"[{_dt.datetime.now(_dt.timezone.utc):%H:%M:%S}] {msg}", flush=True)
