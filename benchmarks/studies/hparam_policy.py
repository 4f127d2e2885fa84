"""One hyper-parameter policy for every model: the learning rate of each chosen on val by the same sweep.

    MEDPRUNE_DATA=/work/shared/data medprune study hparam_policy \
        [--models vgg19,resnet50,vit_b16] [--data pneumoniamnist] [--lr-factors 0.333,1,3] [--seed 0]

Policy (the same for every model, no model retrained alone): each model trains with its recipe
(``toolchain.recipes``: lr, build args) at ``lr x factor`` for every factor, everything else equal (the
shared CPU schedule ``toolchain.recipes.CPU_BUDGET``: epochs, train subset, warm-up; seed, augmentation,
CPU); the learning rate whose checkpoint has the highest *val* balanced accuracy (the training's own
selection metric) is chosen; ties keep the recipe's lr. Test metrics are neither read nor reported here.
Training goes through ``toolchain.train`` (cached by config, data fingerprint, device and code), so a
checkpoint trained before is reused. ``medprune study baselines_cpu`` runs this policy first and trains
every dataset with the chosen learning rates (the checkpoints the protocol grid is given).

Writes benchmarks/results/hparam_policy.{json,md} (``--out`` to change).
"""

from __future__ import annotations

import datetime as _dt
import json
import time
from pathlib import Path

from toolchain.errors import ConfigError

from .registry import StudyParser, command_line, study

FACTORS = (1 / 3, 1.0, 3.0)
MODELS = ("vgg19", "resnet50", "vit_b16")  # the paper's three families


def candidates(model: str, a, n_train: int) -> list:
    """The TrainConfigs of the sweep of ``model`` (recipe lr x each factor, everything else shared)."""
    from toolchain.recipes import CPU_BUDGET, recipe_for
    from toolchain.train import TrainConfig

    recipe = recipe_for(model)
    base = recipe.train_args() if recipe else {"lr": TrainConfig.lr}
    base.update(CPU_BUDGET.schedule(n_train))  # one schedule for every model (the recipe's warm-up too)
    return [TrainConfig(model=model, data=a.data, seed=a.seed, device="cpu", quiet=True,
                        **{**base, "lr": float(f"{base['lr'] * f:.3g}")}) for f in a.lr_factors]


def choose(rows: list[dict], recipe_lr: float) -> dict:
    """The row with the highest val balanced accuracy; ties go to the recipe's lr, then the smaller lr."""
    if not rows:
        raise ConfigError("no trained candidates to choose from")
    return max(rows, key=lambda r: (r["val_balanced_accuracy"], r["lr"] == recipe_lr, -r["lr"]))


def run_model(model: str, a, log) -> dict:
    from toolchain.data import load_dataset
    from toolchain.models import read_sidecar
    from toolchain.recipes import recipe_for
    from toolchain.train import train

    n_train = len(load_dataset(a.data).split("train").labels)
    rows = []
    for cfg in candidates(model, a, n_train):
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
    recipe = recipe_for(model)
    chosen = choose(rows, recipe.lr if recipe else rows[0]["lr"])
    return {"model": model, "recipe_lr": recipe.lr if recipe else None, "candidates": rows, "chosen": chosen}


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
    if edge:
        lines += ["", f"Chosen at the edge of the sweep: {', '.join(edge)} (a wider sweep might choose further out)."]
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
