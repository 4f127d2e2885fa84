"""CPU baselines: every checkpoint the protocol grid uses, trained on this CPU by one command, timed.

    MEDPRUNE_DATA=/work/shared/data medprune study baselines_cpu        # = make baselines
        [--models vgg19,resnet50,vit_b16] [--datasets pneumoniamnist,breastmnist,chest_xray_224]

1. The hyper-parameter policy (``benchmarks.studies.hparam_policy``): each model's learning rate is
   chosen on the val split of ``--policy-data`` (recipe lr x 1/3, 1, 3; all else equal). ``--policy-from``
   takes a finished policy run instead (its candidates' training times are still counted).
2. Every model x dataset is trained with its recipe (``toolchain.recipes``), the chosen lr and the shared
   CPU schedule ``toolchain.recipes.CPU_BUDGET`` (about 3000 images seen; the policy's own checkpoints
   are the chosen PneumoniaMNIST ones, reused from the training cache, not trained twice).
3. Every other checkpoint a committed result cites (``benchmarks.studies.cited_checkpoints``: the
   recovery study's, the paper grid's, ...) is retrained with its own ``medprune train`` command and its
   sha256 compared with the cited one (``--cited list``: listed with the training time it recorded, not
   retrained; the full-length ones take hours on 2 cores). Checkpoints trained on CUDA are not retrained
   on a CPU (no CPU retrain can match them). Run it with ``MEDPRUNE_CACHE`` set to an empty folder, or the
   training cache hands back the cited checkpoints themselves (the report then says NOT retrained).
   ``--finished DIR --cited train --cited-subset SHA,...`` retrains a few more for a finished run and keeps
   the retrains its earlier cited section recorded.

The whole command is timed: wall clock, CPU time of the process (all its threads) and the 1-min load
average sampled every 15 s, with the machine's CPU, cores and torch threads, so the minutes can be read
against how busy the machine was. Checkpoints live in the training cache (key: config, data fingerprint,
device, training code); each run records its weights sha256, which results cite.

Writes benchmarks/results/baselines_cpu.{json,md} and hparam_policy.{json,md} (``--out`` to change).
The full-length recipes (``medprune study baselines``, many hours on 2 cores) are a separate study.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import threading
import time
from pathlib import Path

from toolchain.errors import ConfigError

from . import cited_checkpoints as cc
from . import hparam_policy as hp
from .registry import RESULTS, StudyParser, command_line, study

# how each dataset is read (BreastMNIST from its 64 px file, chest_xray_224 decoded at 64 px; both
# trained at 32 px like PneumoniaMNIST)
DATASETS = {"pneumoniamnist": {"data": "pneumoniamnist"}, "breastmnist": {"data": "breastmnist_64"},
            "chest_xray_224": {"data": "chest_xray_224", "load_size": 64}}


def config(model: str, dataset: str, lr: float, seed: int = 0):
    """The TrainConfig of one CPU baseline: recipe, chosen lr, CPU_BUDGET schedule for that train split."""
    from toolchain.data import load_dataset
    from toolchain.recipes import CPU_BUDGET, recipe_for
    from toolchain.train import TrainConfig

    if dataset not in DATASETS:
        raise ConfigError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")
    spec = DATASETS[dataset]
    ds = load_dataset(spec["data"], load_size=spec.get("load_size"), seed=seed)
    recipe = recipe_for(model)
    args = {**(recipe.train_args() if recipe else {}), **CPU_BUDGET.schedule(len(ds.split("train").labels))}
    return TrainConfig(model=model, seed=seed, device="cpu", quiet=True, **spec, **{**args, "lr": lr})


class LoadSampler:
    """The 1-min load average every ``period`` seconds in a daemon thread (``with`` starts and stops it)."""

    def __init__(self, period: float = 15.0):
        self.period, self.samples, self._stop = period, [], threading.Event()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.samples.append(round(os.getloadavg()[0], 2))
            self._stop.wait(self.period)

    def __enter__(self) -> LoadSampler:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict:
        s = self.samples or [float("nan")]
        return {"mean": round(sum(s) / len(s), 2), "max": max(s), "min": min(s), "samples": len(self.samples),
                "period_s": self.period}


def machine() -> dict:
    """What the minutes were measured on."""
    import torch

    cpu = next((ln.split(":", 1)[1].strip() for ln in _cpuinfo() if ln.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores_usable": len(os.sched_getaffinity(0)), "cores_online": os.cpu_count(),
            "torch": torch.__version__, "python": platform.python_version(), "nice": os.nice(0),
            "host": platform.node()}


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def run_entry(key: str, weights: Path, seconds: float) -> dict:
    """One trained run as the report lists it (test metrics from the checkpoint, read by training's end)."""
    from toolchain.models import read_sidecar

    _, side = read_sidecar(weights)
    meta = side["meta"]
    cfg = meta["train_config"]
    command = cc.train_command(cfg)
    pick = ("accuracy", "accuracy_ci", "balanced_accuracy", "balanced_accuracy_ci", "auc", "auc_ci", "n")
    metrics = meta.get("metrics") or {}
    return {"key": key, "checkpoint": str(weights), "weights_sha256": side["weights_sha256"],
            "dataset_fingerprint": (meta.get("dataset") or {}).get("fingerprint"), "train_config": cfg,
            "command": command, "seconds": round(seconds, 1), "train": meta.get("train"),
            **{split: {k: (metrics.get(split) or {}).get(k) for k in pick} for split in ("val", "test")}}


def markdown(doc: dict) -> str:
    t = doc["timing"]
    lines = ["# CPU baselines (one command, timed)", "", f"Command: `{doc['command']}`  ",
             f"Created {doc['created']}. **{t['wall_min']:.1f} min wall**, {t['cpu_min']:.1f} min process CPU time "
             f"on {doc['machine']['cpu']} ({doc['machine']['cores_usable']} usable cores, nice {doc['machine']['nice']}); "
             f"1-min load average mean {t['load']['mean']} (max {t['load']['max']}, {t['load']['samples']} samples): "
             "the machine was shared, so wall time is an upper bound for a quiet machine. Training time summed "
             f"over the {doc['trained']['checkpoints']} checkpoints as each recorded it when trained: "
             f"**{doc['trained']['minutes']:.1f} min** ({doc['trained']['with_time']} with a recorded time).", "",
             *([f"The policy ran before (`{doc['policy_from']}`, command in `hparam_policy.md`): this command's own "
                "wall/CPU time covers only what it trained itself; the summed training time covers every checkpoint.",
                ""] if doc.get("policy_from") else []),
             doc["schedule"], "", "Learning rates chosen on val by the hyper-parameter policy (`hparam_policy.md`): "
             + ", ".join(f"{m} {lr:g}" for m, lr in doc["chosen_lr"].items()) + ".", "",
             "| run | lr | epochs | train images | val bal. acc. [95 %] | test acc. [95 %] | test AUC | n test | "
             "train s | weights sha256 |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in doc["runs"]:
        v, te, cfg = r["val"], r["test"], r["train_config"]
        lines.append(f"| {r['key']} | {cfg['lr']:g} | {cfg['epochs']} | {(r['train'] or {}).get('train_images')} | "
                     f"{_ci(v['balanced_accuracy'], v['balanced_accuracy_ci'])} | {_ci(te['accuracy'], te['accuracy_ci'])}"
                     f" | {_ci(te['auc'], te['auc_ci'])} | {_n(te['n'])} | {r['seconds']:.0f} | `{r['weights_sha256'][:16]}` |")
    done = {r["key"] for r in doc["runs"]}
    missing = [f"{m}:{d}" for d in DATASETS for m in hp.MODELS if f"{m}:{d}" not in done]
    if missing:
        lines += ["", f"**Not run** (of `make baselines`' {len(DATASETS) * len(hp.MODELS)} runs): " + ", ".join(missing)]
    lines += cc.markdown_lines(doc.get("cited", []))
    if doc.get("cited_added_by"):
        lines += ["", f"(Cited-checkpoint section added to this finished run by `{doc['cited_added_by']}`; "
                  "the runs above were not redone.)"]
    lines += ["", "## Reproduce each run", "", *[f"- {r['key']}: `{r['command']}`" for r in doc["runs"]], ""]
    return "\n".join(lines)


def _n(n) -> str:
    # a checkpoint deploy trained first (same config: same cache entry) has no test metrics in its sidecar
    return "n/a (test not read)" if n is None else str(n)


def _ci(v, ci) -> str:
    if v is None:
        return "n/a"
    return f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{v:.3f}"


def _write(doc: dict, out: Path) -> None:
    from toolchain.atomic import atomic_file

    out.mkdir(parents=True, exist_ok=True)
    with atomic_file(out / "baselines_cpu.json", "w") as fh:
        json.dump(doc, fh, indent=1)
    with atomic_file(out / "baselines_cpu.md", "w") as fh:
        fh.write(markdown(doc))


@study("baselines_cpu", outputs=("baselines_cpu.json", "baselines_cpu.md", "hparam_policy.json", "hparam_policy.md"))
def main(argv: list[str] | None = None) -> int:
    from toolchain.recipes import CPU_BUDGET
    from toolchain.train import train

    argv = list(argv or [])
    p = StudyParser("baselines_cpu", __doc__)
    hp.add_options(p)
    p.add_list("--datasets", default=",".join(DATASETS), choices=list(DATASETS), help="datasets to train on")
    p.add_argument("--policy-from", type=Path, default=None, metavar="JSON",
                   help="take the learning rates from a finished hparam_policy.json instead of running the policy")
    p.add_argument("--cited", choices=("train", "list"), default="train",
                   help="retrain the other checkpoints the committed results cite, or only list them [default: train]")
    p.add_argument("--cited-subset", default=[], type=lambda t: [k.strip() for k in t.split(",") if k.strip()],
                   metavar="SHA,...", help="with --cited train: retrain only the cited checkpoints whose sha256 "
                                           "starts with one of these")
    p.add_argument("--finished", type=Path, default=None, metavar="DIR",
                   help="add the cited-checkpoint section to the finished run in DIR (its runs are not redone)")
    p.add_out()
    a = p.parse_args(argv)
    out = Path(a.out)
    if a.finished:
        return _add_cited(a.finished, out, command_line("baselines_cpu", argv), _cited_train(a))
    wall0, cpu0 = time.perf_counter(), time.process_time()
    doc: dict = {"schema": "medprune.baselines_cpu/1", "command": command_line("baselines_cpu", argv),
                 "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                 "machine": machine(), "schedule": f"Schedule for every run: {_schedule_text(CPU_BUDGET)}",
                 "runs": [], "not_run": [f"{m}:{d}" for d in a.datasets for m in a.models]}
    with LoadSampler() as load:
        policy = _read_policy(a.policy_from, a.models) if a.policy_from else hp.policy(a, argv, hp.log)
        hp.write(policy, out)
        doc["chosen_lr"] = {m["model"]: m["chosen"]["lr"] for m in policy["models"]}
        doc["policy_from"] = str(a.policy_from) if a.policy_from else None
        for dataset in a.datasets:
            for model in a.models:
                key, t0 = f"{model}:{dataset}", time.perf_counter()
                cfg = config(model, dataset, doc["chosen_lr"][model], a.seed)
                hp.log(f"== {key}: lr {cfg.lr:g}, {cfg.epochs} epochs, subset {cfg.train_subset}")
                weights = train(cfg)
                doc["runs"].append(run_entry(key, weights, time.perf_counter() - t0))
                doc["not_run"].remove(key)
                doc["timing"] = _timing(wall0, cpu0, load)
                doc["trained"] = trained_minutes(policy, doc["runs"])
                _write(doc, out)  # after every run: a stopped command keeps what finished
                hp.log(f"== {key}: weights sha256 {doc['runs'][-1]['weights_sha256']}")
        doc["cited"] = cc.section(RESULTS, produced_by(policy, doc["runs"]), train=_cited_train(a), log=hp.log)
        doc["cited_summary"] = cc.summary(doc["cited"])
    doc["timing"], doc["trained"] = _timing(wall0, cpu0, load), trained_minutes(policy, doc["runs"])
    _write(doc, out)
    hp.log(f"wrote {out / 'baselines_cpu.json'}: {doc['timing']['wall_min']:.1f} min wall")
    return 0


def produced_by(policy: dict, runs: list[dict]) -> dict[str, str]:
    """weights sha256 -> the runs of this command that made it (a policy candidate and a grid run may share one)."""
    made: dict[str, list[str]] = {}
    for m in policy["models"]:
        for r in m["candidates"]:
            made.setdefault(r["sha256"], []).append(f"policy {m['model']} lr {r['lr']:g}")
    for r in runs:
        made.setdefault(r["weights_sha256"], []).append(r["key"])
    return {sha: " = ".join(names) for sha, names in made.items()}


def _cited_train(a) -> bool | tuple[str, ...]:
    """What ``cited_checkpoints.section`` retrains: all (True), none (False) or the given sha256 prefixes."""
    if a.cited_subset and a.cited != "train":
        raise ConfigError("--cited-subset needs --cited train")
    return tuple(a.cited_subset) if a.cited_subset else a.cited == "train"


def _add_cited(finished: Path, out: Path, command: str, train: bool | tuple[str, ...]) -> int:
    """``--finished``: the run in ``finished`` plus the cited-checkpoint section, written to ``out``."""
    paths = [finished / "baselines_cpu.json", finished / "hparam_policy.json"]
    if not all(p.is_file() for p in paths):
        raise ConfigError(f"--finished: {finished} lacks baselines_cpu.json or hparam_policy.json")
    doc, policy = (json.loads(p.read_text()) for p in paths)
    # retrains an earlier --finished run recorded are kept (with that command) unless retrained again
    doc["cited"] = cc.section(RESULTS, produced_by(policy, doc["runs"]), train=train, log=hp.log,
                              earlier=doc.get("cited", []), earlier_by=doc.get("cited_added_by"))
    doc["cited_summary"] = cc.summary(doc["cited"])
    doc["cited_added_by"] = command
    out.mkdir(parents=True, exist_ok=True)
    hp.write(policy, out)
    _write(doc, out)
    return 0


def _read_policy(path: Path, models: list[str]) -> dict:
    """A finished policy run (its candidates keep the training times they recorded); every model must be in it."""
    if not path.is_file():
        raise ConfigError(f"--policy-from: {path} not found")
    doc = json.loads(path.read_text())
    missing = [m for m in models if m not in {e["model"] for e in doc.get("models", [])}]
    if missing:
        raise ConfigError(f"--policy-from: {path} has no learning rate for {', '.join(missing)}")
    return {**doc, "models": [e for e in doc["models"] if e["model"] in models]}


def _schedule_text(budget) -> str:
    return (f"about {budget.images_seen} training images seen (a stratified subset of at most {budget.subset} "
            f"images, at least {budget.min_epochs} epochs), warm-up {budget.warmup_fraction:.0%} of the run, "
            "no early stop, best val epoch kept; 32 px, batch 64, AdamW, seed 0, CPU")


def _timing(wall0: float, cpu0: float, load: LoadSampler) -> dict:
    return {"wall_min": round((time.perf_counter() - wall0) / 60, 2),
            "cpu_min": round((time.process_time() - cpu0) / 60, 2), "load": load.summary()}


def trained_minutes(policy: dict, runs: list[dict]) -> dict:
    """Training wall time summed over every distinct checkpoint this command needs, as each recorded it when
    it was trained (also those an earlier, interrupted command left in the cache; then ``timing`` is short)."""
    seen = {}
    for r in (r for m in policy["models"] for r in m["candidates"]):
        seen[r["sha256"]] = r.get("train_wall_s")
    for r in runs:
        seen.setdefault(r["weights_sha256"], (r.get("train") or {}).get("wall_s"))
    known = [v for v in seen.values() if v is not None]
    return {"checkpoints": len(seen), "with_time": len(known), "minutes": round(sum(known) / 60, 2)}
