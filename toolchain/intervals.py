"""Confidence intervals for classification figures: exact binomial and stratified bootstrap.

Proportions with a plain count behind them (accuracy, per-class sensitivity and specificity) get the
exact Clopper-Pearson interval. It is chosen over Wilson because its coverage is guaranteed to be at
least the nominal 95 % for every n and p (Wilson's can dip below it for small n), it is well defined at
0/n and n/n, and a per-class sensitivity often rests on a few dozen images: erring wide is the safe
side for a clinical claim. Figures that are not a single proportion (balanced accuracy, AUC, and the
difference of any figure between two models scored on the same images) get a percentile bootstrap
that resamples *within each true class*, so every replicate keeps the class counts of the data
(the prevalence is fixed by how the split was drawn, not a random quantity) and every class stays
present (AUC and balanced accuracy stay defined). The bootstrap is seeded: same inputs, same interval.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

CONFIDENCE = 0.95
N_BOOT = 1000


def _check_confidence(confidence: float) -> float:
    confidence = float(confidence)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return confidence


def clopper_pearson(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Exact two-sided interval for ``k`` successes in ``n`` trials (equal tails).

    >>> lo, hi = clopper_pearson(0, 10)   # hi = 1 - 0.025 ** (1 / 10)
    >>> round(hi, 4)
    0.3085
    """
    if int(k) != k or int(n) != n:
        raise ValueError(f"k and n must be integers, got {k}, {n}")
    k, n = int(k), int(n)
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    alpha = 1.0 - _check_confidence(confidence)
    from scipy.stats import beta

    lo = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return lo, hi


def stratified_counts(y: np.ndarray, n_boot: int, seed: int, chunk: int = 250) -> Iterator[np.ndarray]:
    """Bootstrap replicates of ``y`` as count matrices ``(b, N)`` (row sums = N), yielded in chunks.

    Row r says how often each image is drawn in replicate r; the draws are with replacement *within each
    class*, so every replicate keeps the class counts. Counts instead of index lists let a metric score
    all replicates of a chunk with one weighted computation.
    """
    y = np.asarray(y).reshape(-1)
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    groups = [np.flatnonzero(y == c) for c in np.unique(y)]
    rng = np.random.default_rng(seed)
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        counts = np.zeros((b, len(y)), dtype=np.float64)
        for g in groups:
            draws = rng.integers(0, len(g), (b, len(g))) + np.arange(b)[:, None] * len(g)
            counts[:, g] = np.bincount(draws.ravel(), minlength=b * len(g)).reshape(b, len(g))
        yield counts


def percentile_interval(values: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """Equal-tailed percentile interval of bootstrap replicates; None when no replicate is finite."""
    alpha = 1.0 - _check_confidence(confidence)
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def bootstrap_replicates(y: np.ndarray, statistic: Callable[[np.ndarray], np.ndarray], n_boot: int = N_BOOT,
                         seed: int = 0) -> np.ndarray:
    """``statistic(counts)`` (one value per row of a ``(b, N)`` count matrix) over stratified replicates of ``y``."""
    return np.concatenate([np.asarray(statistic(c), dtype=np.float64) for c in stratified_counts(y, n_boot, seed)])


def hanley_mcneil(auc: float, n_pos: int, n_neg: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Normal-approximation interval of a ROC AUC from its value and the class counts alone
    (Hanley & McNeil 1982, Radiology 143:29), clipped to [0, 1].

    For results stored without their predictions, where a bootstrap cannot be rerun; an approximation,
    narrower than the truth when the AUC is near 1 with few positives.

    >>> lo, hi = hanley_mcneil(0.893, 51, 58)   # the paper's CT example: SE 0.0325
    >>> round((hi - lo) / 2 / 1.959964, 4)
    0.0325
    """
    if not 0.0 <= auc <= 1.0 or n_pos < 1 or n_neg < 1:
        raise ValueError(f"need 0 <= auc <= 1 and positive counts, got {auc}, {n_pos}, {n_neg}")
    from scipy.stats import norm

    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc**2) + (n_neg - 1) * (q2 - auc**2)) / (n_pos * n_neg)
    z = float(norm.ppf(0.5 + _check_confidence(confidence) / 2))
    half = z * max(var, 0.0) ** 0.5
    return max(0.0, auc - half), min(1.0, auc + half)
