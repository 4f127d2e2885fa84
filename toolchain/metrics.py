"""Classification metrics for clinical reporting: per-class sensitivity/specificity, AUC, calibration,
each accuracy-like figure with its 95 % interval and the n behind it.

``compute_metrics`` returns plain JSON-ready values (floats, ints, None) so checkpoints and benchmark
reports can store it directly; ``metrics_table``/``metrics_to_markdown`` render several models side by side.
``paired_bootstrap_diff`` bounds the change of one figure between two models scored on the same images
(the "drop" of a pruned model). Which interval for which figure, and why: ``toolchain.intervals``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from .intervals import CONFIDENCE, N_BOOT, bootstrap_replicates, clopper_pearson, percentile_interval
from .ordinal import METRICS as ORDINAL_METRICS
from .ordinal import ordinal_metrics

ECE_BINS = 15
PAIRED_N_BOOT = 2000
# (labels (N,), probabilities (N, K), image weights (B, N)) -> one value per weight row (B,)
Metric = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def _f(x) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else float(x)


def _one(values: np.ndarray) -> float | None:
    return _f(np.asarray(values).reshape(-1)[0])


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


# Every figure is a function of image weights w (B, N): a row of ones is the data as is, a row of
# bootstrap counts is one replicate. One implementation thus serves the value and its interval, and a
# chunk of replicates is scored in one vectorised pass. NaN marks a figure undefined for that row.
def _weighted_auc(positive: np.ndarray, score: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC (ties count half) per row of ``w``; NaN where a side is empty."""
    order = np.argsort(score, kind="stable")
    s, pos = score[order], positive[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # one group per distinct score (ties)
    wo = w[:, order]
    wp = wo * pos
    wn = wo - wp
    if len(starts) < len(s):
        wp, wn = np.add.reduceat(wp, starts, axis=1), np.add.reduceat(wn, starts, axis=1)
    below = np.cumsum(wn, axis=1) - wn
    with np.errstate(invalid="ignore", divide="ignore"):
        return (wp * (below + 0.5 * wn)).sum(axis=1) / (wp.sum(axis=1) * wn.sum(axis=1))


def binary_auc(positive: np.ndarray, score: np.ndarray) -> float | None:
    """ROC AUC as the Mann-Whitney statistic (ties count half); None when one side is empty."""
    positive = np.asarray(positive).astype(bool)
    return _one(_weighted_auc(positive, np.asarray(score, dtype=np.float64), np.ones((1, len(positive)))))


def _rate(members: np.ndarray, hit: np.ndarray, w: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return (w[:, members] @ hit[members]) / w[:, members].sum(axis=1)


def _nanmean_rows(x: np.ndarray) -> np.ndarray:
    present = np.isfinite(x)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(present, x, 0.0).sum(axis=1) / present.sum(axis=1)


def accuracy(y: np.ndarray, probs: np.ndarray, w: np.ndarray) -> np.ndarray:
    return w @ (probs.argmax(axis=1) == y) / w.sum(axis=1)


def balanced_accuracy(y: np.ndarray, probs: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Mean recall over the classes present in ``y``."""
    pred = probs.argmax(axis=1)
    return _nanmean_rows(np.stack([_rate(y == c, pred == c, w) for c in range(probs.shape[1])], axis=1))


def auc(y: np.ndarray, probs: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Binary: AUC of the positive class (label 1), the clinical convention; else the one-vs-rest macro
    mean over the classes present in the labels."""
    k = probs.shape[1]
    if k == 2:
        return _weighted_auc(y == 1, probs[:, 1], w)
    return _nanmean_rows(np.stack([_weighted_auc(y == c, probs[:, c], w) for c in range(k)], axis=1))


def _class_metric(c: int, of_positives: bool) -> Metric:
    def rate(y: np.ndarray, probs: np.ndarray, w: np.ndarray) -> np.ndarray:
        said = probs.argmax(axis=1) == c
        return _rate(y == c, said, w) if of_positives else _rate(y != c, ~said, w)

    return rate


METRICS: dict[str, Metric] = {"accuracy": accuracy, "balanced_accuracy": balanced_accuracy, "auc": auc,
                               **ORDINAL_METRICS}  # qwk, grade_mae: graded labels (toolchain.ordinal)
CLASS_METRICS = ("sensitivity", "specificity")


def metric_function(metric: str, class_names: Sequence[str] | None = None) -> Metric:
    """The weighted function of a metric name: ``accuracy``, ``balanced_accuracy``, ``auc``,
    ``sensitivity:<class>`` or ``specificity:<class>`` (class by name from ``class_names``, or index)."""
    if metric in METRICS:
        return METRICS[metric]
    kind, sep, cls = str(metric).partition(":")
    if sep and kind in CLASS_METRICS:
        names = list(class_names or [])
        if cls in names:
            return _class_metric(names.index(cls), kind == "sensitivity")
        if cls.isdigit():
            return _class_metric(int(cls), kind == "sensitivity")
        raise ValueError(f"unknown class {cls!r} in metric {metric!r}; classes: {names or 'pass class_names'}")
    raise ValueError(f"unknown metric {metric!r}: use {', '.join(METRICS)} or sensitivity:<class>/specificity:<class>")


def _check_pair(y, probs, name: str = "probs") -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y).astype(np.int64).reshape(-1)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or len(probs) != len(y):
        raise ValueError(f"{name} must be (N={len(y)}, K), got {probs.shape}")
    if len(y) == 0:
        raise ValueError("cannot compute metrics on zero samples")
    if y.min() < 0 or y.max() >= probs.shape[1]:
        raise ValueError(f"labels must be in 0..{probs.shape[1] - 1}, got {y.min()}..{y.max()}")
    return y, probs


def bootstrap_interval(y, probs, metric: str, *, n_boot: int = N_BOOT, seed: int = 0,
                       confidence: float = CONFIDENCE, class_names: Sequence[str] | None = None):
    """Class-stratified percentile-bootstrap interval ``(lo, hi)`` of ``metric`` (None when undefined)."""
    y, probs = _check_pair(y, probs)
    fn = metric_function(metric, class_names)
    return percentile_interval(bootstrap_replicates(y, lambda w: fn(y, probs, w), n_boot, seed), confidence)


def paired_bootstrap_diff(y, pa, pb, metric: str = "accuracy", n_boot: int = PAIRED_N_BOOT, seed: int = 0, *,
                          confidence: float = CONFIDENCE, class_names: Sequence[str] | None = None) -> dict:
    """``metric(a) - metric(b)`` for two models' probabilities ``pa``/``pb`` (N, K) on the same labelled
    images ``y``, with a paired, class-stratified percentile-bootstrap interval: each replicate resamples
    the images once and scores both models on that resample, so the interval reflects where the two
    models disagree, not the sampling noise each has alone.

    With ``a`` the dense and ``b`` the pruned model, ``diff`` is the drop and ``ci[1]`` its upper bound.

    >>> y = np.array([0, 0, 1, 1]); p = np.eye(2)[[0, 0, 1, 1]]
    >>> paired_bootstrap_diff(y, p, p, "accuracy", n_boot=50)["ci"]
    [0.0, 0.0]
    """
    y, pa = _check_pair(y, pa, "pa")
    _, pb = _check_pair(y, pb, "pb")
    if pa.shape != pb.shape:
        raise ValueError(f"pa and pb must have the same shape, got {pa.shape} and {pb.shape}")
    fn = metric_function(metric, class_names)
    ones = np.ones((1, len(y)))
    a, b = _one(fn(y, pa, ones)), _one(fn(y, pb, ones))
    ci = percentile_interval(bootstrap_replicates(y, lambda w: fn(y, pa, w) - fn(y, pb, w), n_boot, seed),
                             confidence)
    return {"metric": metric, "a": a, "b": b, "diff": None if a is None or b is None else a - b,
            "ci": list(ci) if ci else None, "confidence": confidence, "n": int(len(y)), "n_boot": int(n_boot),
            "seed": int(seed), "method": "paired class-stratified percentile bootstrap"}


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE over ``bins`` equal-width bins (lo, hi] of the top-class probability."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    # bin k holds confidences in (edge_k, edge_k+1], as in Guo et al. (2017).
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.searchsorted(edges[1:-1], conf, side="left")
    ece = 0.0
    for k in range(bins):
        sel = idx == k
        if sel.any():
            ece += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return float(ece)


def _cp(k: int, n: int, confidence: float) -> list[float] | None:
    return list(clopper_pearson(k, n, confidence)) if n else None


def _as_list(ci) -> list[float] | None:
    return list(ci) if ci else None


def compute_metrics(y_true, probs, class_names: Sequence[str], *, intervals: bool = True, n_boot: int = N_BOOT,
                    seed: int = 0, confidence: float = CONFIDENCE, ordinal: bool = False) -> dict:
    """Metrics of predicted class probabilities ``probs`` (N,K) against integer labels ``y_true`` (N,).

    Sensitivity of a class is its recall; specificity is the recall of "not this class". A class absent
    from ``y_true`` has no sensitivity/AUC (None) and the reason is listed under ``notes``. With
    ``intervals`` each accuracy-like figure ``x`` also gets ``x_ci = [lo, hi]`` (``toolchain.intervals``)
    and each class its n: ``support`` (positives, behind sensitivity) and ``n_negative`` (behind
    specificity). ``intervals=False`` skips the intervals (model selection needs only the values).
    ``ordinal`` (classes are ordered grades) adds ``qwk`` and ``grade_mae`` (``toolchain.ordinal``).
    """
    k = len(class_names)
    y_true = np.asarray(y_true).astype(np.int64).reshape(-1)
    if np.shape(probs) != (len(y_true), k):
        raise ValueError(f"probs must be (N={len(y_true)}, K={k}), got {np.shape(probs)}")
    y_true, probs = _check_pair(y_true, probs)
    cm = confusion_matrix(y_true, probs.argmax(axis=1), k)
    n = len(y_true)
    ones = np.ones((1, n))
    notes: list[str] = []

    per_class: dict[str, dict] = {}
    present = 0
    for c, name in enumerate(class_names):
        support = int(cm[c].sum())
        tp = int(cm[c, c])
        fp = int(cm[:, c].sum()) - tp
        negatives = n - support
        tn = negatives - fp
        present += bool(support)
        if not support:
            notes.append(f"class {name} is absent from the labels: no sensitivity or AUC for it")
        row = {"sensitivity": _f(tp / support if support else None),
               "specificity": _f(tn / negatives if negatives else None),
               "precision": _f(tp / (tp + fp) if tp + fp else None),
               "auc": binary_auc(y_true == c, probs[:, c]), "support": support, "n_negative": negatives}
        if intervals:
            row["sensitivity_ci"], row["specificity_ci"] = _cp(tp, support, confidence), _cp(tn, negatives, confidence)
        per_class[name] = row

    auc_all = _one(auc(y_true, probs, ones))
    if k > 2 and present < k and auc_all is not None:
        notes.append(f"macro AUC averages the {present} of {k} classes present in the labels")
    if auc_all is None:
        notes.append("AUC undefined: the labels hold a single class")

    out = {
        "n": n,
        "accuracy": float(np.trace(cm) / n),
        "balanced_accuracy": _one(balanced_accuracy(y_true, probs, ones)),
        "auc": auc_all,
        "ece": expected_calibration_error(y_true, probs),
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
        "notes": notes,
    }
    if intervals:
        boot = {"n_boot": n_boot, "seed": seed, "confidence": confidence}
        out["accuracy_ci"] = _cp(int(np.trace(cm)), n, confidence)
        out["balanced_accuracy_ci"] = _as_list(bootstrap_interval(y_true, probs, "balanced_accuracy", **boot))
        out["auc_ci"] = _as_list(bootstrap_interval(y_true, probs, "auc", **boot)) if auc_all is not None else None
        out["intervals"] = {"confidence": confidence, "exact": "clopper-pearson (accuracy, sensitivity, specificity)",
                            "bootstrap": "class-stratified percentile (balanced_accuracy, auc)", "n_boot": n_boot,
                            "seed": seed}
    if ordinal:
        out.update(ordinal_metrics(y_true, probs, intervals=intervals, n_boot=n_boot, seed=seed,
                                   confidence=confidence))
        if intervals:
            out["intervals"]["bootstrap"] += "; qwk, grade_mae: the same bootstrap"
    return out


# Row label, key.  Per-class rows (n, sensitivity, specificity) follow for every class seen in any column.
_SUMMARY_ROWS = (("n", "n"), ("accuracy", "accuracy"), ("balanced accuracy", "balanced_accuracy"),
                 ("AUC", "auc"), ("ECE", "ece"))
_ORDINAL_ROWS = (("QWK", "qwk"), ("grade MAE", "grade_mae"))  # shown when a column has them (--ordinal)


def _rows(columns: Mapping[str, Mapping]) -> list[tuple[str, list, list]]:
    """``(label, values, intervals)`` per table row."""
    cols = list(columns.values())
    keys = _SUMMARY_ROWS + (_ORDINAL_ROWS if any("qwk" in c for c in cols) else ())
    rows = [(label, [c.get(key) for c in cols], [c.get(f"{key}_ci") for c in cols]) for label, key in keys]
    classes: list[str] = []
    for col in cols:
        classes += [c for c in (col.get("per_class") or {}) if c not in classes]
    for cls in classes:
        stats = [((col.get("per_class") or {}).get(cls) or {}) for col in cols]
        rows.append((f"n {cls}", [s.get("support") for s in stats], [None] * len(cols)))
        for stat in CLASS_METRICS:
            rows.append((f"{stat} {cls}", [s.get(stat) for s in stats], [s.get(f"{stat}_ci") for s in stats]))
    return rows


def _fmt(value, reference=None, ci=None) -> str:
    if value is None:
        return "—"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    text = f"{value:.4f}"
    if ci:
        text += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
    if reference is not None:
        text += f" ({value - reference:+.4f})"
    return text


def _columns(columns: Mapping[str, Mapping]) -> dict[str, Mapping]:
    # Checkpoint metadata may hold non-metric entries next to the per-split dicts; show only the dicts.
    return {name: col for name, col in columns.items() if isinstance(col, Mapping)}


def _cells(columns: Mapping[str, Mapping], reference: str | None) -> list[tuple[str, list[str]]]:
    names = list(columns)
    ref_idx = names.index(reference) if reference in names else None
    out = []
    for label, values, cis in _rows(columns):
        counts = label == "n" or label.startswith("n ")
        ref = values[ref_idx] if ref_idx is not None and not counts else None
        out.append((label, [_fmt(v, ref if i != ref_idx and v is not None and ref is not None else None, ci)
                            for i, (v, ci) in enumerate(zip(values, cis, strict=True))]))
    return out


def metrics_table(columns: Mapping[str, Mapping], *, reference: str | None = None, title: str | None = None):
    """A rich Table: metrics as rows, one column per model (``{"dense": m0, "pruned@0.3": m1}``).

    Values show their 95 % interval in brackets when the metrics carry one. With ``reference`` naming a
    column, the other columns also show their difference to it.
    """
    from rich.table import Table

    columns = _columns(columns)
    from rich.markup import escape

    caption = _caption(columns)
    table = Table(title=title, show_lines=False, caption=escape(caption) if caption else None)
    table.add_column("metric", style="bold")
    for name in columns:
        table.add_column(name, justify="right")
    for label, cells in _cells(columns, reference):
        table.add_row(label, *cells)
    return table


def _caption(columns: Mapping[str, Mapping]) -> str | None:
    info = next((c["intervals"] for c in columns.values() if c.get("intervals")), None)
    if not info:
        return None
    return (f"[lo, hi]: {info['confidence']:.0%} interval (accuracy, sensitivity, specificity: exact "
            f"Clopper-Pearson; balanced accuracy, AUC{', QWK, grade MAE' if 'qwk' in info['bootstrap'] else ''}: "
            f"stratified bootstrap, {info['n_boot']} resamples)")


def metrics_to_markdown(columns: Mapping[str, Mapping], *, reference: str | None = None) -> str:
    """The same table as ``metrics_table`` as GitHub markdown."""
    columns = _columns(columns)
    names = list(columns)
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    lines += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in _cells(columns, reference)]
    caption = _caption(columns)
    return "\n".join(lines) + "\n" + (f"\n{caption}\n" if caption else "")
