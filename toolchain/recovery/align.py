"""Operating-point alignment after recovery: a per-class logit offset fitted on val, folded into the bias.

    b = fit_logit_offset(teacher_val_logits, student_val_logits)   # (K,), b[0] = 0: K - 1 free numbers
    aligned = fold_logit_offset(student, b)                         # a copy whose logits are student + b
    aligned, report = align_to_teacher(student, teacher, ds, preprocess)   # both, on the val split

Why: a distilled student can rank images as well as its dense teacher and still sit at another operating
point (measured on the recovery study's cached cells: val/test AUC within ~0.01 of the dense model's, yet
the recovered models put a higher mean probability on the majority class, and the normal class lost
2-4 sensitivity points on test). A per-class offset moves only the operating point. It is chosen to make
the student's val predictions match the teacher's: ``b`` minimises the mean KL(teacher || softmax(student
+ b)) over val images, which is convex in ``b`` (Newton's method below). Softmax ignores a common shift, so
``b[0]`` is fixed at 0. No labels are used: the target is the dense model's behaviour, which the lossless
rule compares with. The offset is added to the classifier's bias, so export and the bedside package need
nothing new.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..temperature import log_softmax

MAX_ITER = 50
TOL = 1e-10  # gradient (max abs) of the mean KL at which Newton's method stops


def _check_logits(teacher, student) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(teacher, dtype=np.float64)
    s = np.asarray(student, dtype=np.float64)
    if t.ndim != 2 or t.shape != s.shape or len(t) == 0 or t.shape[1] < 2:
        raise ConfigError(f"alignment needs teacher and student logits of one shape (N > 0, K >= 2), got "
                          f"{t.shape} and {s.shape}")
    if not (np.isfinite(t).all() and np.isfinite(s).all()):
        raise ConfigError("alignment: logits contain NaN or inf")
    return t, s


def mean_kl(teacher, student, offset=None) -> float:
    """Mean KL(softmax(teacher) || softmax(student + offset)) over the rows (nats)."""
    t, s = _check_logits(teacher, student)
    lp = log_softmax(t)
    lq = log_softmax(s + (0.0 if offset is None else np.asarray(offset, np.float64)))
    return float((np.exp(lp) * (lp - lq)).sum(1).mean())


def fit_logit_offset(teacher, student, max_iter: int = MAX_ITER) -> np.ndarray:
    """The offset ``b`` (K,), ``b[0] = 0``, minimising the mean KL(teacher || softmax(student + b)).

    Damped Newton on the K - 1 free entries: the gradient is the mean of (q - p) and the Hessian the mean
    of (diag q - q qᵀ), with p the teacher's and q the shifted student's probabilities. A class the teacher
    never predicts would drive its offset to -inf; the step is then capped by the iteration count.
    """
    t, s = _check_logits(teacher, student)
    p = np.exp(log_softmax(t))
    k = t.shape[1]
    b = np.zeros(k)

    def objective(off):
        return float(-(p * log_softmax(s + off)).sum(1).mean())  # KL minus the teacher's entropy

    f = objective(b)
    for _ in range(max_iter):
        q = np.exp(log_softmax(s + b))
        g = (q - p).mean(0)[1:]
        if np.abs(g).max() < TOL:
            break
        h = (np.diag(q.mean(0)) - q.T @ q / len(q))[1:, 1:]
        step = np.linalg.solve(h + 1e-12 * np.eye(k - 1), g)
        alpha = 1.0
        while alpha > 1e-6:  # backtracking: Newton's full step can overshoot far from the optimum
            trial = b.copy()
            trial[1:] -= alpha * step
            ft = objective(trial)
            if ft <= f:
                b, f = trial, ft
                break
            alpha /= 2
        else:
            break
    return b


def fold_logit_offset(model: nn.Module, offset) -> nn.Module:
    """A copy of ``model`` whose logits are the original ones plus ``offset`` (added to the classifier's bias;
    a classifier without bias gets one)."""
    from ..temperature import classifier_of

    b = np.asarray(offset, dtype=np.float64).reshape(-1)
    if not np.isfinite(b).all():
        raise ConfigError(f"logit offset must be finite, got {b.tolist()}")
    out = copy.deepcopy(model)
    layer = classifier_of(out)
    k = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    if len(b) != k:
        raise ConfigError(f"logit offset has {len(b)} entries, the classifier has {k} outputs")
    add = torch.as_tensor(b, dtype=layer.weight.dtype, device=layer.weight.device)
    with torch.no_grad():
        if layer.bias is None:
            layer.bias = nn.Parameter(add.clone())
        else:
            layer.bias.add_(add)
    return out


def align_to_teacher(student: nn.Module, teacher: nn.Module, ds, preprocess, split: str = "val",
                     device: str = "cpu") -> tuple[nn.Module, dict]:
    """Fit the offset on ``split`` (val) from both models' logits; the aligned copy and what the fit did."""
    from ..evaluate import predict_logits

    zs, _ = predict_logits(student, ds, split, preprocess, device=device)
    zt, _ = predict_logits(teacher, ds, split, preprocess, device=device)
    b = fit_logit_offset(zt, zs)
    agree = [float((zt.argmax(1) == z.argmax(1)).mean()) for z in (zs, zs + b)]
    report = {"offset": b.tolist(), "fit_split": split, "n": int(len(zs)), "free_parameters": int(len(b) - 1),
              "objective": "mean KL(teacher || softmax(student + offset))",
              "kl_before": mean_kl(zt, zs), "kl_after": mean_kl(zt, zs, b),
              "agreement_before": agree[0], "agreement_after": agree[1]}
    return fold_logit_offset(student, b), report
