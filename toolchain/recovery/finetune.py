"""Recovery fine-tuning of a physically pruned model, distilled from its dense parent, cached.

    cfg = RecoveryConfig()  # the recipe (RECIPE); override fields as flags do: RecoveryConfig(epochs=4)
    recovered, info = recover_cached(pruned, dense, ds, preprocess, cfg, meta=pruned_meta, teacher_sha=sha)

The training loop is :func:`toolchain.fitloop.fit`, the one ``train.fit`` runs (AdamW, warmup + cosine per step, class-weighted
cross-entropy, progress bar, best epoch by *val balanced accuracy*, early stopping), run by
:func:`.loop.fit_resumable` with the distillation loss of :mod:`.distill` plugged in. The learning rate defaults to the dense model's own
training rate (recorded in its checkpoint), so one recipe serves VGG (1e-4) and ResNet (1e-3) alike.

Cache: ``cache_dir()/recovered/<key>/`` holds the recovered checkpoint and ``result.json``; the key is
the digest of (``VERSION``, teacher checkpoint sha256, the pruned student's weights, the config, the
dataset fingerprint). A finished recovery is reused. While it runs, the folder holds a resume state
written after every epoch (:mod:`.resume`); a later call with the same key continues from the next epoch
(an interrupted epoch is redone) and ends bit-identical to an uninterrupted run; the finished entry
replaces the folder, resume state included (atomic folder).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..importance._hooks import frozen_params
from .distill import check_weights, distill_loss_factory
from .resume import ResumeFile

VERSION = 1  # bump when the recovery procedure changes what it produces
_NOT_HASHED = ("quiet", "device")

# THE recovery recipe: RecoveryConfig's defaults, and through them the defaults of `medprune prune`,
# `medprune deploy` and `medprune study recovery` (the CLIs read this literal from source, so --help stays
# torch-free; tests/toolchain/test_recovery_recipe.py checks that all three equal it). Pure distillation:
# the gates compare each class's sensitivity with the dense model's, and class-weighted cross-entropy moves
# the student's operating point away from the teacher's (recovery study, VGG19 MACs ÷8.8, LRP: CE+KD val
# worst-class sensitivity drop 6.7 pts, KD alone 0.5 pts). Un-augmented batches repeat exactly, so the
# teacher's logits are computed once per image.
RECIPE = {"epochs": 2, "temperature": 4.0, "kd_weight": 1.0, "ce_weight": 0.0, "augment": False}


@dataclass(frozen=True)
class RecoveryConfig:
    epochs: int = RECIPE["epochs"]
    lr: float | None = None  # None: the dense model's training lr
    batch_size: int = 64
    temperature: float = RECIPE["temperature"]
    kd_weight: float = RECIPE["kd_weight"]
    ce_weight: float = RECIPE["ce_weight"]
    weight_decay: float | None = None  # None: the dense model's
    warmup_epochs: float = 0.1
    min_lr_ratio: float = 0.01
    patience: int = 2
    train_subset: int | None = None
    augment: bool = RECIPE["augment"]
    class_weighting: bool = True
    seed: int = 0
    # opt-in: after distillation, a per-class logit offset fitted on val moves the student's operating point
    # back to the teacher's (``.align``); folded into the classifier bias
    align: bool = False
    quiet: bool = False
    device: str = "cpu"

    @classmethod
    def with_overrides(cls, **given: Any) -> RecoveryConfig:
        """The recipe with the options a user set (``None`` = not set: the recipe's value), validated."""
        return cls(**{k: v for k, v in given.items() if v is not None}).validate()

    def validate(self) -> RecoveryConfig:
        if self.epochs < 1:
            raise ConfigError(f"recovery epochs must be >= 1, got {self.epochs}")
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"recovery lr must be positive, got {self.lr}")
        if self.batch_size < 1:
            raise ConfigError(f"recovery batch size must be >= 1, got {self.batch_size}")
        check_weights(self.temperature, self.kd_weight, self.ce_weight)
        return self

    def recipe(self) -> dict[str, Any]:
        """What changes the result (the cache key's config part, also written to manifests). ``align`` is
        listed only when on, so recipes (and cache keys) from before the option are unchanged."""
        return {k: v for k, v in dataclasses.asdict(self).items()
                if k not in _NOT_HASHED and not (k == "align" and not v)}

    def train_config(self, dense_meta: dict, ds_name: str, label: str):
        """The :class:`TrainConfig` ``fit`` runs, dense training values filling the unset fields."""
        from ..train import TrainConfig

        dense = dense_meta.get("train_config") or {}
        return TrainConfig(
            model=label, data=ds_name, img_size=int(dense_meta.get("img_size") or 32), epochs=self.epochs,
            batch_size=self.batch_size, lr=self.lr or float(dense.get("lr") or 1e-4),
            weight_decay=self.weight_decay if self.weight_decay is not None else float(dense.get("weight_decay", 0.05)),
            warmup_epochs=self.warmup_epochs, min_lr_ratio=self.min_lr_ratio, patience=self.patience,
            class_weighting=self.class_weighting, augment=self.augment, seed=self.seed,
            train_subset=self.train_subset, device=self.device, quiet=self.quiet,
        )


def state_digest(model: nn.Module) -> str:
    """sha256 of the model's tensors (names, shapes, values): identifies a pruned student."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def cache_key(cfg: RecoveryConfig, teacher_sha: str, student: nn.Module, ds_fingerprint: str) -> str:
    from ..pipeline import code_version, digest
    from ..settings import resolve_device

    # the device and the code (this module, train.fit and what they import) change the weights too; the
    # alignment is applied after the cached fit (``recover_cached``), so it is not part of the key
    fit = {k: v for k, v in cfg.recipe().items() if k != "align"}
    return digest({"stage": "recover", "version": VERSION, "teacher": teacher_sha, "student": state_digest(student),
                   "config": fit, "dataset": ds_fingerprint, "device": resolve_device(cfg.device),
                   "code_version": code_version(__name__)})


def recover(student: nn.Module, teacher: nn.Module, ds, preprocess, cfg: RecoveryConfig, dense_meta: dict,
            console=None, resume: ResumeFile | None = None) -> dict[str, Any]:
    """Fine-tune ``student`` in place with distillation from ``teacher``; returns fit's result.

    ``resume``: where the per-epoch state is kept (``recover_cached`` passes its entry's); with a state
    there, the fit continues from it."""
    from ..train import configure_threads, seed_everything
    from .distill import MEMO
    from .loop import fit_resumable

    cfg.validate()
    if not isinstance(student, nn.Module) or not isinstance(teacher, nn.Module):
        raise ConfigError("recover needs the pruned student and the dense teacher as torch modules")
    configure_threads()
    seed_everything(cfg.seed)
    label = f"recover {dense_meta.get('arch') or type(student).__name__}"
    tcfg = cfg.train_config(dense_meta, ds.name, label)
    teacher = teacher.to(cfg.device)
    was_training = teacher.training
    student = student.to(cfg.device)
    for p in student.parameters():
        p.requires_grad_(True)
    # un-augmented batches repeat exactly, so the frozen teacher's logits are computed once per image
    memo = None if cfg.augment or not cfg.kd_weight else state_digest(teacher)
    make_loss = distill_loss_factory(teacher, cfg.temperature, cfg.kd_weight, cfg.ce_weight, memo_key=memo)
    # the teacher is frozen only while it teaches: callers keep using it (graph tracing needs grads)
    try:
        with frozen_params(teacher):  # test is not read: it is read once, by whoever reports
            return fit_resumable(student, ds, preprocess, tcfg, make_loss=make_loss, device=cfg.device,
                                 console=console, resume=resume, memo=MEMO.table(memo) if memo else None)
    finally:
        teacher.train(was_training)


def recover_cached(student: nn.Module, teacher: nn.Module, ds, preprocess, cfg: RecoveryConfig, *,
                   meta: dict, teacher_sha: str, console=None, cache_root: Path | None = None
                   ) -> tuple[nn.Module, dict[str, Any]]:
    """``(recovered model, info)``; reuses a finished recovery with the same key.

    ``meta`` is the checkpoint meta the recovered model is saved with (the dense meta with its
    ``pruning`` entry); ``info`` holds the key, the recipe, fit's history/summary and ``cached``.
    With ``cfg.align`` the returned model is the distilled one with the val offset folded in
    (``.align.align_to_teacher``; ``info["alignment"]``); the cache keeps the distilled weights.
    """
    from .. import settings
    from ..atomic import atomic_dir
    from ..models import load_checkpoint, save_checkpoint

    cfg.validate()
    key = cache_key(cfg, teacher_sha, student, ds.fingerprint)
    folder = Path(cache_root or settings.cache_dir() / "recovered") / key[:16]
    weights = folder / "model.safetensors"
    if (folder / "result.json").is_file() and weights.is_file():
        info = json.loads((folder / "result.json").read_text())
        model, _ = load_checkpoint(weights, device=cfg.device)
        return _aligned(model.eval(), teacher, ds, preprocess, cfg, {**info, "cached": True,
                                                                     "checkpoint": str(weights)})
    result = recover(student, teacher, ds, preprocess, cfg, meta, console=console,
                     resume=ResumeFile(folder / "resume.safetensors", key))
    info = {"key": key, "version": VERSION, "recipe": cfg.recipe(), "history": result["history"],
            "summary": result["summary"], "val": result["metrics"].get("val")}
    with atomic_dir(folder) as tmp:
        save_checkpoint(tmp / "model.safetensors", student, {**meta, "recovery": {k: info[k] for k in
                                                                                   ("key", "version", "recipe")}})
        (tmp / "result.json").write_text(json.dumps(info, indent=1, default=str))
    return _aligned(student.eval(), teacher, ds, preprocess, cfg, {**info, "cached": False,
                                                                   "checkpoint": str(weights)})


def _aligned(model: nn.Module, teacher: nn.Module, ds, preprocess, cfg: RecoveryConfig, info: dict
             ) -> tuple[nn.Module, dict[str, Any]]:
    if not cfg.align:
        return model, info
    from .align import align_to_teacher

    aligned, report = align_to_teacher(model, teacher, ds, preprocess, device=cfg.device)
    return aligned.eval(), {**info, "alignment": report, "recipe": cfg.recipe()}
