"""Graded labels (``--ordinal``): quadratic-weighted kappa and mean absolute grade error beside accuracy.

When the classes are ordered grades (diabetic retinopathy 0-4, a severity score), calling grade 3 a
grade 4 is a smaller error than calling it grade 0; accuracy counts both alike. Two figures say how far
off the predictions are, with the predicted grade being the most probable class (as for accuracy):

* **quadratic-weighted kappa (QWK)**: 1 - sum(W * O) / sum(W * E), where O is the confusion matrix, E
  the one expected by chance from its row and column totals, and W[i, j] = (i - j)^2. 1 is perfect
  agreement, 0 chance level, below 0 worse than chance (Cohen 1968; the usual retinopathy figure).
  Undefined (None) when E has no off-diagonal mass: every label and prediction is one grade.
* **mean absolute grade error (MAE)**: the mean of |true grade - predicted grade|, in grades.

Both are written as functions of image weights like every figure in ``toolchain.metrics`` (a row of
ones is the data, a row of bootstrap counts one replicate), so their 95 % intervals are the same
class-stratified percentile bootstrap (``toolchain.intervals``) and the deploy gates can bound a drop
with ``metrics.paired_bootstrap_diff(..., "qwk")``. Labels are grade indices 0..K-1 in class order.
"""

from __future__ import annotations

import numpy as np

from .intervals import CONFIDENCE, N_BOOT, bootstrap_replicates, percentile_interval

ORDINAL_KEY = "ordinal"  # Dataset.params key, checkpoint meta key and train_config field


def qwk(y: np.ndarray, probs: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Quadratic-weighted kappa per row of image weights ``w`` (B, N); NaN where chance agreement is total."""
    k = probs.shape[1]
    pred = probs.argmax(axis=1)
    grades = np.arange(k, dtype=np.float64)
    disagreement = (y - pred).astype(np.float64) ** 2  # W[y, pred] of each image
    total = w.sum(axis=1)
    rows = w @ (y[:, None] == grades).astype(np.float64)  # (B, K) weighted true-grade counts
    cols = w @ (pred[:, None] == grades).astype(np.float64)  # (B, K) weighted predicted-grade counts
    weights = (grades[:, None] - grades[None, :]) ** 2
    expected = np.einsum("bi,ij,bj->b", rows, weights, cols) / total  # sum(W * E), E = outer(rows, cols) / total
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(expected > 0, 1.0 - (w @ disagreement) / expected, np.nan)


def grade_mae(y: np.ndarray, probs: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Mean |true grade - predicted grade| per row of image weights ``w`` (B, N)."""
    return w @ np.abs(y - probs.argmax(axis=1)).astype(np.float64) / w.sum(axis=1)


# name -> weighted figure; toolchain.metrics.METRICS takes these in, so every metric helper knows them
METRICS = {"qwk": qwk, "grade_mae": grade_mae}


def _check(y, probs) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y).astype(np.int64).reshape(-1)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or len(probs) != len(y) or len(y) == 0:
        raise ValueError(f"need labels (N,) and probabilities (N, K) with N >= 1, got {y.shape} and {probs.shape}")
    if probs.shape[1] < 2 or y.min() < 0 or y.max() >= probs.shape[1]:
        raise ValueError(f"grades must be 0..{probs.shape[1] - 1} with at least two grades")
    return y, probs


def ordinal_metrics(y, probs, *, intervals: bool = True, n_boot: int = N_BOOT, seed: int = 0,
                    confidence: float = CONFIDENCE) -> dict:
    """``{"qwk", "grade_mae"}`` of probabilities ``probs`` (N, K) against grades ``y`` (N,), each with its
    95 % class-stratified bootstrap interval ``<name>_ci`` unless ``intervals=False``.

    >>> y = np.array([0, 1, 2, 2]); p = np.eye(3)[[0, 1, 2, 1]]
    >>> m = ordinal_metrics(y, p, intervals=False)
    >>> round(m["qwk"], 4), m["grade_mae"]
    (0.8, 0.25)
    """
    y, probs = _check(y, probs)
    ones = np.ones((1, len(y)))
    out: dict = {}
    for name, fn in METRICS.items():
        value = float(fn(y, probs, ones)[0])
        out[name] = value if np.isfinite(value) else None
        if intervals:
            ci = percentile_interval(bootstrap_replicates(y, lambda w, fn=fn: fn(y, probs, w), n_boot, seed),
                                     confidence) if out[name] is not None else None
            out[f"{name}_ci"] = list(ci) if ci else None
    return out


def is_ordinal(ds) -> bool:
    """Whether ``ds``'s classes are ordered grades (set by :func:`mark_ordinal`)."""
    return bool((getattr(ds, "params", None) or {}).get(ORDINAL_KEY))


def mark_ordinal(ds, ordinal: bool) -> None:
    """Record on the dataset that its class indices are grades, so every evaluation of it reports QWK/MAE."""
    if ordinal:
        if len(ds.class_names) < 3:
            from .errors import ConfigError

            raise ConfigError(f"--ordinal needs at least 3 graded classes; {ds.name} has "
                              f"{len(ds.class_names)} ({', '.join(map(str, ds.class_names))})")
        ds.params[ORDINAL_KEY] = True


def ordinal_drops(y, p_dense, p_pruned, *, n_boot: int | None = None, seed: int = 0) -> dict:
    """QWK drop (points: 100 x (dense - pruned)) and grade-MAE increase (grades: pruned - dense) of two
    models on the same graded images, each with a 95 % paired class-stratified bootstrap interval and n
    (``metrics.paired_bootstrap_diff``). A drop is None where QWK is undefined (a single grade)."""
    from .metrics import PAIRED_N_BOOT, paired_bootstrap_diff

    boot = {"n_boot": n_boot or PAIRED_N_BOOT, "seed": seed}
    q = paired_bootstrap_diff(y, p_dense, p_pruned, "qwk", **boot)
    m = paired_bootstrap_diff(y, p_pruned, p_dense, "grade_mae", **boot)
    return {"n": q["n"], "qwk_dense": q["a"], "qwk": q["b"],
            "qwk_drop_pts": None if q["diff"] is None else 100.0 * q["diff"],
            "qwk_drop_ci_pts": [100.0 * v for v in q["ci"]] if q["ci"] else None,
            "grade_mae": m["a"], "grade_mae_increase": m["diff"], "grade_mae_increase_ci": m["ci"],
            "confidence": q["confidence"], "n_boot": q["n_boot"]}


def with_qwk_bound(verdict: dict, y, p_dense, p_pruned, qwk_tolerance: float, seed: int = 0) -> dict:
    """``verdict`` (``toolchain.lossless.judge``'s) with the QWK drop added to the lossless rule: the upper
    end of its 95 % paired bootstrap interval must be at most ``qwk_tolerance`` points as well (a QWK
    undefined on the split, a single grade, adds no condition)."""
    od = ordinal_drops(y, p_dense, p_pruned, seed=seed)
    ci, drop = od["qwk_drop_ci_pts"], od["qwk_drop_pts"]
    failed = list(verdict["failed"])
    if ci is not None and ci[1] > qwk_tolerance + 1e-9:
        failed.append(f"QWK drop up to {ci[1]:.2f} pts (allowed {qwk_tolerance})")
    point = drop is None or drop <= qwk_tolerance + 1e-9
    return {**verdict, "ordinal": od, "qwk_tolerance_pts": qwk_tolerance, "failed": failed, "passes": not failed,
            "passes_point": bool(verdict["passes_point"] and point)}


def qwk_point_check(dense: dict, pruned: dict, qwk_tolerance: float) -> dict:
    """The deploy's QWK gate on two metric dicts of one split (``toolchain.metrics.compute_metrics`` with graded
    classes): the QWK drop (points, dense - pruned) must be at most ``qwk_tolerance``; the grade-MAE increase
    (grades, pruned - dense) is reported beside it, as the deploy's gate record does. A QWK undefined on the
    split (a single grade) adds no condition. ``prune --find-lossless --ordinal`` searches with it."""
    q0, q1 = dense.get("qwk"), pruned.get("qwk")
    m0, m1 = dense.get("grade_mae"), pruned.get("grade_mae")
    drop = None if q0 is None or q1 is None else 100.0 * (q0 - q1)
    return {"qwk_drop_pts": drop, "grade_mae_increase": None if m0 is None or m1 is None else m1 - m0,
            "qwk_tolerance_pts": qwk_tolerance, "qwk_passes": qwk_drop_passes(drop, qwk_tolerance)}


def qwk_drop_passes(drop_pts: float | None, tolerance_pts: float) -> bool:
    """The QWK gate's rule, for prune's point check and deploy's gate alike: a drop (points, dense - pruned)
    at most the tolerance passes; an undefined drop (QWK undefined on the split: a single grade) passes."""
    return bool(drop_pts is None or drop_pts <= tolerance_pts + 1e-9)
