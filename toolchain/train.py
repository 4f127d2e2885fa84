"""Training from scratch, cached by (config, dataset fingerprint).

Choices (documented here because every later stage inherits these checkpoints):

* Loss: cross-entropy with inverse-frequency class weights (``class_weighting``, default on) so an
  imbalanced set (PneumoniaMNIST is ~3:1 pneumonia:normal) does not buy accuracy with specificity.
* Optimiser: AdamW (default; no weight decay on biases/norm/embedding vectors) or SGD+Nesterov,
  linear warmup then cosine decay per step, gradient-norm clipping (VGG19 has no BatchNorm).
* Model selection: the epoch with the best *validation balanced accuracy* (ties broken by val AUC).
  Balanced accuracy judges the thresholded decision a device will make, weighting both classes
  equally; AUC alone can pick a model whose default threshold is badly placed. ``select_metric="auc"``
  switches; ``"qwk"`` (quadratic-weighted kappa) needs ``ordinal`` (graded classes). Early stopping after ``patience`` epochs without improvement (0 disables it).
* Cache: ``cache_dir()/checkpoints/<model>-<data>-<hash>/model.safetensors`` where the hash covers
  every config field that changes the result, the dataset fingerprint, the device it trains on (CPU
  and CUDA kernels give different weights; ``auto`` counts as the device it resolves to) and the code
  version of ``TRAINING_CODE`` (a changed loader, model or training loop retrains). ``data_dir`` is
  excluded: the fingerprint already identifies the data.
* Determinism: same config, data, seed, torch build and threads → bit-identical CPU weights
  (``toolchain.determinism``; the thread count changes the bits: pin ``MEDPRUNE_THREADS`` to compare runs).
"""

from __future__ import annotations

import dataclasses
import os
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import settings
from .atomic import atomic_dir
from .determinism import deterministic
from .errors import ConfigError
from .fitloop import (  # noqa: F401 (the loop lives in .fitloop, shared with recovery; importers find it here)
    class_weights,
    fit,
    make_console,
    make_optimizer,
    make_schedule,
    stratified_subset,
)
from .pipeline import digest

_NOT_HASHED = ("device", "data_dir", "quiet", "allow_missing_class")  # empty classes are in the fingerprint
SELECT_METRICS = ("balanced_accuracy", "auc", "accuracy", "qwk")
# What decides the trained weights besides the config: its code version is part of every cache key.
TRAINING_CODE = ("toolchain.train", "toolchain.fitloop", "toolchain.data", "toolchain.models", "toolchain.evaluate",
                 "toolchain.metrics")


@dataclass
class TrainConfig:
    model: str = "vgg19"
    data: str = "pneumoniamnist"
    img_size: int = 32
    in_chans: int | None = None  # None: the dataset's channels
    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    optimizer: str = "adamw"  # adamw | sgd
    momentum: float = 0.9
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01
    grad_clip: float = 1.0  # max grad norm; 0 disables
    label_smoothing: float = 0.0
    class_weighting: bool = True
    augment: bool = True
    patience: int = 5
    select_metric: str = "balanced_accuracy"
    seed: int = 0
    val_fraction: float = 0.1  # only used by datasets without an official val split
    val_from_train: float = 0.0  # stratified fraction of train moved into an official val split (toolchain.data.splits)
    load_size: int | None = None
    train_subset: int | None = None  # stratified subset of the train split (quick trials, tests)
    build_args: dict[str, Any] = field(default_factory=dict)
    class_names: list[str] | None = None  # replace the dataset's own names (files that carry only indices)
    device: str = "auto"
    data_dir: str | None = None
    allow_missing_class: bool = False  # keep classes without images (see toolchain.data.labels)
    ordinal: bool = False  # classes are ordered grades: QWK and grade MAE beside accuracy (toolchain.ordinal)
    quiet: bool = False

    def validate(self) -> None:
        if self.optimizer not in ("adamw", "sgd"):
            raise ConfigError(f"unknown optimizer {self.optimizer!r}: use adamw or sgd")
        if self.select_metric not in SELECT_METRICS:
            raise ConfigError(f"unknown select metric {self.select_metric!r}: use {', '.join(SELECT_METRICS)}")
        if self.select_metric == "qwk" and not self.ordinal:
            raise ConfigError("--select qwk needs --ordinal (graded classes)")
        for name in ("epochs", "batch_size", "img_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if self.patience < 0:
            raise ConfigError(f"patience must be >= 0, got {self.patience}")
        from .data import check_split_fraction

        check_split_fraction("--val-fraction", self.val_fraction)
        check_split_fraction("--val-from-train", self.val_from_train)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def cache_key(self, fingerprint: str) -> str:
        # class_names=None, ordinal=False and val_from_train=0 are left out so that adding them kept every
        # earlier cache key
        payload = {k: v for k, v in self.to_dict().items() if k not in _NOT_HASHED
                   and not (k == "class_names" and v is None) and not (k == "ordinal" and not v)
                   and not (k == "val_from_train" and not v)}
        payload["dataset_fingerprint"] = fingerprint
        payload["device"] = settings.resolve_device("auto") if self.device == "auto" else self.device
        payload["code_version"] = training_code_version()
        return digest(payload)[:12]


def training_code_version() -> str:
    """The code version of ``TRAINING_CODE`` (see ``toolchain.pipeline.code_version``)."""
    from .pipeline import code_version

    return code_version(*TRAINING_CODE, follow_imports=False)


def configure_threads() -> int:
    """Threads for torch: the cores this process may use, or ``MEDPRUNE_THREADS``.

    When the machine is already oversubscribed (1-min load >= usable cores) a single thread is used:
    OpenMP workers that keep getting descheduled spin at barriers, which measured ~5x slower per step
    than one thread on a loaded 2-core box.
    """
    env = os.environ.get("MEDPRUNE_THREADS", "").strip()
    if env:
        n = int(env)
    else:
        try:
            n = len(os.sched_getaffinity(0))
        except AttributeError:
            n = os.cpu_count() or 1
        try:
            if n > 1 and os.getloadavg()[0] >= n:
                n = 1
        except OSError:
            pass
    n = max(1, n)
    torch.set_num_threads(n)
    return n


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "_", text).strip("_")[:40] or "data"


def checkpoint_dir(cfg: TrainConfig, ds_name: str, fingerprint: str) -> Path:
    return settings.cache_dir() / "checkpoints" / f"{_slug(cfg.model)}-{_slug(ds_name)}-{cfg.cache_key(fingerprint)}"


def train(cfg: TrainConfig, force: bool = False, *, read_test: bool = True) -> Path:
    """Train (or reuse the cached run of) ``cfg``; returns the checkpoint's ``model.safetensors`` path.

    ``read_test=False`` trains without evaluating the test split (deploy: test is read once, in its final
    report), so the sidecar's ``metrics`` then has no ``test`` entry. It is not in the cache key (the weights
    do not depend on it): a cached run is returned as it was made, with or without test metrics."""
    from .data import Preprocess, load_dataset
    from .data.class_names import rename_classes
    from .data.input_profile import input_profile
    from .models import build_model, read_sidecar
    from .ordinal import ORDINAL_KEY, mark_ordinal

    cfg.validate()
    console = make_console(cfg.quiet)
    ds = load_dataset(cfg.data, cfg.data_dir, load_size=cfg.load_size, val_fraction=cfg.val_fraction,
                      val_from_train=cfg.val_from_train, seed=cfg.seed, allow_missing_class=cfg.allow_missing_class)
    source_names = rename_classes(ds, cfg.class_names)
    mark_ordinal(ds, cfg.ordinal)  # before any evaluation: val/test metrics then carry QWK and grade MAE
    out_dir = checkpoint_dir(cfg, ds.name, ds.fingerprint)
    weights = out_dir / "model.safetensors"
    if weights.exists() and not force:
        try:
            read_sidecar(weights)
            console.print(f"[dim]cached checkpoint (same config and data): {weights}[/dim]")
            return weights
        except Exception as exc:  # a damaged cache entry is retrained, not trusted
            console.print(f"[yellow]cached checkpoint unusable ({exc}); retraining[/yellow]")

    device = settings.resolve_device(cfg.device)
    threads = configure_threads()
    seed_everything(cfg.seed)
    in_chans = cfg.in_chans or ds.channels
    model = build_model(cfg.model, ds.num_classes, in_chans, cfg.img_size, **cfg.build_args).to(device)
    preprocess = Preprocess.for_dataset(ds, cfg.img_size, in_chans)

    with deterministic(device):
        result = fit(model, ds, preprocess, cfg, device=device, console=console, read_test=read_test)
    meta = {
        "class_names": list(ds.class_names),
        "preprocess": preprocess.to_dict(),
        "dataset": {"name": ds.name, "fingerprint": ds.fingerprint, "source": str(ds.source),
                    **({"source_class_names": source_names} if source_names else {})},
        "input_profile": input_profile(ds),
        **({ORDINAL_KEY: True} if cfg.ordinal else {}),
        "metrics": result["metrics"],
        "train_config": {k: v for k, v in cfg.to_dict().items() if k not in ("quiet",)},
        "train": {**result["summary"], "device": device, "threads": threads, "torch": torch.__version__,
                  "deterministic": True, "cache_key": out_dir.name},
        "train_history": result["history"],
    }
    from .models import save_checkpoint

    with atomic_dir(out_dir) as tmp:
        save_checkpoint(tmp / "model.safetensors", model, meta)
    return weights


def copy_checkpoint(weights: Path, out: str | os.PathLike) -> Path:
    """Copy a checkpoint pair to ``out`` (a .safetensors path or a directory), atomically."""
    from .atomic import atomic_path

    target = Path(out)
    if target.suffix != ".safetensors":
        target = target / "model.safetensors"
    for src, dst in ((weights, target), (weights.with_suffix(".json"), target.with_suffix(".json"))):
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)
    return target
