"""Tiny image folders for the bring-your-own-model, DICOM and predict tests (built per test, never shipped)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("0", "1")  # folder names that carry only indices, as many exported datasets do


def write_png_folder(root: Path, per_class: int = 10, size: int = 32, seed: int = 0) -> Path:
    """``root/<0|1>/*.png`` grey images whose classes differ in brightness (flat layout: splits are cut)."""
    rng = np.random.default_rng(seed)
    for label, cls in enumerate(CLASSES):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = np.clip(rng.integers(0, 100, (size, size)) + 120 * label, 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / cls / f"img{i:02d}.png")
    return root
