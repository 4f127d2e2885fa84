"""Reference samples: which N training images per class the criteria explain.

* ``confidence`` — the N images the model classifies correctly with the highest true-class
  probability (Yeom et al. 2021 use the most confidently correct references). Classes with fewer than
  N correct images are topped up with the highest true-class probabilities, with a warning.
* ``random`` — N images per class drawn with a seeded generator.
* ``clustering`` — k-means (k = N, seeded, fixed n_init) on the penultimate features (timm
  ``forward_features`` + ``forward_head(pre_logits=True)``) of each class; the image nearest each
  centroid represents it, so the references cover the modes of the class, not only its easy core.

Indices returned are positions in ``ds.split(split)``, grouped by class and sorted inside a class.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from .errors import ConfigError

STRATEGIES = ("confidence", "random", "clustering")
KMEANS_N_INIT = 10


class SamplingWarning(UserWarning):
    """A class could not supply what was asked (too few images or too few correct predictions)."""


def _check(strategy: str, n_per_class: int, counts: np.ndarray, class_names: list[str]) -> None:
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown sampling strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
    if not isinstance(n_per_class, (int, np.integer)) or n_per_class < 1:
        raise ConfigError(f"--n-per-class must be a positive integer, got {n_per_class!r}")
    present = counts[counts > 0]
    if present.size == 0:
        raise ConfigError("the split has no images to sample references from")
    if n_per_class > present.max():
        raise ConfigError(
            f"--n-per-class {n_per_class} is larger than every class of the split "
            f"(largest has {int(present.max())} images)"
        )
    for name, count in zip(class_names, counts, strict=True):
        if count < n_per_class:
            warnings.warn(
                f"class {name!r} has only {int(count)} images; using all of them instead of {n_per_class}",
                SamplingWarning,
                stacklevel=3,
            )


def model_outputs(
    model: nn.Module,
    images: np.ndarray,
    preprocess: Callable[[np.ndarray], torch.Tensor],
    *,
    features: bool,
    batch_size: int = 64,
    device: str = "cpu",
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Softmax probabilities and (optionally) penultimate features for uint8 NHWC ``images``."""
    model = model.eval().to(device)
    probs, feats = [], []
    use_timm = hasattr(model, "forward_features") and hasattr(model, "forward_head")
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = preprocess(images[start : start + batch_size]).to(device)
            if features and use_timm:
                f = model.forward_features(x)
                logits = model.forward_head(f)
                feats.append(model.forward_head(f, pre_logits=True).flatten(1).float().cpu())
            elif features:
                logits, pre = _logits_and_classifier_input(model, x)
                feats.append(pre.flatten(1).float().cpu())
            else:
                logits = model(x)
            probs.append(torch.softmax(logits.float(), 1).cpu())
            if progress is not None:
                progress(len(x))
    p = torch.cat(probs).numpy() if probs else np.zeros((0, 0), np.float32)
    return p, (torch.cat(feats).numpy() if features and feats else None)


def _logits_and_classifier_input(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-timm fallback: the input of the last Linear layer stands for the penultimate features."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"{type(model).__name__} has no classifier to read penultimate features from")
    seen: list[torch.Tensor] = []
    handle = linears[-1].register_forward_pre_hook(lambda _m, inp: seen.append(inp[0]))
    try:
        logits = model(x)
    finally:
        handle.remove()
    return logits, seen[-1]


def _confidence(probs: np.ndarray, labels: np.ndarray, idx: np.ndarray, n: int, name: str) -> np.ndarray:
    true_prob = probs[idx, labels[idx]]
    correct = probs[idx].argmax(1) == labels[idx]
    # stable sort on -prob: ties keep dataset order, so the choice is reproducible
    order = np.argsort(-true_prob, kind="stable")
    picked = [i for i in order if correct[i]][:n]
    if len(picked) < min(n, len(idx)):
        warnings.warn(
            f"class {name!r}: only {len(picked)} correctly classified images; topping up with the highest "
            f"true-class probabilities among misclassified ones",
            SamplingWarning,
            stacklevel=3,
        )
        picked += [i for i in order if not correct[i]][: n - len(picked)]
    return idx[np.asarray(picked, dtype=np.int64)]


def _clustering(feats: np.ndarray, idx: np.ndarray, n: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    x = feats[idx].astype(np.float64)
    if len(idx) <= n:
        return idx
    km = KMeans(n_clusters=n, n_init=KMEANS_N_INIT, random_state=seed).fit(x)
    dist = ((x[:, None, :] - km.cluster_centers_[None, :, :]) ** 2).sum(-1)  # (samples, centroids)
    chosen: list[int] = []
    for c in range(n):
        # nearest sample not already representing another centroid (duplicate images exist)
        for i in np.argsort(dist[:, c], kind="stable"):
            if i not in chosen:
                chosen.append(int(i))
                break
    return idx[np.asarray(chosen, dtype=np.int64)]


def select_reference(
    model: nn.Module,
    ds,
    preprocess: Callable[[np.ndarray], torch.Tensor],
    n_per_class: int = 10,
    strategy: str = "confidence",
    seed: int = 0,
    split: str = "train",
    device: str = "cpu",
    *,
    pool_per_class: int | None = None,
    batch_size: int = 64,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Indices (into ``ds.split(split)``) of up to ``n_per_class`` reference images for every class.

    ``pool_per_class`` caps how many images per class (a seeded random subset) the model has to
    score for ``confidence``/``clustering`` — the full train split of a large model is slow on CPU.
    ``progress`` is called with the number of images each scored batch held.
    """
    data = ds.split(split)
    labels = np.asarray(data.labels, dtype=np.int64)
    num_classes = len(ds.class_names)
    counts = np.bincount(labels, minlength=num_classes)
    _check(strategy, n_per_class, counts, list(ds.class_names))
    if pool_per_class is not None and pool_per_class < n_per_class:
        raise ConfigError(f"pool_per_class ({pool_per_class}) must be >= n_per_class ({n_per_class})")

    rng = np.random.default_rng(seed)
    per_class = [np.flatnonzero(labels == c) for c in range(num_classes)]
    if strategy == "random":
        picks = [np.sort(rng.choice(idx, size=min(n_per_class, len(idx)), replace=False)) for idx in per_class]
        return np.concatenate(picks).astype(np.int64)

    if pool_per_class is not None:
        per_class = [
            np.sort(rng.choice(idx, size=pool_per_class, replace=False)) if len(idx) > pool_per_class else idx
            for idx in per_class
        ]
    pool = np.concatenate(per_class)
    probs_pool, feats_pool = model_outputs(
        model, data.images[pool], preprocess, features=strategy == "clustering",
        batch_size=batch_size, device=device, progress=progress,
    )
    # scatter back to split positions so the per-class helpers index one array
    probs = np.zeros((len(labels), probs_pool.shape[1]), dtype=np.float32)
    probs[pool] = probs_pool
    feats = None
    if feats_pool is not None:
        feats = np.zeros((len(labels), feats_pool.shape[1]), dtype=np.float32)
        feats[pool] = feats_pool

    picks = []
    for c, idx in enumerate(per_class):
        if len(idx) == 0:
            continue
        if strategy == "confidence":
            chosen = _confidence(probs, labels, idx, n_per_class, ds.class_names[c])
        else:
            chosen = _clustering(feats, idx, n_per_class, seed)
        picks.append(np.sort(chosen))
    return np.concatenate(picks).astype(np.int64)
