"""The shared epoch loop (toolchain.fitloop): train.fit and the recovery's resumable fit give the weights and
history the code gave before the two loops became one (digests pinned from the pre-refactor code)."""

from __future__ import annotations

import copy
import hashlib
import json

import pytest
import torch

from tests.toolchain.test_recover import _overpruned, tiny_ctx  # noqa: F401 (tiny_ctx is a fixture)

# Computed with the code of commit e9585de (train.fit and recovery/loop.fit_resumable still separate loops),
# torch 2.14.1 on CPU, MEDPRUNE_THREADS=1. CPU kernels of another torch build may give other bits: re-pin there.
PINNED_TORCH = "2.14.1"
PINNED = {
    "train": "03fd327c54fb88a4d90872c0ea00240e5d5dd9fb71d067e01ca1fd50861504bc",
    "recovery": "fb835f6b68c143353957200e948ad27de61ae75023338b18ea0a08cea9afab71",
}
TIMINGS = ("epoch_s", "eval_s")


def _digest(state: dict[str, torch.Tensor], history: list[dict]) -> str:
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode() + b"\0" + state[name].detach().cpu().contiguous().numpy().tobytes())
    rows = [{k: v for k, v in row.items() if k not in TIMINGS} for row in history]
    h.update(json.dumps(rows, sort_keys=True).encode())
    return h.hexdigest()


def _check(name: str, value: str) -> None:
    if torch.__version__.split("+")[0] != PINNED_TORCH:
        pytest.skip(f"digest pinned on torch {PINNED_TORCH}, this is {torch.__version__}")
    assert value == PINNED[name], f"{name}: {value}"


def test_train_fit_gives_the_pinned_weights_and_history(tiny_ctx):  # noqa: F811
    # tiny_ctx trains a tiny ResNet from scratch with train() (4 epochs, the best one's weights kept)
    _check("train", _digest(tiny_ctx.model.state_dict(), tiny_ctx.meta["train_history"]))


def test_recovery_fit_gives_the_pinned_weights_and_history(tiny_ctx):  # noqa: F811
    from toolchain.recovery import RecoveryConfig
    from toolchain.recovery.distill import distill_loss_factory
    from toolchain.recovery.loop import fit_resumable
    from toolchain.train import seed_everything

    pruned, _ = _overpruned(tiny_ctx, 0.5)
    cfg = RecoveryConfig(epochs=3, lr=2e-3, batch_size=16, patience=1, augment=True, ce_weight=0.5, quiet=True)
    tcfg = cfg.train_config(tiny_ctx.meta, tiny_ctx.ds.name, "tiny")
    make_loss = distill_loss_factory(tiny_ctx.model, cfg.temperature, cfg.kd_weight, cfg.ce_weight)
    model = copy.deepcopy(pruned)
    seed_everything(0)
    out = fit_resumable(model, tiny_ctx.ds, tiny_ctx.preprocess, tcfg, make_loss=make_loss)
    assert out["summary"]["epochs_run"] < tcfg.epochs  # patience 1 stopped it early: that path is pinned too
    _check("recovery", _digest(model.state_dict(), out["history"]))
