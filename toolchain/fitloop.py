"""The one epoch loop every fit runs: training from scratch (``toolchain.train``) and the recovery fine-tune.

The training choices it implements (AdamW/SGD, warmup + cosine per step, class-weighted loss, gradient
clipping, selection on val, early stopping) are documented in :mod:`toolchain.train`. It lives in a module
of its own so that ``toolchain.recovery`` (a later stage) can add resuming without ``train`` importing it:
given a ``resume`` (:class:`Resume`, the recovery's is in ``toolchain.recovery.loop``), the loop starts from
the state that ``resume`` restores and hands it the state after every epoch; without one it is ``train.fit``.
Its source is part of every training cache key (``train.TRAINING_CODE``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from torch import nn

from .errors import ConfigError

if TYPE_CHECKING:
    from .train import TrainConfig


@dataclass
class LoopState:
    """The epoch loop's counters: what a resumed fit needs besides the model, optimizer and schedule."""

    epoch: int = 0  # epochs finished
    history: list[dict[str, Any]] = field(default_factory=list)
    best: tuple[float, float] | None = None
    best_epoch: int = -1
    stale: int = 0
    wall_s: float = 0.0  # seconds spent by earlier, interrupted runs
    threads: int = 0  # torch threads of the run that wrote the state (CPU bits depend on it)
    best_state: dict[str, torch.Tensor] | None = None


class Resume(Protocol):
    def start(self, model: nn.Module, optimizer, schedule, cfg, console) -> LoopState | None:
        """Restore a saved state into ``model``/``optimizer``/``schedule``; None: start from epoch 0."""

    def save(self, loop: LoopState, model: nn.Module, optimizer, schedule) -> None:
        """Keep the state after a finished epoch."""


def make_console(quiet: bool):
    from rich.console import Console

    return Console(stderr=True, quiet=quiet, log_path=False)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for _name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    groups = _param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def make_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                  min_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = counts.sum() / (num_classes * np.maximum(counts, 1))
    return torch.tensor(weights, dtype=torch.float32)


def stratified_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` indices with the class proportions of ``labels`` (at least one per class)."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    picked = []
    for c in classes:
        idx = np.flatnonzero(labels == c)
        k = max(1, int(round(n * len(idx) / len(labels))))
        picked.append(rng.permutation(idx)[:k])
    return np.sort(np.concatenate(picked))


def stopped(loop: LoopState, cfg: TrainConfig) -> bool:
    """Early stopping: ``patience`` epochs without a better val score (0 disables it)."""
    return bool(cfg.patience) and loop.stale >= cfg.patience


def fit(model: nn.Module, ds, preprocess, cfg: TrainConfig, *, device: str = "cpu", console=None,
        make_loss=None, read_test: bool = True, resume: Resume | None = None) -> dict[str, Any]:
    """Train ``model`` in place (ending on the best-validation weights); returns metrics/history/summary.

    ``make_loss(class_weight) -> loss(logits, y, x)`` replaces the weighted cross-entropy (recovery
    distils from a teacher that needs the batch ``x``); the class weights are computed here either way.
    ``read_test=False`` leaves the test split unread (recovery inside a pipeline that reads it once, later).
    ``resume``: continue from its saved state, and hand it the state after every epoch.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = console or make_console(cfg.quiet)
    loader, labels, criterion = _data(ds, preprocess, cfg, device, make_loss)
    optimizer, schedule = _optimizer(cfg, model, len(loader))
    loop = resume.start(model, optimizer, schedule, cfg, console) if resume else None
    if loop is None:
        loop = LoopState()
        if resume:
            optimizer, schedule = _optimizer(cfg, model, len(loader))  # a failed load may have half-restored them
    val_split = "val" if "val" in ds.splits else "test"
    start = time.perf_counter()
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[status]}")]
    with Progress(*columns, console=console, transient=False, disable=cfg.quiet) as progress:
        task = progress.add_task(f"{cfg.model} epoch {loop.epoch + 1}/{cfg.epochs}", total=cfg.epochs * len(loader),
                                 completed=loop.epoch * len(loader), status="")
        while loop.epoch < cfg.epochs and not stopped(loop, cfg):
            _epoch(model, ds, preprocess, cfg, device, loader, (criterion, optimizer, schedule), loop, val_split,
                   (progress, task), console)
            if resume:
                resume.save(_elapsed(loop, start), model, optimizer, schedule)
            if stopped(loop, cfg):
                console.log(f"early stop: no val {cfg.select_metric} gain for {cfg.patience} epochs")
    return _finish(model, ds, preprocess, cfg, device, loop, val_split, labels, start, read_test)


def _data(ds, preprocess, cfg, device, make_loss):
    from .data import make_loader

    train_split = ds.split("train")
    indices = None
    if cfg.train_subset and cfg.train_subset < len(train_split):
        indices = stratified_subset(train_split.labels, cfg.train_subset, cfg.seed)
    labels = train_split.labels if indices is None else train_split.labels[indices]
    loader = make_loader(ds, "train", preprocess, cfg.batch_size, train=True, seed=cfg.seed, indices=indices,
                         augment=cfg.augment)
    if len(loader) == 0:
        raise ConfigError(f"no training batches: {loader.n} images with batch size {cfg.batch_size}")
    weight = class_weights(labels, ds.num_classes).to(device) if cfg.class_weighting else None
    if make_loss is None:
        ce = nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)
        return loader, labels, lambda logits, y, _x: ce(logits, y)
    return loader, labels, make_loss(weight)


def _optimizer(cfg, model, batches: int):
    optimizer = make_optimizer(cfg, model)
    schedule = make_schedule(optimizer, cfg.epochs * batches, int(round(cfg.warmup_epochs * batches)),
                             cfg.min_lr_ratio)
    return optimizer, schedule


def _elapsed(loop: LoopState, start: float) -> LoopState:
    """The state as saved: wall time of this run so far added to that of earlier runs."""
    return dataclasses.replace(loop, wall_s=loop.wall_s + time.perf_counter() - start)


def _steps(model, cfg, device, loader, step, epoch: int, bar) -> tuple[float, int]:
    """One pass over the training batches; ``(summed loss, images seen)``."""
    criterion, optimizer, schedule = step
    progress, task = bar
    running, seen = 0.0, 0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = criterion(model(x), y, x)
        if not torch.isfinite(loss):
            raise ConfigError(f"{cfg.model}: training diverged (loss {loss.item()}) at epoch {epoch + 1}; "
                              f"lower --lr (now {cfg.lr})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        schedule.step()
        running, seen = running + loss.item() * len(y), seen + len(y)
        progress.update(task, advance=1, status=f"loss {running / seen:.4f}")
    return running, seen


def _epoch(model, ds, preprocess, cfg, device, loader, step, loop: LoopState, val_split, bar, console) -> None:
    """One epoch: the steps, then the val read that selects the best epoch; ``loop`` is updated in place."""
    from .evaluate import evaluate

    progress, task = bar
    epoch = loop.epoch
    t0 = time.perf_counter()
    model.train()
    loader.set_epoch(epoch)
    running, seen = _steps(model, cfg, device, loader, step, epoch, bar)
    train_time = time.perf_counter() - t0
    val = evaluate(model, ds, val_split, preprocess, device=device, intervals=False)  # selection only
    score = _score(val, cfg.select_metric)
    improved = loop.best is None or score > loop.best
    row = {"epoch": epoch + 1, "train_loss": running / max(seen, 1), "lr": step[2].get_last_lr()[0],
           "val_accuracy": val.get("accuracy"), "val_balanced_accuracy": val.get("balanced_accuracy"),
           "val_auc": val.get("auc"), "epoch_s": round(train_time, 2),
           "eval_s": round(time.perf_counter() - t0 - train_time, 2)}
    loop.history.append(row)
    loop.epoch = epoch + 1
    if improved:
        loop.best, loop.best_epoch, loop.stale = score, epoch + 1, 0
        loop.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    else:
        loop.stale += 1
    status = (f"loss {row['train_loss']:.4f} val acc {_fmt(row['val_accuracy'])} "
              f"bal {_fmt(row['val_balanced_accuracy'])} auc {_fmt(row['val_auc'])}")
    progress.update(task, description=f"{cfg.model} epoch {min(epoch + 2, cfg.epochs)}/{cfg.epochs}", status=status)
    console.log(f"epoch {epoch + 1}/{cfg.epochs} {status} ({train_time:.0f}s)" + (" *" if improved else ""))


def _finish(model, ds, preprocess, cfg, device, loop: LoopState, val_split, labels, start,
            read_test: bool) -> dict[str, Any]:
    from .evaluate import evaluate

    if loop.best_state is not None:
        model.load_state_dict(loop.best_state)
    model.eval()
    metrics = {"val": evaluate(model, ds, val_split, preprocess, device=device)}
    if read_test and "test" in ds.splits and val_split != "test":
        metrics["test"] = evaluate(model, ds, "test", preprocess, device=device)
    epochs_run = len(loop.history)
    summary = {
        "best_epoch": loop.best_epoch,
        "epochs_run": epochs_run,
        "select_metric": cfg.select_metric,
        "wall_s": round(_elapsed(loop, start).wall_s, 1),
        "sec_per_epoch": round(sum(h["epoch_s"] for h in loop.history) / max(epochs_run, 1), 2),
        "train_images": int(len(labels)),
    }
    return {"metrics": metrics, "history": loop.history, "summary": summary}


def _score(metrics: dict[str, Any], key: str) -> tuple[float, float]:
    def num(v: Any) -> float:
        return float(v) if v is not None and not (isinstance(v, float) and math.isnan(v)) else -1.0

    return num(metrics.get(key)), num(metrics.get("auc"))


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{float(v):.3f}"
