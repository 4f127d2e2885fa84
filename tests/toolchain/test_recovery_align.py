"""Operating-point alignment after recovery: the offset fit, its folding into the bias, the opt-in recipe."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from toolchain.errors import ConfigError
from toolchain.recovery import RecoveryConfig, align_to_teacher, fit_logit_offset, fold_logit_offset
from toolchain.recovery.align import mean_kl


class Tiny(nn.Module):
    def __init__(self, k=3, bias=True):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU())
        self.head = nn.Linear(8, k, bias=bias)

    def forward(self, x):
        return self.head(self.body(x))

    def get_classifier(self):
        return self.head


def test_offset_undoes_a_known_per_class_shift():
    rng = np.random.default_rng(0)
    teacher = rng.normal(size=(300, 3)) * 2
    student = teacher + np.array([0.5, -1.0, 2.0])
    b = fit_logit_offset(teacher, student)
    assert b[0] == 0.0 and b == pytest.approx([0.0, 1.5, -1.5], abs=1e-6)
    assert mean_kl(teacher, student, b) == pytest.approx(0.0, abs=1e-10)
    assert mean_kl(teacher, student) > 0.1


def test_offset_rejects_bad_logits():
    with pytest.raises(ConfigError):
        fit_logit_offset(np.zeros((4, 2)), np.zeros((4, 3)))
    with pytest.raises(ConfigError):
        fit_logit_offset(np.full((4, 2), np.nan), np.zeros((4, 2)))


@pytest.mark.parametrize("bias", [True, False])
def test_folded_model_equals_logits_plus_offset(bias):
    torch.manual_seed(0)
    model = Tiny(bias=bias).eval()
    x = torch.randn(5, 3, 2, 2)
    b = np.array([0.0, 0.7, -1.2])
    folded = fold_logit_offset(model, b)
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x) + torch.tensor(b, dtype=torch.float32), atol=1e-6)
    with pytest.raises(ConfigError):
        fold_logit_offset(model, [0.0, 1.0])


def test_alignment_moves_a_biased_student_back_toward_its_teacher(monkeypatch):
    import toolchain.evaluate as evaluate

    torch.manual_seed(1)
    teacher = Tiny().eval()
    student = Tiny().eval()
    student.load_state_dict(teacher.state_dict())
    with torch.no_grad():  # a student that ranks like its teacher but sits at another operating point
        student.head.weight.mul_(1.1)
        student.head.bias.add_(torch.tensor([0.0, 1.5, -1.0]))
    x = torch.randn(400, 3, 2, 2)

    def logits(model, ds, split, preprocess, batch_size=128, device="cpu", indices=None):
        assert split == "val"
        with torch.no_grad():
            return model(x).numpy(), np.zeros(len(x), dtype=np.int64)

    monkeypatch.setattr(evaluate, "predict_logits", logits)
    aligned, report = align_to_teacher(student, teacher, ds=None, preprocess=None)
    assert report["fit_split"] == "val" and report["free_parameters"] == 2 and report["n"] == 400
    assert report["kl_after"] < 0.5 * report["kl_before"]
    assert report["agreement_after"] > report["agreement_before"] + 0.1
    with torch.no_grad():
        assert torch.allclose(aligned(x), student(x) + torch.tensor(report["offset"], dtype=torch.float32),
                              atol=1e-5)


def test_alignment_is_opt_in_and_leaves_the_fit_cache_key_alone():
    from toolchain.recovery.finetune import cache_key

    assert "align" not in RecoveryConfig().recipe() and RecoveryConfig(align=True).recipe()["align"] is True
    student = Tiny()
    keys = {cache_key(RecoveryConfig(align=a), "t" * 64, student, "fp") for a in (False, True)}
    assert len(keys) == 1  # the alignment runs after the cached fit: one distilled checkpoint serves both


def test_recover_cached_aligns_after_the_fit_and_caches_the_distilled_weights(monkeypatch, tmp_path):
    import types

    import toolchain.evaluate as evaluate
    import toolchain.models as models
    import toolchain.recovery.finetune as ft

    torch.manual_seed(2)
    teacher = Tiny().eval()
    student = Tiny().eval()
    student.load_state_dict(teacher.state_dict())
    with torch.no_grad():
        student.head.bias.add_(torch.tensor([0.0, 2.0, 0.0]))
    x = torch.randn(200, 3, 2, 2)
    monkeypatch.setattr(evaluate, "predict_logits", lambda m, *a, **k: (m(x).detach().numpy(), None))
    monkeypatch.setattr(ft, "recover", lambda *a, **k: {"history": [], "summary": {}, "metrics": {}})
    saved = {}
    monkeypatch.setattr(models, "save_checkpoint", lambda path, m, meta: saved.update(
        state={k: v.clone() for k, v in m.state_dict().items()}) or path.write_bytes(b"w"))
    ds = types.SimpleNamespace(fingerprint="fp", name="tiny")
    model, info = ft.recover_cached(student, teacher, ds, None, RecoveryConfig(align=True), meta={},
                                    teacher_sha="t" * 64, cache_root=tmp_path)
    assert info["recipe"]["align"] and info["alignment"]["offset"][1] == pytest.approx(-2.0, abs=1e-4)
    assert torch.equal(saved["state"]["head.bias"], student.state_dict()["head.bias"])  # cache: distilled
    with torch.no_grad():
        assert torch.allclose(model(x), teacher(x), atol=1e-4)
