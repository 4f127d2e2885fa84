"""User-given class names (``--class-names``) for datasets whose files carry only indices.

A dataset's own names (folder names, ``class_0``...) stay its identity; the user's names replace
them in the model's sidecar (``meta["class_names"]``), reports, model card and package. The sidecar
also records the names they replaced (``meta["dataset"]["source_class_names"]``) so every later
command that reloads the dataset applies the same renaming (``apply_recorded_names``).
"""

from __future__ import annotations

from ..errors import DataError


def parse_class_names(text: str | None) -> list[str] | None:
    """``"normal, pneumonia"`` → ``["normal", "pneumonia"]``; None for None/empty. DataError on blanks or repeats."""
    if text is None or not text.strip():
        return None
    names = [n.strip() for n in text.split(",")]
    if any(not n for n in names):
        raise DataError(f"--class-names has an empty name in {text!r} (comma-separated, e.g. normal,pneumonia)")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DataError(f"--class-names repeats {', '.join(repeated)}")
    if len(names) < 2:
        raise DataError(f"--class-names needs at least two classes, got {names}")
    return names


def rename_classes(ds, names: list[str] | None) -> list[str] | None:
    """Give ``ds`` the user's class names in index order; returns the names they replaced (None if none given)."""
    if names is None:
        return None
    if len(names) != ds.num_classes:
        raise DataError(f"--class-names gives {len(names)} names but dataset {ds.name} has {ds.num_classes} "
                        f"classes ({', '.join(ds.class_names)}, in label order)")
    source = list(ds.class_names)
    if sorted(names) == sorted(source) and names != source:
        # the same names in another order would silently swap labels: outputs follow the dataset's order
        raise DataError(f"--class-names lists dataset {ds.name}'s classes in another order; its label order is "
                        f"{', '.join(source)} (a model's outputs must follow it)")
    ds.class_names = list(names)
    return source


def apply_recorded_names(ds, meta: dict) -> None:
    """Rename ``ds`` as the checkpoint's dataset was renamed, when ``ds`` still has the replaced names."""
    source = (meta.get("dataset") or {}).get("source_class_names")
    names = meta.get("class_names")
    if source and names and list(ds.class_names) == list(source):
        ds.class_names = list(names)
