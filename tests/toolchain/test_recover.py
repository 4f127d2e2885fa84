"""Recovery: the distillation loss by hand, over-pruned tiny models recover, the cache is reused."""

from __future__ import annotations

import math

import pytest
import torch

from tests.conftest import write_tiny_npz
from toolchain.errors import ConfigError
from toolchain.recovery import RecoveryConfig, distillation_loss

TINY_RESNET = {"layers": [1, 1, 1, 1], "channels": [8, 16, 16, 32], "stem_width": 8}


def test_distillation_loss_equals_hand_computed_value():
    s = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[1.0, 1.0], [0.0, 3.0]])
    y = torch.tensor([0, 1])
    w = torch.tensor([1.0, 3.0])
    temp, kd, ce = 2.0, 0.7, 0.3

    def softmax(v):
        e = [math.exp(a) for a in v]
        return [a / sum(e) for a in e]

    # weighted CE: sum_i w[y_i] * -log p_i[y_i] / sum_i w[y_i]
    ce_val = (1.0 * -math.log(softmax([2, 0])[0]) + 3.0 * -math.log(softmax([0, 1])[1])) / 4.0
    kl = 0.0
    for si, ti in zip(s.tolist(), t.tolist(), strict=True):
        p, q = softmax([a / temp for a in ti]), softmax([a / temp for a in si])
        kl += sum(pj * math.log(pj / qj) for pj, qj in zip(p, q, strict=True))
    expected = ce * ce_val + kd * temp * temp * kl / 2
    got = distillation_loss(s, t, y, temperature=temp, kd_weight=kd, ce_weight=ce, class_weight=w)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # identical logits: only the CE term is left
    same = distillation_loss(s, s, y, temperature=temp, kd_weight=1.0, ce_weight=0.0)
    assert same.item() == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("bad", [dict(temperature=0.0), dict(kd_weight=-1.0), dict(kd_weight=0.0, ce_weight=0.0)])
def test_distillation_loss_rejects_bad_options(bad):
    with pytest.raises(ConfigError):
        distillation_loss(torch.zeros(2, 2), torch.zeros(2, 2), torch.tensor([0, 1]), **bad)
    with pytest.raises(ConfigError):
        RecoveryConfig(**bad).validate()


@pytest.fixture
def tiny_ctx(tmp_path, monkeypatch):
    """A tiny ResNet trained on a tiny brightness dataset, loaded as a prune context."""
    from toolchain.prune_eval import load_context
    from toolchain.train import TrainConfig, train

    monkeypatch.setenv("MEDPRUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MEDPRUNE_THREADS", "1")
    # train and val are drawn before test, so a larger test split leaves them as they were
    npz = write_tiny_npz(tmp_path / "tinymnist.npz", n=(96, 32, 64))
    cfg = TrainConfig(model="resnet50", data=str(npz), img_size=16, epochs=4, batch_size=16, lr=3e-3,
                      warmup_epochs=0.5, patience=0, build_args=dict(TINY_RESNET), device="cpu", quiet=True)
    return load_context(train(cfg), str(npz))


def _overpruned(ctx, ratio=0.85):
    from toolchain.importance import get_criterion
    from toolchain.recovery import masker_for, pruner_at
    from toolchain.units import find_unit_layers

    layers = find_unit_layers(ctx.model)
    crit = get_criterion("random", seed=3)
    example = ctx.preprocess(ctx.ds.split("train").images[:2])
    masker = masker_for(ctx.model, crit, crit(ctx.model, None, None, layers), layers, example)
    return pruner_at(ctx.model, masker, example)(ratio)


def test_recovery_improves_an_overpruned_tiny_model(tiny_ctx):
    """Judged on the test split, which the fit never sees: val picks the best epoch, so an improvement on val
    would be partly the selection's. The test split is sealed while recovery runs (a read there raises)."""
    from devices.deploy.holdout import report_phase, seal
    from toolchain.evaluate import evaluate
    from toolchain.recovery import recover

    pruned, report = _overpruned(tiny_ctx)
    assert report["params_after"] < 0.4 * report["params_before"]
    before = evaluate(pruned, tiny_ctx.ds, "test", tiny_ctx.preprocess)
    seal(tiny_ctx.ds)
    result = recover(pruned, tiny_ctx.model, tiny_ctx.ds, tiny_ctx.preprocess,
                     RecoveryConfig(epochs=6, lr=3e-3, batch_size=16, patience=0, quiet=True), tiny_ctx.meta)
    with report_phase():
        after = evaluate(pruned, tiny_ctx.ds, "test", tiny_ctx.preprocess)
    assert after["n"] == 64 and len(result["history"]) == 6
    # the teacher is left as it was (the dense model is scored and traced again afterwards)
    assert all(p.requires_grad for p in tiny_ctx.model.parameters()) and not tiny_ctx.model.training
    assert after["balanced_accuracy"] > before["balanced_accuracy"] + 0.1
    assert after["balanced_accuracy"] >= 0.8


def test_recover_cached_reuses_the_finished_run(tiny_ctx, tmp_path, monkeypatch):
    import copy

    import toolchain.recovery.finetune as ft
    from toolchain.removal import pruning_meta

    pruned, report = _overpruned(tiny_ctx, 0.5)
    cfg = RecoveryConfig(epochs=1, lr=1e-3, batch_size=16, quiet=True)
    meta = {**tiny_ctx.meta, "pruning": pruning_meta(report, {"criterion": "random", "ratio": 0.5})}
    model, info = ft.recover_cached(copy.deepcopy(pruned), tiny_ctx.model, tiny_ctx.ds, tiny_ctx.preprocess, cfg,
                                    meta=meta, teacher_sha=tiny_ctx.sha256, cache_root=tmp_path / "rec")
    assert not info["cached"] and info["recipe"]["epochs"] == 1

    def boom(*a, **k):
        raise AssertionError("recovered again despite a cached result")

    monkeypatch.setattr(ft, "recover", boom)
    again, info2 = ft.recover_cached(copy.deepcopy(pruned), tiny_ctx.model, tiny_ctx.ds, tiny_ctx.preprocess, cfg,
                                     meta=meta, teacher_sha=tiny_ctx.sha256, cache_root=tmp_path / "rec")
    assert info2["cached"] and info2["key"] == info["key"]
    x = tiny_ctx.preprocess(tiny_ctx.ds.split("val").images[:4])
    with torch.no_grad():
        assert torch.allclose(model(x), again(x), atol=1e-5)
    # another config is another key
    other = ft.cache_key(RecoveryConfig(epochs=2), tiny_ctx.sha256, pruned, tiny_ctx.ds.fingerprint)
    assert other != info["key"]


def test_iterative_schedule_reaches_the_budget_in_steps(tiny_ctx):
    from toolchain.budget import Budget, measure
    from toolchain.importance import get_criterion
    from toolchain.recovery import Gates, iterative_budget
    from toolchain.units import find_unit_layers

    x = tiny_ctx.preprocess(tiny_ctx.ds.split("train").images[:8])
    y = torch.as_tensor(tiny_ctx.ds.split("train").labels[:8], dtype=torch.long)
    out = iterative_budget(tiny_ctx, get_criterion("taylor"), x, y, find_unit_layers, x[:1], Budget("macs", 0.4), 2,
                           RecoveryConfig(epochs=1, lr=1e-3, batch_size=16, quiet=True), Gates(50, 100))
    steps = out["steps"]
    assert [s["step"] for s in steps] == [1, 2] and out["met"]
    # each step is measured against the dense model; the first stops at the geometric midpoint
    assert steps[0]["cost"]["pruned"] <= 0.4 ** 0.5 * steps[0]["cost"]["dense"] + 1
    assert steps[0]["cost"]["ratio"] < steps[1]["cost"]["ratio"]
    assert measure("macs", tiny_ctx.model, out["model"], x[:1])["ratio"] >= 1 / 0.4 - 1e-6
    assert all(s["recovery"]["recipe"]["epochs"] == 1 for s in steps)


def test_iterative_schedule_refuses_absolute_budgets(tiny_ctx):
    from toolchain.budget import Budget
    from toolchain.importance import get_criterion
    from toolchain.recovery import iterative_budget
    from toolchain.units import find_unit_layers

    with pytest.raises(ConfigError):
        iterative_budget(tiny_ctx, get_criterion("taylor"), None, None, find_unit_layers, None, Budget("macs", 1e6),
                         2, RecoveryConfig())


def test_teacher_memo_computes_each_image_once_and_matches_the_teacher():
    from toolchain.recovery.distill import TeacherMemo

    calls = []

    class Counting(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 3)

        def forward(self, x):
            calls.append(len(x))
            return self.lin(x)

    teacher = Counting().eval()
    memo = TeacherMemo(keep=1)
    table = memo.table("teacher-a")
    x = torch.randn(6, 4)
    first = memo.logits(teacher, x[:4], table)
    again = memo.logits(teacher, x[[3, 5, 0, 1]], table)  # a reshuffled batch with one new image
    with torch.no_grad():
        assert torch.allclose(first, teacher.lin(x[:4])) and torch.allclose(again, teacher.lin(x[[3, 5, 0, 1]]))
    assert calls == [4, 1]  # only image 5 was new
    memo.table("teacher-b")  # keep=1: another teacher's table evicts the first
    assert memo.table("teacher-a") == {}


def test_unaugmented_recovery_with_memo_equals_plain_distillation(tiny_ctx, monkeypatch):
    """The memo changes cost, not the result: same student weights as the teacher run on every batch."""
    import copy

    import toolchain.recovery.finetune as ft
    from toolchain.recovery import distill as dist

    pruned, _ = _overpruned(tiny_ctx, 0.5)
    cfg = RecoveryConfig(epochs=1, lr=1e-3, batch_size=16, augment=False, quiet=True)
    with_memo = copy.deepcopy(pruned)
    ft.recover(with_memo, tiny_ctx.model, tiny_ctx.ds, tiny_ctx.preprocess, cfg, tiny_ctx.meta)
    assert any(len(t) > 0 for t in dist.MEMO._store.values())  # the teacher's logits were memoised
    plain = copy.deepcopy(pruned)
    orig = dist.distill_loss_factory
    monkeypatch.setattr(ft, "distill_loss_factory", lambda *a, memo_key=None, **k: orig(*a, **k))
    ft.recover(plain, tiny_ctx.model, tiny_ctx.ds, tiny_ctx.preprocess, cfg, tiny_ctx.meta)
    for a, b in zip(with_memo.state_dict().values(), plain.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-5)
