"""In-memory datasets: uint8 NHWC images and int64 labels per split, plus what identifies them."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import DataError

SPLITS = ("train", "val", "test")


@dataclass
class Split:
    images: np.ndarray  # uint8 (N, H, W, C)
    labels: np.ndarray  # int64 (N,)

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise ValueError(f"Split images must be uint8 (N,H,W,C), got {self.images.dtype} {self.images.shape}")
        if self.labels.shape != (len(self.images),):
            raise ValueError(f"Split labels must be ({len(self.images)},), got {self.labels.shape}")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> Split:
        indices = np.asarray(indices, dtype=np.int64)
        return Split(self.images[indices], self.labels[indices])

    def class_counts(self, num_classes: int) -> list[int]:
        return np.bincount(self.labels, minlength=num_classes).tolist()


@dataclass
class Dataset:
    name: str
    source: str  # the file or folder it was read from
    class_names: list[str]
    channels: int  # 1 or 3
    splits: dict[str, Split]
    fingerprint: str  # sha256 hex of the data and of how splits were assigned
    params: dict = field(default_factory=dict)  # how it was loaded (load_size, cut splits, ...)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_size(self) -> tuple[int, int]:
        images = self.splits["train"].images
        return int(images.shape[1]), int(images.shape[2])

    def split(self, name: str) -> Split:
        try:
            return self.splits[name]
        except KeyError:
            raise DataError(
                f"unknown split {name!r} for dataset {self.name}: choose one of {', '.join(self.splits)}"
            ) from None

    def describe(self) -> dict:
        """A JSON-ready summary (for `medprune info`, checkpoints and reports)."""
        h, w = self.image_size
        return {
            "name": self.name,
            "source": self.source,
            "fingerprint": self.fingerprint,
            "class_names": list(self.class_names),
            "channels": self.channels,
            "image_size": [h, w],
            "splits": {
                name: {"n": len(s), "per_class": dict(zip(self.class_names, s.class_counts(self.num_classes), strict=True))}
                for name, s in self.splits.items()
            },
            "params": dict(self.params),
        }


# A fraction of train moved into val must leave most of train to learn from (and 0 means "off").
MAX_SPLIT_FRACTION = 0.9


def check_split_fraction(flag: str, value: float) -> float:
    """``value`` as a float in [0, MAX_SPLIT_FRACTION), or a one-line DataError naming ``flag``."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{flag} must be a number in [0, {MAX_SPLIT_FRACTION}), got {value!r}") from None
    if not 0.0 <= value < MAX_SPLIT_FRACTION:
        raise DataError(f"{flag} must be in [0, {MAX_SPLIT_FRACTION}), got {value:g}")
    return value


def stratified_cut(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (keep, cut) so ``cut`` holds ~``fraction`` of every class; same seed, same cut.

    Every class with at least two samples gives at least one to ``cut`` so a small class is never
    missing from a validation split.
    """
    if not 0.0 < fraction < 1.0:
        raise DataError(f"split fraction must be between 0 and 1, got {fraction}")
    rng = np.random.default_rng(seed)
    keep, cut = [], []
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        idx = idx[rng.permutation(len(idx))]
        n_cut = int(round(fraction * len(idx)))
        if len(idx) >= 2:
            n_cut = min(max(n_cut, 1), len(idx) - 1)
        else:
            n_cut = 0
        cut.append(idx[:n_cut])
        keep.append(idx[n_cut:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(cut))
