"""Temperature scaling: the fit recovers a known temperature; folding divides the logits exactly."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import tiny_model  # noqa: E402

from toolchain.errors import ModelError  # noqa: E402
from toolchain.metrics import expected_calibration_error  # noqa: E402
from toolchain.temperature import T_MAX, fit_temperature, fold_temperature  # noqa: E402


def _sampled(n=20000, classes=3, seed=0):
    """Logits whose softmax is the true label distribution (calibrated at T = 1)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2, size=(n, classes))
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    y = np.array([rng.choice(classes, p=row) for row in p])
    return z, y


@pytest.mark.parametrize("scale", [0.5, 3.0])
def test_fit_recovers_the_temperature_that_was_applied(scale):
    z, y = _sampled()
    t = fit_temperature(scale * z, y)
    assert t == pytest.approx(scale, rel=0.08)
    probs = lambda logits: np.exp(logits) / np.exp(logits).sum(1, keepdims=True)  # noqa: E731
    assert expected_calibration_error(y, probs(scale * z / t)) < expected_calibration_error(y, probs(scale * z))


def test_fit_clamps_a_degenerate_split_and_rejects_bad_input():
    z = np.array([[5.0, -5.0], [-5.0, 5.0]])
    assert fit_temperature(z, [0, 1]) <= 1.0  # all correct: sharpen, bounded
    assert fit_temperature(z, [1, 0]) == pytest.approx(T_MAX, rel=1e-3)  # all wrong: flatten to the bound
    with pytest.raises(ValueError, match="logits"):
        fit_temperature(np.zeros(3), [0, 1, 0])
    with pytest.raises(ValueError, match="NaN"):
        fit_temperature(np.array([[np.nan, 0.0]]), [0])


@pytest.mark.parametrize("family", ["vgg", "resnet", "vit"])
def test_fold_divides_logits_and_keeps_predictions(family):
    model = tiny_model(family)
    x = torch.randn(6, 1, 16, 16)
    with torch.no_grad():
        before = model(x)
        folded = fold_temperature(model, 2.5)
        after = folded(x)
        torch.testing.assert_close(after, before / 2.5, rtol=1e-5, atol=1e-6)
        assert torch.equal(after.argmax(1), before.argmax(1))
        torch.testing.assert_close(model(x), before)  # the caller's model is untouched


def test_fold_refuses_models_without_a_linear_classifier():
    with pytest.raises(ModelError, match="classifier"):
        fold_temperature(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), 2.0)
    with pytest.raises(ValueError, match="positive"):
        fold_temperature(tiny_model("resnet"), 0.0)


def test_choose_temperature_applies_only_what_lowers_the_fit_splits_ece():
    from toolchain.temperature import choose_temperature

    z, y = _sampled()
    over = choose_temperature(3.0 * z, y)  # overconfident: the fitted T helps, so it is used
    assert over["applied"] and over["temperature"] == over["fitted_temperature"] == pytest.approx(3.0, rel=0.08)
    assert over["ece_after"] < over["ece_before"] and over["nll_after"] <= over["nll_before"]
    # already calibrated (confidence 0.8, accuracy 0.8 in its only bin): nothing to gain, T = 1 kept
    logits = np.tile(np.log([[0.8, 0.2]]), (10, 1))
    labels = np.array([0] * 8 + [1] * 2)
    kept = choose_temperature(logits, labels)
    assert not kept["applied"] and kept["temperature"] == 1.0
    assert kept["fitted_temperature"] == pytest.approx(1.0, abs=1e-3)


def test_log_softmax_is_stable_and_matches_torch():
    import numpy as np
    import torch

    from toolchain.temperature import log_softmax, softmax

    z = np.array([[1000.0, 0.0, -1000.0], [0.5, 0.25, -2.0]])
    out = log_softmax(z)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, torch.log_softmax(torch.from_numpy(z), 1).numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.exp(out), softmax(z), rtol=1e-12, atol=0)
