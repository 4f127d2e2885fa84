"""Image folders: ``root/{train,val,test}/<class>/*`` or ``root/<class>/*`` (PNG, JPEG, BMP, TIFF).

Images are decoded once (threaded; PIL releases the GIL), optionally shrunk to ``load_size`` while
loading so a 224 px set stays small in memory, and cached as an uncompressed .npz keyed by the
dataset fingerprint, so the second load only re-hashes the files and reads one array file.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .. import settings
from ..atomic import atomic_file
from ..errors import DataError, OutputError
from .dataset import Dataset, Split, stratified_cut
from .fingerprint import fingerprint_files
from .labels import folder_classes
from .resize import resize_image
from .splits import VAL_FROM_TRAIN, no_val_to_enlarge

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm"}  # .dcm: see dicom.py
SPLIT_ALIASES = {"train": ("train", "training"), "val": ("val", "valid", "validation"), "test": ("test", "testing")}
# A flat folder (no split sub-folders) keeps this fraction of every class for testing.
TEST_FRACTION = 0.2
# RGB files whose channels differ by at most this much are grey images saved as RGB (typical of JPEG X-rays).
GREY_TOLERANCE = 2
# Show a progress bar from this many files on; small folders load in a blink.
PROGRESS_MIN_FILES = 200
CACHE_VERSION = 1


@dataclass(frozen=True)
class Entry:
    rel: str  # path relative to the root, with forward slashes (what the fingerprint hashes)
    split: str | None
    cls: str


def _visible(p: Path) -> bool:
    return not p.name.startswith((".", "_"))


def _images_under(class_dir: Path) -> list[Path]:
    return sorted(p for p in class_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS
                  and not any(part.startswith((".", "_")) for part in p.relative_to(class_dir).parts))


def scan(root: Path, allow_missing_class: bool = False) -> tuple[str, list[Entry], list[str], list[str]]:
    """(layout, entries sorted by path, class names, empty class folders) for an image folder.

    Train's class folders are the classes (see ``labels.folder_classes`` for val/test and empty ones).
    """
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a directory")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and _visible(p))
    split_dirs: dict[str, Path] = {}
    for d in subdirs:
        for split, aliases in SPLIT_ALIASES.items():
            if d.name.lower() in aliases and split not in split_dirs:
                split_dirs[split] = d
    entries: list[Entry] = []
    counts: dict[str | None, dict[str, int]] = {}
    if split_dirs:
        layout = "splits"
        if "train" not in split_dirs:
            raise DataError(f"image folder {root} has {', '.join(d.name for d in split_dirs.values())} "
                            "folders but no train folder")
        folders = [(split, cdir) for split, sdir in split_dirs.items()
                   for cdir in sorted(p for p in sdir.iterdir() if p.is_dir() and _visible(p))]
    else:
        layout = "flat"
        folders = [(None, cdir) for cdir in subdirs]
    for split, cdir in folders:
        found = [Entry(f.relative_to(root).as_posix(), split, cdir.name) for f in _images_under(cdir)]
        counts.setdefault(split, {})[cdir.name] = len(found)
        entries += found
    if not entries:
        raise DataError(f"no images found in {root}: expected {root}/<class>/*.png|jpg or "
                        f"{root}/{{train,val,test}}/<class>/*.png|jpg")
    if layout == "splits" and not any(e.split == "train" for e in entries):
        raise DataError(f"image folder {root}: the train folder holds no images")
    classes, empty = folder_classes(counts, str(root), allow_missing_class)
    if len(classes) < 2:
        raise DataError(f"image folder {root} has a single class ({classes[0]}); classification needs at "
                        "least two class folders")
    entries.sort(key=lambda e: e.rel)
    return layout, entries, classes, empty


def assign_splits(layout: str, entries: Sequence[Entry], classes: list[str], val_fraction: float,
                  seed: int, val_from_train: float = 0.0) -> tuple[dict[str, np.ndarray], dict]:
    """Indices into ``entries`` per split, plus the split parameters that the fingerprint must cover."""
    labels = np.array([classes.index(e.cls) for e in entries], dtype=np.int64)
    by_split = {s: np.array([i for i, e in enumerate(entries) if e.split == s], dtype=np.int64)
                for s in ("train", "val", "test")}
    params: dict = {"layout": layout}
    if layout == "flat":
        by_split["train"] = np.arange(len(entries))
    if not len(by_split["test"]):
        keep, cut = stratified_cut(labels[by_split["train"]], TEST_FRACTION, seed)
        by_split["test"], by_split["train"] = by_split["train"][cut], by_split["train"][keep]
        params["test_cut_from_train"] = {"fraction": TEST_FRACTION, "seed": seed}
    if len(by_split["val"]) and val_from_train:  # recorded only when set: earlier fingerprints are unchanged
        keep, cut = stratified_cut(labels[by_split["train"]], val_from_train, seed)
        by_split["val"] = np.concatenate([by_split["val"], by_split["train"][cut]])
        by_split["train"] = by_split["train"][keep]
        params[VAL_FROM_TRAIN] = {"fraction": val_from_train, "seed": seed}
    elif val_from_train:
        raise no_val_to_enlarge(f"image folder ({layout} layout)", val_fraction)
    if not len(by_split["val"]):
        keep, cut = stratified_cut(labels[by_split["train"]], val_fraction, seed)
        by_split["val"], by_split["train"] = by_split["train"][cut], by_split["train"][keep]
        params["val_cut_from_train"] = {"fraction": val_fraction, "seed": seed}
    return by_split, params


def _decode(path: Path, data: bytes, load_size: int | None) -> np.ndarray:
    """(H,W) grey or (H,W,3) colour uint8; a one-line DataError naming the file if it cannot be read."""
    if path.suffix.lower() == ".dcm":
        from .dicom import decode_dicom

        pixels = decode_dicom(path, data)
        return np.asarray(resize_image(Image.fromarray(pixels), load_size)) if load_size else pixels
    try:
        with Image.open(io.BytesIO(data)) as im:
            if load_size and im.format == "JPEG":
                # Let libjpeg decode at a reduced scale (still >= load_size): far less work for big JPEGs.
                im.draft(im.mode, (load_size, load_size))
            im.load()
            if im.mode in ("I;16", "I;16B", "I", "F"):
                arr = np.asarray(im, dtype=np.float64)
                scale = 255.0 / 65535.0 if arr.max() > 255 else 1.0
                im2 = Image.fromarray(np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8))
            elif im.mode in ("1", "L", "LA"):
                im2 = im.convert("L")
            else:
                im2 = im.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"corrupt or unreadable image {path}: {exc}".replace("\n", " ")) from None
    if im2.mode == "RGB":
        rgb = np.asarray(im2)
        spread = rgb.max(axis=-1).astype(np.int16) - rgb.min(axis=-1)
        if spread.max(initial=0) <= GREY_TOLERANCE:
            im2 = Image.fromarray(rgb[..., 0] if not spread.any() else
                                  np.rint(rgb.mean(axis=-1)).astype(np.uint8))
    if load_size:
        im2 = resize_image(im2, load_size)
    return np.asarray(im2)


def read_image(path: Path, load_size: int | None = None) -> np.ndarray:
    """One file decoded exactly as ``load_folder`` decodes it (``medprune predict`` uses this)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read image {path}: {exc.strerror or exc}") from None
    return _decode(Path(path), data, load_size)


def _progress(total: int, show: bool | None):
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    enabled = total >= PROGRESS_MIN_FILES if show is None else show
    return Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TaskProgressColumn(), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                    console=Console(stderr=True), disable=not enabled)


def _parallel(fn: Callable, items: Sequence, progress, description: str) -> list:
    task = progress.add_task(description, total=len(items))
    workers = max(1, min(8, (os.cpu_count() or 1) * 2))
    ex = ThreadPoolExecutor(max_workers=workers)
    out = []
    try:
        for result in ex.map(fn, items):
            out.append(result)
            progress.advance(task)
    finally:
        ex.shutdown(wait=True, cancel_futures=True)
    return out


def _cache_path(fingerprint: str) -> Path | None:
    try:
        return settings.cache_dir() / "datasets" / f"{fingerprint}.v{CACHE_VERSION}.npz"
    except OutputError:
        return None  # no usable cache folder only costs speed


def _read_cache(path: Path, classes: list[str]) -> tuple[dict[str, Split], int] | None:
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            if list(npz["class_names"]) != classes:
                return None
            splits = {s: Split(npz[f"{s}_images"], npz[f"{s}_labels"].astype(np.int64))
                      for s in ("train", "val", "test")}
            return splits, int(npz["channels"])
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
        return None  # a damaged cache is rebuilt, never trusted


def _write_cache(path: Path, splits: dict[str, Split], classes: list[str], channels: int) -> None:
    arrays = {"class_names": np.array(classes), "channels": np.array(channels)}
    for s, sp in splits.items():
        arrays[f"{s}_images"], arrays[f"{s}_labels"] = sp.images, sp.labels
    try:
        with atomic_file(path) as fh:
            np.savez(fh, **arrays)
    except (OSError, OutputError):
        pass  # a read-only or full cache directory only costs speed


def load_folder(root: Path, *, name: str | None = None, load_size: int | None = None, val_fraction: float = 0.1,
                val_from_train: float = 0.0, seed: int = 0, cache: bool = True, progress: bool | None = None,
                allow_missing_class: bool = False) -> Dataset:
    layout, entries, classes, empty = scan(root, allow_missing_class)
    indices, params = assign_splits(layout, entries, classes, val_fraction, seed, val_from_train)
    if empty:  # an allowed empty class changes the class list, so the fingerprint must see it
        params["empty_class_folders"] = empty
    if load_size:
        params["load_size"] = int(load_size)
    if any(e.rel.lower().endswith(".dcm") for e in entries):  # DICOM pixels depend on the display pipeline
        from .dicom import PIPELINE_VERSION

        params["dicom_pipeline"] = PIPELINE_VERSION

    files = [root / e.rel for e in entries]
    with _progress(len(files), progress) as bar:
        def digest(path: Path) -> str:
            try:
                return hashlib.sha256(path.read_bytes()).hexdigest()
            except OSError as exc:
                raise DataError(f"cannot read image {path}: {exc.strerror or exc}") from None

        digests = _parallel(digest, files, bar, f"hashing {root.name}")
        fingerprint = fingerprint_files(zip((e.rel for e in entries), digests, strict=True), params)
        cpath = _cache_path(fingerprint) if cache else None
        cached = _read_cache(cpath, classes) if cpath is not None else None
        if cached is not None:
            splits, channels = cached
            params["cache"] = str(cpath)
        else:
            decoded = _parallel(lambda p: _decode(p, p.read_bytes(), load_size), files, bar,
                                f"decoding {root.name}" + (f" at {load_size}px" if load_size else ""))
            shapes = {a.shape[:2] for a in decoded}
            if len(shapes) > 1:
                (a, b) = sorted(shapes)[:2]
                raise DataError(f"images in {root} have different sizes ({a[0]}x{a[1]}, {b[0]}x{b[1]}, ...); "
                                "pass load_size to resize them while loading")
            channels = 3 if any(a.ndim == 3 for a in decoded) else 1
            h, w = next(iter(shapes))
            images = np.empty((len(decoded), h, w, channels), dtype=np.uint8)
            for i, a in enumerate(decoded):
                images[i] = a[..., None] if a.ndim == 2 else a
            del decoded
            labels = np.array([classes.index(e.cls) for e in entries], dtype=np.int64)
            splits = {s: Split(images[idx], labels[idx]) for s, idx in indices.items()}
            if cpath is not None:
                _write_cache(cpath, splits, classes, channels)
    params.pop("cache", None)
    return Dataset(name=name or root.name, source=str(root), class_names=classes, channels=channels,
                   splits=splits, fingerprint=fingerprint, params=params)
