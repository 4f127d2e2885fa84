"""Resumable recovery: the loop equals train.fit, an interrupted-then-resumed recovery equals an uninterrupted one
bit for bit, and a damaged resume state is ignored (start over) with a one-line warning."""

from __future__ import annotations

import copy
import io
import random

import numpy as np
import pytest
import torch

from tests.toolchain.test_recover import _overpruned, tiny_ctx  # noqa: F401 (tiny_ctx is a fixture)
from toolchain.recovery import RecoveryConfig

TIMINGS = ("epoch_s", "eval_s")


class Interrupted(Exception):
    pass


def _rows(history):
    return [{k: v for k, v in row.items() if k not in TIMINGS} for row in history]


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def _cut(monkeypatch, epoch: int, call) -> None:
    """Run ``call`` until the resume state after ``epoch`` is written, then let it die (as a Ctrl-C or a
    killed worker would)."""
    from toolchain.recovery import resume

    real = resume.ResumeFile.save

    def save(self, loop, *args):
        real(self, loop, *args)
        if loop.epoch == epoch:
            raise Interrupted

    monkeypatch.setattr(resume.ResumeFile, "save", save)
    with pytest.raises(Interrupted):
        call()
    monkeypatch.setattr(resume.ResumeFile, "save", real)


def _fresh_memo(monkeypatch):
    """A new process's empty teacher-logit memo (the resumed run must not lean on this process's)."""
    from toolchain.recovery import distill

    monkeypatch.setattr(distill, "MEMO", distill.TeacherMemo())


def test_the_recovery_loop_equals_train_fit(tiny_ctx):  # noqa: F811
    from toolchain.recovery.distill import distill_loss_factory
    from toolchain.recovery.loop import fit_resumable
    from toolchain.train import fit, seed_everything

    pruned, _ = _overpruned(tiny_ctx, 0.5)
    cfg = RecoveryConfig(epochs=3, lr=2e-3, batch_size=16, patience=1, augment=True, ce_weight=0.5, quiet=True)
    tcfg = cfg.train_config(tiny_ctx.meta, tiny_ctx.ds.name, "tiny")
    make_loss = distill_loss_factory(tiny_ctx.model, cfg.temperature, cfg.kd_weight, cfg.ce_weight)
    out = []
    for run in (lambda m: fit(m, tiny_ctx.ds, tiny_ctx.preprocess, tcfg, make_loss=make_loss, read_test=False),
                lambda m: fit_resumable(m, tiny_ctx.ds, tiny_ctx.preprocess, tcfg, make_loss=make_loss)):
        model = copy.deepcopy(pruned)
        seed_everything(0)
        out.append((model, run(model)))
    (a, ra), (b, rb) = out
    _assert_same_weights(a, b)
    assert _rows(ra["history"]) == _rows(rb["history"]) and len(ra["history"]) >= 2
    assert ra["metrics"] == rb["metrics"]
    assert {k: v for k, v in ra["summary"].items() if k not in ("wall_s", "sec_per_epoch")} == \
        {k: v for k, v in rb["summary"].items() if k not in ("wall_s", "sec_per_epoch")}


def _recover(ctx, pruned, cfg, root, console=None):
    import toolchain.recovery.finetune as ft

    return ft.recover_cached(copy.deepcopy(pruned), ctx.model, ctx.ds, ctx.preprocess, cfg, meta=ctx.meta,
                             teacher_sha=ctx.sha256, cache_root=root, console=console)


def _whole_and_cut(ctx, pruned, cfg, tmp_path, monkeypatch):
    """An uninterrupted recovery (under whole/) and one cut after epoch 1 (under cut/): ``(model, info, cut folder)``."""
    _fresh_memo(monkeypatch)
    whole, info = _recover(ctx, pruned, cfg, tmp_path / "whole")
    _fresh_memo(monkeypatch)
    _cut(monkeypatch, 1, lambda: _recover(ctx, pruned, cfg, tmp_path / "cut"))
    _fresh_memo(monkeypatch)  # the next call runs as in a new process
    return whole, info, tmp_path / "cut" / info["key"][:16]


def test_an_interrupted_recovery_resumes_bit_identically(tiny_ctx, tmp_path, monkeypatch):  # noqa: F811
    from rich.console import Console

    pruned, _ = _overpruned(tiny_ctx, 0.5)
    cfg = RecoveryConfig(epochs=3, lr=2e-3, batch_size=16, patience=0, quiet=True)  # memo on: KD, no augment
    whole, info, folder = _whole_and_cut(tiny_ctx, pruned, cfg, tmp_path, monkeypatch)
    assert (folder / "resume.safetensors").is_file() and not (folder / "result.json").exists()
    out = io.StringIO()
    resumed, info2 = _recover(tiny_ctx, pruned, cfg, tmp_path / "cut", Console(file=out, width=200))
    assert f"resuming {info['key'][:16]} at epoch 2/3" in out.getvalue()
    assert "epoch 1/3" not in out.getvalue().replace("at epoch", "")  # epoch 1 was not trained again
    _assert_same_weights(whole, resumed)
    assert _rows(info2["history"]) == _rows(info["history"]) and len(info2["history"]) == 3
    assert info2["key"] == info["key"] and not info2["cached"]
    assert sorted(p.name for p in folder.iterdir()) == ["model.json", "model.safetensors", "result.json"]


def test_resume_restores_every_rng_the_loss_draws_from(tiny_ctx, tmp_path, monkeypatch):  # noqa: F811
    """A loss that draws from torch, numpy and Python RNGs: resumed (after re-seeding, as a new call does)
    it matches the uninterrupted run only if the state carried all three."""
    from toolchain.recovery.loop import fit_resumable
    from toolchain.recovery.resume import ResumeFile
    from toolchain.train import seed_everything

    def make_loss(weight):
        def loss(logits, y, x):
            noise = torch.rand(()) + float(np.random.rand()) + random.random()
            return torch.nn.functional.cross_entropy(logits, y, weight=weight) * (1 + 0.1 * noise)
        return loss

    pruned, _ = _overpruned(tiny_ctx, 0.5)
    tcfg = RecoveryConfig(epochs=3, lr=2e-3, batch_size=16, patience=0, quiet=True).train_config(
        tiny_ctx.meta, tiny_ctx.ds.name, "tiny")

    def run(slot):
        model = copy.deepcopy(pruned)
        seed_everything(0)
        return model, fit_resumable(model, tiny_ctx.ds, tiny_ctx.preprocess, tcfg, make_loss=make_loss, resume=slot)

    whole, r1 = run(None)
    slot = ResumeFile(tmp_path / "entry" / "resume.safetensors", "k" * 64)
    _cut(monkeypatch, 2, lambda: run(slot))
    resumed, r2 = run(slot)
    _assert_same_weights(whole, resumed)
    assert _rows(r1["history"]) == _rows(r2["history"])


def _corrupt_bitflip(path):
    data = bytearray(path.read_bytes())
    data[-40] ^= 0x01  # inside the last tensor's bytes: only the digest can tell
    path.write_bytes(bytes(data))


def _corrupt_truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _corrupt_garbage(path):
    path.write_bytes(b"not a resume state")


@pytest.mark.parametrize("damage", [_corrupt_bitflip, _corrupt_truncate, _corrupt_garbage])
def test_a_damaged_resume_state_is_ignored_and_the_fit_starts_over(tiny_ctx, tmp_path, monkeypatch, damage):  # noqa: F811
    from rich.console import Console

    pruned, _ = _overpruned(tiny_ctx, 0.5)
    cfg = RecoveryConfig(epochs=2, lr=2e-3, batch_size=16, patience=0, quiet=True)
    whole, info, folder = _whole_and_cut(tiny_ctx, pruned, cfg, tmp_path, monkeypatch)
    state = folder / "resume.safetensors"
    damage(state)
    out = io.StringIO()
    with pytest.warns(UserWarning, match=r"resume state .* unusable .*; starting over") as caught:
        again, info2 = _recover(tiny_ctx, pruned, cfg, tmp_path / "cut", Console(file=out, width=200))
    assert len(caught) == 1 and "\n" not in str(caught[0].message)
    assert "resuming" not in out.getvalue() and "epoch 1/2" in out.getvalue()  # started over from epoch 1
    _assert_same_weights(whole, again)
    assert _rows(info2["history"]) == _rows(info["history"]) and not state.exists()


def test_a_resume_state_of_another_key_is_not_used(tiny_ctx, tmp_path, monkeypatch):  # noqa: F811
    from toolchain.recovery.loop import fit_resumable
    from toolchain.recovery.resume import ResumeFile

    pruned, _ = _overpruned(tiny_ctx, 0.5)
    tcfg = RecoveryConfig(epochs=2, batch_size=16, patience=0, quiet=True).train_config(
        tiny_ctx.meta, tiny_ctx.ds.name, "tiny")
    ce = lambda w: lambda logits, y, x: torch.nn.functional.cross_entropy(logits, y, weight=w)  # noqa: E731
    path = tmp_path / "resume.safetensors"
    _cut(monkeypatch, 1, lambda: fit_resumable(copy.deepcopy(pruned), tiny_ctx.ds, tiny_ctx.preprocess, tcfg,
                                               make_loss=ce, resume=ResumeFile(path, "a" * 64)))
    assert path.is_file()
    with pytest.warns(UserWarning, match="another recovery key"):
        out = fit_resumable(copy.deepcopy(pruned), tiny_ctx.ds, tiny_ctx.preprocess, tcfg, make_loss=ce,
                            resume=ResumeFile(path, "b" * 64))
    assert [row["epoch"] for row in out["history"]] == [1, 2]


def test_the_resume_line_names_the_epoch_and_a_changed_thread_count():
    import types

    from toolchain.recovery.loop import _resuming
    from toolchain.recovery.resume import LoopState

    cfg = types.SimpleNamespace(epochs=4, patience=2)
    now = torch.get_num_threads()
    assert _resuming("f" * 64, LoopState(epoch=1, threads=now), cfg) == f"resuming {'f' * 16} at epoch 2/4"
    assert "after its last epoch (2/4)" in _resuming("f" * 64, LoopState(epoch=2, stale=2, threads=now), cfg)
    assert f"{now + 3} torch threads, now {now}" in _resuming("f" * 64, LoopState(epoch=1, threads=now + 3), cfg)


@pytest.mark.parametrize("best_epoch", [1, 2])
def test_a_saved_state_round_trips_with_best_weights_of_an_earlier_epoch_or_the_last(tmp_path, best_epoch):
    from toolchain.recovery.resume import LoopState, ResumeFile

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 ** step)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    schedule.step()
    earlier = {k: v + 1 for k, v in model.state_dict().items()}
    best = earlier if best_epoch == 1 else {k: v.clone() for k, v in model.state_dict().items()}
    loop = LoopState(epoch=2, history=[{"epoch": 1}, {"epoch": 2}], best=(0.5, 0.25), best_epoch=best_epoch,
                     best_state=best)
    memo = {bytes(range(16)): torch.tensor([1.0, 2.0])}
    slot = ResumeFile(tmp_path / "resume.safetensors", "k" * 64)
    slot.save(loop, model, optimizer, schedule, memo)

    fresh = torch.nn.Linear(3, 2)
    opt2 = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda step: 0.5 ** step)
    memo2: dict = {}
    back = slot.load(fresh, opt2, sched2, memo2, epochs=3)
    _assert_same_weights(model, fresh)
    assert back.best == (0.5, 0.25) and back.best_epoch == best_epoch and back.history == loop.history
    assert all(torch.equal(back.best_state[k], best[k]) for k in best)
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])
    assert sched2.get_last_lr() == schedule.get_last_lr() and torch.equal(memo2[bytes(range(16))], memo[bytes(range(16))])
    with pytest.warns(UserWarning, match="run of 1"):  # more epochs done than this run has: not trusted
        assert slot.load(fresh, opt2, sched2, {}, epochs=1) is None
