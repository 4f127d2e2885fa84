"""The shared epoch loop (toolchain.fitloop): train.fit and the recovery's resumable fit give the weights and
history the code gave before the two loops became one (digests pinned from the pre-refactor code)."""

from __future__ import annotations

import copy
import hashlib
import json

import pytest
import torch

from tests.conftest import write_tiny_npz
from tests.toolchain.test_recover import TINY_RESNET, _overpruned, tiny_ctx  # noqa: F401 (tiny_ctx is a fixture)

# Computed with the code of commit 0d97b92 (train.fit and recovery/loop.fit_resumable still separate loops),
# torch 2.14.1 on CPU, MEDPRUNE_THREADS=1. CPU kernels of another torch build may give other bits: re-pin there.
PINNED_TORCH = "2.14.1"
PINNED = {
    "train": "3799a9700af98b6ca6eef7407368209813af887a3672eb260f2fb4b82deef425",
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


def test_train_fit_gives_the_pinned_weights_and_history(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from toolchain.models import checkpoint_meta
    from toolchain.train import TrainConfig, train

    monkeypatch.setenv("MEDPRUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MEDPRUNE_THREADS", "1")
    npz = write_tiny_npz(tmp_path / "tinymnist.npz", n=(48, 16, 16))
    # patience 1 over 4 epochs: the run may stop early and must end on its best epoch's weights
    cfg = TrainConfig(model="resnet50", data=str(npz), img_size=16, epochs=4, batch_size=8, lr=3e-3,
                      warmup_epochs=0.5, patience=1, build_args=dict(TINY_RESNET), device="cpu", quiet=True)
    weights = train(cfg)
    _check("train", _digest(load_file(weights), checkpoint_meta(weights)["train_history"]))


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
    _check("recovery", _digest(model.state_dict(), out["history"]))
