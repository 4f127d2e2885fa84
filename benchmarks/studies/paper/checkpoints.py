"""Which checkpoint a (dataset, model) pair of the paper grid uses, and training it when there is none.

The trained baseline (``benchmarks/results/baselines.json``, else ``benchmarks.studies.baselines.RUNS``),
a ``--checkpoint`` given on the command line, or ``toolchain.train`` with the baseline's hyperparameters
(cached by config, so a checkpoint is trained once).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from toolchain.errors import ConfigError

from ..registry import RESULTS
from .config import Grid


def _baseline_configs(path: Path | None = None) -> list[dict]:
    """Entries of baselines.json that name a model and dataset (checkpoint path and/or train config)."""
    path = path or RESULTS / "baselines.json"
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:  # a damaged results file is the user's to fix, not an empty one
        raise ConfigError(f"{path} is not valid JSON ({exc}); restore it from git") from None
    found: list[dict] = []

    def walk(node):
        if isinstance(node, dict):
            cfg = node.get("train_config") or node.get("config")
            cfg = cfg if isinstance(cfg, dict) else None
            model = node.get("model") or (cfg or {}).get("model")
            data_name = node.get("data") or node.get("dataset") or (cfg or {}).get("data")
            if isinstance(data_name, dict):
                data_name = data_name.get("name")
            if isinstance(model, str) and isinstance(data_name, str) and (cfg or node.get("checkpoint")):
                found.append({"model": model, "data": data_name, "train_config": cfg, "origin": "baselines.json",
                              "checkpoint": node.get("checkpoint") or node.get("checkpoint_path")})
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(data)
    return found


def _baseline_runs() -> list[dict]:
    """The baseline configs of ``benchmarks.studies.baselines`` (used until baselines.json has been written)."""
    from ..baselines import RUNS, make_config

    out = []
    for key in RUNS:
        cfg = make_config(key)
        out.append({"model": cfg.model, "data": cfg.data, "train_config": cfg.to_dict(), "checkpoint": None,
                    "origin": "benchmarks.studies.baselines.RUNS"})
    return out


def _dataset_matches(entry_data: str, dataset: str) -> bool:
    """``breastmnist_64`` (a baseline trained on the 64 px release) serves the grid's ``breastmnist``."""
    a, b = Path(str(entry_data)).stem, Path(dataset).stem
    return a == b or a.startswith(b + "_")


def train_config_for(dataset: str, model: str, grid: Grid):
    """The TrainConfig of a (dataset, model) and where it came from.

    The baseline's config when baselines.json (or ``benchmarks.studies.baselines.RUNS``) has this pair; else the
    baseline hyperparameters of the
    same model on another dataset with this dataset swapped in (``grid.train_subset`` caps its train
    split, so e.g. chest_xray_224 trains in CPU time); else TrainConfig defaults, also capped.
    """
    from toolchain.train import TrainConfig

    fields = set(TrainConfig.__dataclass_fields__)
    entries = [e for e in _baseline_configs() + _baseline_runs() if e["model"] == model and e["train_config"]]
    exact = [e for e in entries if _dataset_matches(e["data"], dataset)]
    if exact:
        cfg = {k: v for k, v in exact[0]["train_config"].items() if k in fields}
        cfg.update(model=model, quiet=True, device="cpu")
        return TrainConfig(**cfg), exact[0]["origin"]
    overrides = dict(data=dataset, load_size=grid.load_sizes.get(dataset), data_dir=grid.data_dir, quiet=True,
                     device="cpu", train_subset=grid.train_subset)
    if entries:
        cfg = {k: v for k, v in entries[0]["train_config"].items() if k in fields}
        cfg.update(model=model, **overrides)
        return TrainConfig(**cfg), f"{entries[0]['origin']} hyperparameters of {model} on {entries[0]['data']}"
    return TrainConfig(model=model, **overrides), "TrainConfig defaults"


def _baseline_checkpoint(dataset: str, model: str) -> str | None:
    for entry in _baseline_configs():
        if entry["model"] == model and _dataset_matches(entry["data"], dataset) and entry.get("checkpoint"):
            if Path(entry["checkpoint"]).exists():
                return entry["checkpoint"]
    return None


def checkpoint_for(dataset: str, model: str, given: dict[str, str] | None = None) -> str:
    """``given["DATASET:MODEL"]`` or the trained baseline's checkpoint; ConfigError naming the fix otherwise."""
    path = (given or {}).get(f"{dataset}:{model}") or _baseline_checkpoint(dataset, model)
    if not path:
        raise ConfigError(f"no checkpoint for {dataset}:{model}: train the baseline (medprune study baselines) "
                          f"or pass --checkpoint {dataset}:{model}=PATH")
    return str(path)


def _cached_checkpoint(cfg) -> Path | None:
    """The checkpoint toolchain.train would return for ``cfg`` if it was trained before, else None."""
    from toolchain.data import load_dataset
    from toolchain.train import checkpoint_dir

    ds = load_dataset(cfg.data, cfg.data_dir, load_size=cfg.load_size, val_fraction=cfg.val_fraction,
                      val_from_train=cfg.val_from_train, seed=cfg.seed, progress=False)
    weights = checkpoint_dir(cfg, ds.name, ds.fingerprint) / "model.safetensors"
    return weights if weights.exists() else None


def train_task(cfg_dict: dict, cache_root: str) -> str:
    from toolchain.train import TrainConfig, train

    from .cell import single_thread

    # the driver's checkpoint cache, whatever directory Ray started this worker in
    os.environ["MEDPRUNE_CACHE"] = cache_root
    single_thread()
    return str(train(TrainConfig(**cfg_dict)))


def checkpoint_info(path: str | os.PathLike, source: str) -> dict:
    """What cells need from a checkpoint: its sha256, preprocess, how its data was loaded."""
    from toolchain.models import read_sidecar

    weights, side = read_sidecar(path)
    meta = side["meta"]
    cfg = meta.get("train_config") or {}
    return {
        "checkpoint": str(weights),
        "sha256": side.get("weights_sha256"),
        "source": source,
        "arch": meta.get("arch"),
        "img_size": meta.get("img_size"),
        "preprocess": meta["preprocess"],
        "load_size": cfg.get("load_size"),
        "val_fraction": cfg.get("val_fraction", 0.1),
        # only when set, so the specs (and cell keys) of every checkpoint from before the option are unchanged
        **({"val_from_train": cfg["val_from_train"]} if cfg.get("val_from_train") else {}),
        "data_seed": cfg.get("seed", 0),
        "fingerprint": (meta.get("dataset") or {}).get("fingerprint"),
        "train_metrics": meta.get("metrics"),
        "train_config": cfg,
    }
