"""The lossless rule: decided on val, with its uncertainty visible.

**Rule.** A pruned model is lossless when, on the whole val split, the upper end of the 95 % paired
bootstrap interval of

- the accuracy drop (dense − pruned) is at most ``--tolerance`` points, and
- each class's sensitivity drop is at most ``--sens-tolerance`` points.

Used by deploy (``devices/deploy``) and the protocol grid study, so both apply one rule.

The interval is ``toolchain.metrics.paired_bootstrap_diff``: every replicate resamples the val images
within each class once and scores both models on that resample, so its width comes from the images on
which the two models disagree. A pruned model that changes no prediction passes however small val is;
one that loses a few images of a small class fails even when the point drop is within tolerance.

**Resolution.** One image of a class with ``n`` val images moves its sensitivity by ``100/n`` points.
When that exceeds ``--sens-tolerance`` (``n < 100 / sens_tolerance``) the rule can only accept ratios
that lose no image of that class on val; likewise accuracy when the whole val split has fewer than
``100 / tolerance`` images. :func:`resolution_warnings` says so and what the user can do.

**Search-aware variant** (``SEARCH_AWARE_RULE``, opt-in: ``--search-aware``). The rule bounds one candidate at
95 %; a search that judges ``k`` candidates on the same val split and keeps the most compressed passer selects for
lucky val draws (stop 18: PneumoniaMNIST VGG19's pooled choice over 49 recovered candidates passed on val and failed
on test). The variant makes the bounds simultaneous over the ``k`` candidates (Bonferroni): every candidate's
interval is taken at confidence ``1 - 0.05 / k`` (:func:`search_confidence`) from the same paired bootstrap, with
``k`` times the replicates (:func:`search_n_boot`) so that each upper tail keeps the 50 replicates the 95 % rule's
has and the bound is never the sample maximum. ``k = 1`` is the 95 % rule exactly (same level, same replicates,
same numbers). ``k`` must be fixed before val is read: deploy's budget back-off counts every (ratio, recipe) pair it
may try; the adaptive ratio search (``prune_eval.find_lossless``) counts the most judgments its scan and bisection
can make (:func:`grid_search_k`), which is not a union over every ratio it could reach.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from .errors import ConfigError
from .intervals import CONFIDENCE

RULE = ("lossless on val: the upper end of the 95 % paired class-stratified bootstrap interval of the accuracy "
        "drop <= tolerance and of every class's sensitivity drop <= sens-tolerance (points)")
SEARCH_AWARE_RULE = ("search-aware lossless on val (Bonferroni over the k candidates judged on val): the upper end of "
                     "each candidate's (1 - 0.05/k) paired class-stratified bootstrap interval of the accuracy drop <= "
                     "tolerance and of every class's sensitivity drop <= sens-tolerance (points); k = 1 is the 95 % "
                     "rule")


def search_confidence(k: int) -> float:
    """Each candidate's interval level when ``k`` candidates are judged on one split: ``1 - 0.05 / k``
    (Bonferroni); ``k = 1`` returns ``CONFIDENCE`` itself, so the 95 % rule is unchanged bit for bit."""
    k = _check_k(k)
    return CONFIDENCE if k == 1 else 1.0 - (1.0 - CONFIDENCE) / k


def search_n_boot(k: int) -> int:
    """Paired bootstrap replicates for ``k`` candidates: ``k x PAIRED_N_BOOT``, so the upper tail of a
    ``search_confidence(k)`` interval holds as many replicates (50) as the 95 % rule's does."""
    from .metrics import PAIRED_N_BOOT

    return PAIRED_N_BOOT * _check_k(k)


def rule_line(k: int) -> str:
    """The rule a search with ``k`` candidates judged on val applies, for printing and records."""
    k = _check_k(k)
    return f"{SEARCH_AWARE_RULE}; here k = {k} (each bound at {100 * search_confidence(k):.4g} %)"


def grid_search_k(grid: Sequence[int], top: int) -> int:
    """The most candidates ``prune_eval.find_lossless`` can judge: the coarse scan's ``grid`` points (grid steps,
    ascending; empty: no scan) plus a bisection of the widest bracket between neighbours of 0, ``grid`` and
    ``top + 1``.

    >>> grid_search_k(list(range(10, 91, 10)) + [99], 99)   # 10 scanned + 4 bisection steps in a 10-step bracket
    14
    """
    edges = [0, *grid, int(top) + 1]
    gaps = [b - a for a, b in zip(edges, edges[1:], strict=False)]
    if min(gaps) < 1:
        raise ConfigError(f"the scan grid must ascend strictly inside [1, {top}], got {list(grid)}")
    return len(grid) + math.ceil(math.log2(max(gaps)))


def _check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError(f"k (candidates judged on the same split) must be an integer >= 1, got {k!r}")
    return int(k)


def resolution_warnings(labels: np.ndarray, class_names: Sequence[str], tolerance: float,
                        sens_tolerance: float, split: str = "val") -> list[str]:
    """One line per figure whose single-image step on ``split`` is larger than its tolerance."""
    labels = np.asarray(labels)
    out = []
    n = len(labels)
    if n and 100.0 / n > tolerance:
        out.append(f"{split} has {n} images: one image is {100.0 / n:.2f} accuracy points, more than --tolerance "
                   f"{tolerance}; only ratios that change no {split} prediction can pass. Use a dataset with a "
                   f"larger {split} split or raise --tolerance to >= {100.0 / n:.2f}")
    for c, name in enumerate(class_names):
        k = int((labels == c).sum())
        if k == 0:
            out.append(f"class {name} has no {split} images: its sensitivity cannot be checked before the test "
                       f"report; add {split} images of it")
        elif 100.0 / k > sens_tolerance:
            out.append(f"class {name} has {k} {split} images: one image is {100.0 / k:.2f} sensitivity points, "
                       f"more than --sens-tolerance {sens_tolerance}; only ratios that lose no {name} image on "
                       f"{split} can pass. Add {split} images of {name} or raise --sens-tolerance to >= "
                       f"{100.0 / k:.2f}")
    return out


def drops(y, p_dense, p_pruned, class_names: Sequence[str], *, n_boot: int | None = None, seed: int = 0,
          confidence: float = CONFIDENCE) -> dict:
    """Accuracy and per-class sensitivity drops (points, dense − pruned) with paired bootstrap intervals (95 %, or
    ``confidence``) and n. ValueError when ``n_boot`` leaves no replicate beyond the interval's upper end."""
    from .metrics import PAIRED_N_BOOT, paired_bootstrap_diff

    y = np.asarray(y)
    boot = dict(n_boot=n_boot or PAIRED_N_BOOT, seed=seed)
    if confidence != CONFIDENCE:  # the default's call stays as it was (same arguments, same numbers)
        tail = (1.0 - confidence) / 2
        if (boot["n_boot"] - 1) * tail < 1:  # np.quantile would return (nearly) the sample maximum
            raise ValueError(f"n_boot={boot['n_boot']} is too few for a {confidence:.6g} interval: its upper end "
                             f"would be the largest replicate; use n_boot >= {math.ceil(1 / tail) + 1}")
        boot["confidence"] = confidence
    acc = paired_bootstrap_diff(y, p_dense, p_pruned, "accuracy", **boot)
    sens, sens_ci, support = {}, {}, {}
    for c, name in enumerate(class_names):
        support[name] = int((y == c).sum())
        if support[name]:
            d = paired_bootstrap_diff(y, p_dense, p_pruned, f"sensitivity:{name}", class_names=list(class_names),
                                      **boot)
            sens[name], sens_ci[name] = 100.0 * d["diff"], _pts(d["ci"])
    return {"n": int(len(y)), "support": support, "accuracy": acc["b"], "accuracy_drop_pts": 100.0 * acc["diff"],
            "accuracy_drop_ci_pts": _pts(acc["ci"]), "sensitivity_drop_pts": sens,
            "sensitivity_drop_ci_pts": sens_ci, "confidence": acc["confidence"], "n_boot": acc["n_boot"]}


def worst_sensitivity_drop(y, p_dense, p_pruned, *, n_boot: int | None = None, seed: int = 0,
                           confidence: float | None = None) -> dict:
    """The largest per-class sensitivity drop (points, dense − pruned) with a 95 % paired bootstrap interval
    *of that maximum*: every replicate resamples the images within each class once, scores both models on it
    and takes the worst class of that replicate (which class is worst may change between replicates).

    The interval of the worst class is not the interval of any one class: :func:`drops` gives those, and the
    rule (:func:`passes_bound`) bounds each class. This figure summarises a model for a report row; ``class``
    names the worst class of the point estimate. Classes absent from ``y`` are skipped.
    """
    from .intervals import CONFIDENCE, bootstrap_replicates, percentile_interval
    from .metrics import PAIRED_N_BOOT, metric_function

    y = np.asarray(y).astype(np.int64).reshape(-1)
    a, b = np.asarray(p_dense, np.float64), np.asarray(p_pruned, np.float64)
    if a.ndim != 2 or a.shape != b.shape or len(a) != len(y) or not len(y):
        raise ValueError(f"need probabilities (N={len(y)} > 0, K) of the same shape for both models, got "
                         f"{a.shape} and {b.shape}")
    classes = [int(c) for c in np.unique(y)]
    fns = [metric_function(f"sensitivity:{c}") for c in classes]

    def per_class(w: np.ndarray) -> np.ndarray:  # (classes, B) drops in points
        return np.stack([(fn(y, a, w) - fn(y, b, w)) * 100.0 for fn in fns])

    point = per_class(np.ones((1, len(y))))[:, 0]
    conf = CONFIDENCE if confidence is None else confidence
    reps = bootstrap_replicates(y, lambda w: per_class(w).max(axis=0), n_boot or PAIRED_N_BOOT, seed)
    ci = percentile_interval(reps, conf)
    return {"value": float(point.max()), "ci": list(ci) if ci else None, "class": classes[int(point.argmax())],
            "n": int(len(y)), "n_boot": int(n_boot or PAIRED_N_BOOT), "confidence": conf, "seed": int(seed),
            "method": "paired class-stratified percentile bootstrap of the worst class's drop"}


def passes_bound(d: Mapping, tolerance: float, sens_tolerance: float) -> bool:
    """The rule (module docstring): upper bounds of the drops within the tolerances (95 %, or the level ``d``'s
    intervals were drawn at: :func:`judge` with ``k``)."""
    return bool(d["accuracy_drop_ci_pts"][1] <= tolerance + 1e-9
                and all(ci[1] <= sens_tolerance + 1e-9 for ci in d["sensitivity_drop_ci_pts"].values()))


def passes_point(d: Mapping, tolerance: float, sens_tolerance: float) -> bool:
    """Point drops within the tolerances (the pre-interval rule; how a choice is judged on test)."""
    return bool(d["accuracy_drop_pts"] <= tolerance + 1e-9
                and all(v <= sens_tolerance + 1e-9 for v in d["sensitivity_drop_pts"].values()))


def judge(y: np.ndarray, p_dense: np.ndarray, p_pruned: np.ndarray, class_names: Sequence[str], *,
          tolerance: float, sens_tolerance: float, seed: int = 0, split: str = "val", k: int = 1) -> dict:
    """:func:`drops`, whether the rule passes (with a line per failed figure) and the point check beside it.

    ``k``: candidates judged on ``split`` by the search this verdict belongs to; ``k > 1`` applies the
    search-aware rule (``SEARCH_AWARE_RULE``: bounds at :func:`search_confidence`, recorded as ``search_k``);
    ``k = 1`` (default) is the 95 % rule, with the same output as before the variant existed.

    >>> y = np.array([0, 0, 1, 1]); p = np.eye(2)[y]
    >>> judge(y, p, p, ["a", "b"], tolerance=1.0, sens_tolerance=2.0, k=3)["passes"]
    True
    """
    k = _check_k(k)
    if k == 1:
        d = drops(y, p_dense, p_pruned, class_names, seed=seed)
    else:
        d = drops(y, p_dense, p_pruned, class_names, seed=seed, n_boot=search_n_boot(k),
                  confidence=search_confidence(k))
    at = "" if k == 1 else f" at {100 * d['confidence']:.4g} %, k = {k}"
    failed = []
    if d["accuracy_drop_ci_pts"][1] > tolerance + 1e-9:
        failed.append(f"accuracy drop up to {d['accuracy_drop_ci_pts'][1]:.2f} pts{at} (allowed {tolerance})")
    failed += [f"{name} sensitivity drop up to {ci[1]:.2f} pts{at} (allowed {sens_tolerance})"
               for name, ci in d["sensitivity_drop_ci_pts"].items() if ci[1] > sens_tolerance + 1e-9]
    sens = d["sensitivity_drop_pts"]
    return {"split": split, **d, "worst_sensitivity_drop_pts": max(sens.values()) if sens else 0.0,
            "passes": not failed, "failed": failed, "passes_point": passes_point(d, tolerance, sens_tolerance),
            "tolerance_pts": tolerance, "sens_tolerance_pts": sens_tolerance, "seed": seed,
            **({} if k == 1 else {"search_k": k, "rule": rule_line(k)})}


def _pts(ci) -> list[float]:
    return [100.0 * ci[0], 100.0 * ci[1]] if ci else [float("nan"), float("nan")]
