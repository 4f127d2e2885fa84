"""Classification metrics for clinical reporting: per-class sensitivity/specificity, AUC, calibration.

``compute_metrics`` returns plain JSON-ready values (floats, ints, None) so checkpoints and benchmark
reports can store it directly; ``metrics_table``/``metrics_to_markdown`` render several models side by side.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

ECE_BINS = 15


def _f(x) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else float(x)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def binary_auc(positive: np.ndarray, score: np.ndarray) -> float | None:
    """ROC AUC as the Mann-Whitney statistic (ties count half); None when one side is empty."""
    positive = positive.astype(bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    from scipy.stats import rankdata

    ranks = rankdata(score)  # average ranks handle ties
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


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


def compute_metrics(y_true, probs, class_names: Sequence[str]) -> dict:
    """Metrics of predicted class probabilities ``probs`` (N,K) against integer labels ``y_true`` (N,).

    Sensitivity of a class is its recall; specificity is the recall of "not this class". A class absent
    from ``y_true`` has no sensitivity/AUC (None) and the reason is listed under ``notes``.
    """
    y_true = np.asarray(y_true).astype(np.int64).reshape(-1)
    probs = np.asarray(probs, dtype=np.float64)
    k = len(class_names)
    if probs.ndim != 2 or probs.shape != (len(y_true), k):
        raise ValueError(f"probs must be (N={len(y_true)}, K={k}), got {probs.shape}")
    if len(y_true) == 0:
        raise ValueError("cannot compute metrics on zero samples")
    if y_true.min() < 0 or y_true.max() >= k:
        raise ValueError(f"labels must be in 0..{k - 1}, got {y_true.min()}..{y_true.max()}")
    y_pred = probs.argmax(axis=1)
    cm = confusion_matrix(y_true, y_pred, k)
    n = len(y_true)
    notes: list[str] = []

    per_class: dict[str, dict] = {}
    recalls = []
    class_auc: list[float | None] = []
    for c, name in enumerate(class_names):
        support = int(cm[c].sum())
        tp = int(cm[c, c])
        fp = int(cm[:, c].sum()) - tp
        negatives = n - support
        tn = negatives - fp
        sens = tp / support if support else None
        spec = tn / negatives if negatives else None
        prec = tp / (tp + fp) if tp + fp else None
        auc = binary_auc(y_true == c, probs[:, c])
        if support:
            recalls.append(sens)
        else:
            notes.append(f"class {name} is absent from the labels: no sensitivity or AUC for it")
        class_auc.append(auc)
        per_class[name] = {"sensitivity": _f(sens), "specificity": _f(spec), "precision": _f(prec),
                           "auc": _f(auc), "support": support}

    if k == 2:
        auc = class_auc[1]  # AUC of the positive class (label 1), the clinical convention
    else:
        present = [a for a in class_auc if a is not None]
        auc = float(np.mean(present)) if present else None
        if present and len(present) < k:
            notes.append(f"macro AUC averages the {len(present)} of {k} classes present in the labels")
    if auc is None:
        notes.append("AUC undefined: the labels hold a single class")

    return {
        "n": n,
        "accuracy": float(np.trace(cm) / n),
        "balanced_accuracy": _f(np.mean(recalls)),
        "auc": _f(auc),
        "ece": expected_calibration_error(y_true, probs),
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
        "notes": notes,
    }


# Row label, getter.  Per-class rows are appended for every class seen in any column.
_SUMMARY_ROWS = (("n", "n"), ("accuracy", "accuracy"), ("balanced accuracy", "balanced_accuracy"),
                 ("AUC", "auc"), ("ECE", "ece"))


def _rows(columns: Mapping[str, Mapping]) -> list[tuple[str, list]]:
    rows = [(label, [col.get(key) for col in columns.values()]) for label, key in _SUMMARY_ROWS]
    classes: list[str] = []
    for col in columns.values():
        classes += [c for c in (col.get("per_class") or {}) if c not in classes]
    for cls in classes:
        for stat in ("sensitivity", "specificity"):
            rows.append((f"{stat} {cls}", [((col.get("per_class") or {}).get(cls) or {}).get(stat)
                                           for col in columns.values()]))
    return rows


def _fmt(value, reference=None, label: str = "") -> str:
    if value is None:
        return "—"
    if label == "n" or isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    text = f"{value:.4f}"
    if reference is not None:
        text += f" ({value - reference:+.4f})"
    return text


def _columns(columns: Mapping[str, Mapping]) -> dict[str, Mapping]:
    # Checkpoint metadata may hold non-metric entries next to the per-split dicts; show only the dicts.
    return {name: col for name, col in columns.items() if isinstance(col, Mapping)}


def metrics_table(columns: Mapping[str, Mapping], *, reference: str | None = None, title: str | None = None):
    """A rich Table: metrics as rows, one column per model (``{"dense": m0, "pruned@0.3": m1}``).

    With ``reference`` naming a column, the other columns also show their difference to it.
    """
    from rich.table import Table

    columns = _columns(columns)

    table = Table(title=title, show_lines=False)
    table.add_column("metric", style="bold")
    for name in columns:
        table.add_column(name, justify="right")
    names = list(columns)
    ref_idx = names.index(reference) if reference in names else None
    for label, values in _rows(columns):
        ref = values[ref_idx] if ref_idx is not None and label != "n" else None
        cells = [_fmt(v, ref if i != ref_idx and v is not None and ref is not None else None, label)
                 for i, v in enumerate(values)]
        table.add_row(label, *cells)
    return table


def metrics_to_markdown(columns: Mapping[str, Mapping], *, reference: str | None = None) -> str:
    """The same table as ``metrics_table`` as GitHub markdown."""
    columns = _columns(columns)
    names = list(columns)
    ref_idx = names.index(reference) if reference in names else None
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for label, values in _rows(columns):
        ref = values[ref_idx] if ref_idx is not None and label != "n" else None
        cells = [_fmt(v, ref if i != ref_idx and v is not None and ref is not None else None, label)
                 for i, v in enumerate(values)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
