"""The fp32 parity gate scales with the logits: |Δ| <= atol + rtol x max|torch logit| (export.verify)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from export.exporter import export_model
from export.verify import TOLERANCES, allowed_abs_logit, gate, logits_of, runner_for, torch_runner, verify
from tests.export._tiny import meta_for, tiny_data, trained

ABSOLUTE_ONLY = {"fp32": {"max_abs_logit": 1e-4}}  # the rule before: an absolute 1e-4
SCALE = 1e4  # |logit| of the scaled model: one float32 ulp there is ~1e-3, ten times the old absolute gate


def test_rule_and_defaults():
    tol = TOLERANCES["fp32"]
    assert tol == {"max_abs_logit": 1e-4, "rtol_logit": 1e-5}
    assert allowed_abs_logit(tol, 0.0) == pytest.approx(1e-4)  # small logits: as strict as before
    assert allowed_abs_logit(tol, 125.0) == pytest.approx(1e-4 + 1.25e-3)
    assert allowed_abs_logit(TOLERANCES["fp16"], 125.0) is None
    # the torchvision resnet18 case (|logit| ~ 125, float32 noise 1.07e-4): failed before, passes now
    resnet18 = {"finite": True, "max_abs_logit": 1.07e-4, "logit_scale": 125.0, "top1_agreement": 1.0,
                "accuracy_drop": 0.0}
    assert gate("fp32", resnet18, ABSOLUTE_ONLY) and gate("fp32", resnet18) == []
    # a 1e-3-of-the-scale error is a conversion bug at any scale
    for scale in (8.0, 125.0, 1e4):
        failures = gate("fp32", {**resnet18, "max_abs_logit": 1e-3 * scale, "logit_scale": scale})
        assert failures and "max|logit|" in failures[0]


def _scaled(model: torch.nn.Module, x: np.ndarray) -> torch.nn.Module:
    """``model`` with its classifier scaled so the largest |logit| on ``x`` is SCALE (same function otherwise)."""
    m = copy.deepcopy(model)
    head = [mod for mod in m.modules() if isinstance(mod, torch.nn.Linear)][-1]
    factor = SCALE / float(np.abs(logits_of(torch_runner(m), x)).max())
    with torch.no_grad():
        head.weight.mul_(factor)
        head.bias.mul_(factor)
    return m


def test_large_logit_export_passes_and_a_wrong_one_fails(tmp_path):
    model = trained("resnet", False)
    _, _, x, y = tiny_data()
    big = _scaled(model, x)
    res = export_model(big, meta_for(big, "resnet"), tmp_path / "ok", "onnx", "fp32", name="big", eval_x=x, eval_y=y)
    v = res.verification
    assert v["passed"] and v["logit_scale"] == pytest.approx(SCALE, rel=1e-6)
    assert v["allowed_max_abs_logit"] == pytest.approx(1e-4 + 1e-5 * SCALE, rel=1e-6)
    assert v["tolerance"] == TOLERANCES["fp32"]
    # the same correct export under the old absolute rule: float32 summation noise alone fails it
    assert v["max_abs_logit"] > 1e-4 and gate("fp32", v, ABSOLUTE_ONLY)

    # a genuine conversion bug (BatchNorm eps lost: 1e-5 became 1e-2) is still refused at this scale
    wrong = copy.deepcopy(big)
    for bn in (m for m in wrong.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.eps = 1e-2
    measure_only = {**TOLERANCES, "fp32": {"max_abs_logit": float("inf")}}
    bad = export_model(wrong, meta_for(wrong, "resnet"), tmp_path / "bad", "onnx", "fp32", name="bad",
                       tolerances=measure_only)
    reference = logits_of(torch_runner(big), x)
    judged = verify(runner_for(bad.path), reference, x, y, "fp32", backend="onnxruntime")
    assert not judged["passed"] and judged["max_abs_logit"] > judged["allowed_max_abs_logit"]
