"""The recovery's epoch loop: :func:`toolchain.train.fit`'s loop, resumable after any finished epoch.

Same optimiser, schedule, steps, selection, early stopping, history and summary as ``fit`` (a test holds
the two to bit-identical weights), with one addition: given a :class:`.resume.ResumeFile`, the loop writes
its state after every epoch and, when a state is there at the start, continues from the next epoch.
``fit`` itself stays as it is (training checkpoints are cached by its code version).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .resume import LoopState, ResumeFile


def fit_resumable(model: nn.Module, ds, preprocess, cfg, *, make_loss, device: str = "cpu", console=None,
                  resume: ResumeFile | None = None, memo: dict | None = None) -> dict[str, Any]:
    """Train ``model`` in place (ending on the best-validation weights) like ``fit(..., read_test=False)``.

    ``make_loss(class_weight) -> loss(logits, y, x)``; ``memo`` is the teacher-logit table the loss fills
    (saved with the state so a resumed run reads the same teacher logits); ``resume`` is where the state lives.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..train import _console

    if make_loss is None:
        raise ConfigError("fit_resumable needs make_loss (the recovery's distillation loss)")
    console = console or _console(cfg.quiet)
    loader, labels, criterion = _data(model, ds, preprocess, cfg, device, make_loss)
    optimizer, schedule = _optimizer(cfg, model, len(loader))
    loop = resume.load(model, optimizer, schedule, memo, cfg.epochs) if resume else None
    if loop is None:
        loop = LoopState()
        optimizer, schedule = _optimizer(cfg, model, len(loader))  # a failed load may have half-restored them
    else:
        console.print(_resuming(resume.key, loop, cfg))
    val_split = "val" if "val" in ds.splits else "test"
    start = time.perf_counter()
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[status]}")]
    with Progress(*columns, console=console, transient=False, disable=cfg.quiet) as progress:
        task = progress.add_task(f"{cfg.model} epoch {loop.epoch + 1}/{cfg.epochs}", total=cfg.epochs * len(loader),
                                 completed=loop.epoch * len(loader), status="")
        bar = (progress, task)
        while loop.epoch < cfg.epochs and not _stopped(loop, cfg):
            _epoch(model, ds, preprocess, cfg, device, loader, criterion, optimizer, schedule, loop, val_split,
                   bar, console)
            if resume:
                resume.save(_elapsed(loop, start), model, optimizer, schedule, memo)
            if _stopped(loop, cfg):
                console.log(f"early stop: no val {cfg.select_metric} gain for {cfg.patience} epochs")
    return _finish(model, ds, preprocess, cfg, device, loop, val_split, labels, start)


def _data(model, ds, preprocess, cfg, device, make_loss):
    from ..data import make_loader
    from ..train import class_weights, stratified_subset

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
    return loader, labels, make_loss(weight)


def _optimizer(cfg, model, batches: int):
    from ..train import make_optimizer, make_schedule

    optimizer = make_optimizer(cfg, model)
    schedule = make_schedule(optimizer, cfg.epochs * batches, int(round(cfg.warmup_epochs * batches)),
                             cfg.min_lr_ratio)
    return optimizer, schedule


def _resuming(key: str, loop: LoopState, cfg) -> str:
    done = loop.epoch >= cfg.epochs or _stopped(loop, cfg)
    where = f"after its last epoch ({loop.epoch}/{cfg.epochs})" if done else f"at epoch {loop.epoch + 1}/{cfg.epochs}"
    threads = torch.get_num_threads()
    other = (f" (state written with {loop.threads} torch threads, now {threads}: the bits may differ from an "
             "uninterrupted run)") if loop.threads and loop.threads != threads else ""
    return f"resuming {key[:16]} {where}{other}"


def _stopped(loop: LoopState, cfg) -> bool:
    return bool(cfg.patience) and loop.stale >= cfg.patience


def _elapsed(loop: LoopState, start: float) -> LoopState:
    """The state as saved: wall time of this run so far added to that of earlier runs."""
    import dataclasses

    return dataclasses.replace(loop, wall_s=loop.wall_s + time.perf_counter() - start)


def _epoch(model, ds, preprocess, cfg, device, loader, criterion, optimizer, schedule, loop: LoopState, val_split,
           bar, console) -> None:
    """One epoch: the steps, then the val read that selects the best epoch; ``loop`` is updated in place."""
    from ..evaluate import evaluate
    from ..train import _fmt, _score

    progress, task = bar
    epoch = loop.epoch
    t0 = time.perf_counter()
    model.train()
    loader.set_epoch(epoch)
    running, seen = 0.0, 0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = criterion(model(x), y, x)
        if not torch.isfinite(loss):
            raise ConfigError(f"recovery diverged (loss {loss.item()}) at epoch {epoch + 1}; lower --lr (now {cfg.lr})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        schedule.step()
        running, seen = running + loss.item() * len(y), seen + len(y)
        progress.update(task, advance=1, status=f"loss {running / seen:.4f}")
    train_time = time.perf_counter() - t0
    val = evaluate(model, ds, val_split, preprocess, device=device, intervals=False)  # selection only
    score = _score(val, cfg.select_metric)
    improved = loop.best is None or score > loop.best
    row = {"epoch": epoch + 1, "train_loss": running / max(seen, 1), "lr": schedule.get_last_lr()[0],
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


def _finish(model, ds, preprocess, cfg, device, loop: LoopState, val_split, labels, start) -> dict[str, Any]:
    from ..evaluate import evaluate

    if loop.best_state is not None:
        model.load_state_dict(loop.best_state)
    model.eval()
    metrics = {"val": evaluate(model, ds, val_split, preprocess, device=device)}
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
