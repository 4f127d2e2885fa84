"""Temperature scaling: make a (pruned) model's probabilities honest again, at zero runtime cost.

    T = fit_temperature(val_logits, val_labels)      # one scalar, minimises validation NLL
    calibrated = fold_temperature(model, T)          # classifier weight and bias divided by T
    calibrated, report = calibrate(model, ds, preprocess)   # both, with deploy's policy: T is kept only
                                                            # when it also lowers the val split's ECE

Pruning keeps the argmax but changes the logit scale, so a pruned model is often over- or
under-confident (measured: ``benchmarks/studies/ece_study.py``). Dividing the logits by one temperature
never changes a prediction, so accuracy, sensitivity and the LRP heatmaps' ranks stay as they were
(LRP starts at the target logit: every relevance is scaled by the same 1/T). Folding T into the last
linear layer means the exported model, and the bedside ``predict.py``, need nothing new.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from .errors import ModelError

# beyond these the fit is degenerate (all-correct or all-wrong val split); clamp instead of exploding
T_MIN, T_MAX = 0.05, 20.0


def nll(logits: np.ndarray, labels: np.ndarray, beta: float = 1.0) -> float:
    """Mean negative log-likelihood of ``softmax(beta * logits)`` (log-softmax: no underflow to log 0)."""
    log_probs = log_softmax(beta * logits)
    return float(-log_probs[np.arange(len(labels)), labels].mean())


def fit_temperature(logits, labels) -> float:
    """The T > 0 minimising the mean negative log-likelihood of ``softmax(logits / T)``.

    The NLL is convex in the inverse temperature, so a bounded scalar search finds the optimum.
    """
    from scipy.optimize import minimize_scalar

    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    if z.ndim != 2 or len(z) != len(y) or len(y) == 0:
        raise ValueError(f"fit_temperature needs (N, C) logits and N labels, got {z.shape} and {y.shape}")
    if not np.isfinite(z).all():
        raise ValueError("fit_temperature: logits contain NaN or inf")
    res = minimize_scalar(lambda b: nll(z, y, b), bounds=(1.0 / T_MAX, 1.0 / T_MIN), method="bounded",
                          options={"xatol": 1e-6})
    return float(np.clip(1.0 / res.x, T_MIN, T_MAX))


def classifier_of(model: nn.Module) -> nn.Module:
    """The layer that produces the logits (timm's ``get_classifier``), which must be Linear or a 1x1 conv."""
    getter = getattr(model, "get_classifier", None)
    layer = getter() if callable(getter) else None
    if isinstance(layer, (nn.Linear, nn.Conv2d)):
        return layer
    raise ModelError(f"cannot fold a temperature into {type(model).__name__}: its classifier is "
                     f"{type(layer).__name__ if layer is not None else 'unknown'}, not a Linear layer")


def fold_temperature(model: nn.Module, temperature: float) -> nn.Module:
    """A copy of ``model`` whose logits are the original ones divided by ``temperature``."""
    if not np.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a positive number, got {temperature}")
    out = copy.deepcopy(model)
    layer = classifier_of(out)
    with torch.no_grad():
        layer.weight.div_(temperature)
        if layer.bias is not None:
            layer.bias.div_(temperature)
    return out


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def log_softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax, shifted by each row's max (no overflow, no log 0)."""
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def choose_temperature(logits, labels, split: str = "val") -> dict:
    """Fit T on held-out logits and decide whether to use it.

    T minimises NLL, which is not the same as minimising ECE: when the fitted T does not also lower
    the ECE on the split it was fit on, there is no evidence it helps, so T = 1 is kept
    (``applied: False``, the fitted value is still reported). The decision uses this split only.
    """
    from .metrics import expected_calibration_error

    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    t = fit_temperature(z, y)
    ece_before = expected_calibration_error(y, softmax(z))
    ece_after = expected_calibration_error(y, softmax(z / t))
    applied = bool(ece_after < ece_before)
    return {"temperature": t if applied else 1.0, "fitted_temperature": t, "applied": applied, "fit_split": split,
            "n": int(len(y)), "nll_before": nll(z, y, 1.0), "nll_after": nll(z, y, 1.0 / t),
            "ece_before": ece_before, "ece_after": ece_after}


def calibrate(model: nn.Module, ds, preprocess, split: str = "val") -> tuple[nn.Module, dict]:
    """Fit T on ``split``; the calibrated copy (T folded in, or unchanged when T did not lower the
    split's ECE) and what the fit did (see :func:`choose_temperature`)."""
    from .evaluate import predict_logits

    z, y = predict_logits(model, ds, split, preprocess)
    report = choose_temperature(z, y, split)
    return fold_temperature(model, report["temperature"]), report
