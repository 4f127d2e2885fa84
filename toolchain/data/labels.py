"""Which labels a dataset has: train decides, the other splits must agree.

A label that occurs in val or test but never in train used to become a class of its own: the model
got an output it never trained and the metrics a class nobody asked for. Now it is an error naming
the label and the split. An empty class folder (or a class id with no train images) is an error too,
because it usually means a copy went wrong; ``allow_missing_class`` keeps such a class (the model
still gets its output, so class indices stay as the folders say) and the fingerprint records it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..errors import DataError

ALLOW_FLAG = "--allow-missing-class"


def _listing(names) -> str:
    names = list(names)
    return ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")


def folder_classes(counts: Mapping[str | None, Mapping[str, int]], root: str,
                   allow_missing_class: bool = False) -> tuple[list[str], list[str]]:
    """``(class names, empty class folders)`` from image counts per split folder and class folder.

    ``counts[None]`` is a flat folder (every class folder is train's); ``counts["train"]`` etc. a
    split layout. Raises DataError for a val/test label train lacks, and for an empty class folder
    unless ``allow_missing_class``.
    """
    train = counts.get("train", counts.get(None, {}))
    for split, classes in counts.items():
        if split in ("train", None):
            continue
        unknown = sorted(c for c, n in classes.items() if n and c not in train)
        if unknown:
            raise DataError(f"{split} label {unknown[0]!r} ({root}/{split}/{unknown[0]}) never occurs in train "
                            f"(train classes: {_listing(sorted(train))}); rename or remove that folder")
    empty = sorted(f"{split}/{c}" if split else c for split, classes in counts.items()
                   for c, n in classes.items() if n == 0)
    if empty and not allow_missing_class:
        raise DataError(f"class folder {root}/{empty[0]} is empty (no images)"
                        f"{f' and {len(empty) - 1} more' if len(empty) > 1 else ''}; add images, remove it, "
                        f"or pass {ALLOW_FLAG} to keep the class without them")
    return sorted(train), empty


def npz_num_classes(labels: Mapping[str, np.ndarray], source: str, allow_missing_class: bool = False,
                    names: list[str] | None = None) -> tuple[int, list[int]]:
    """``(number of classes, class ids without train images)`` for integer labels per split.

    Train's largest label fixes the class count; ``names`` (when known) only make the messages readable.
    """
    train = np.unique(labels["train"])
    k = int(train.max()) + 1 if train.size else 0

    def named(c: int) -> str:
        return f"{c} ({names[c]})" if names and c < len(names) else str(c)

    for split, y in labels.items():
        if split == "train":
            continue
        unknown = np.unique(y)[np.unique(y) >= k]  # ids below k without train images: the check below
        if unknown.size:
            raise DataError(f"{source}: {split} label {named(int(unknown[0]))} never occurs in train "
                            f"(train labels: {_listing(map(str, train.tolist()))})")
    missing = sorted(set(range(k)) - set(train.tolist()))
    if missing and not allow_missing_class:
        seen = [s for s, y in labels.items() if s != "train" and np.isin(missing[0], y)]
        where = f" (it occurs in {', '.join(seen)})" if seen else ""
        raise DataError(f"{source}: class {named(missing[0])} has no train images{where}; fix the labels or pass "
                        f"{ALLOW_FLAG} to keep the class without them")
    return k, missing
