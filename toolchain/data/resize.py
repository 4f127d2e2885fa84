"""Load-time resizing of uint8 images (antialiased, like MedMNIST's own downsampling)."""

from __future__ import annotations

import numpy as np
from PIL import Image


def resize_image(image: Image.Image, size: int) -> Image.Image:
    if image.size == (size, size):
        return image
    # PIL's bilinear filter widens its support when shrinking, so downscaling is antialiased.
    return image.resize((size, size), Image.Resampling.BILINEAR)


def resize_batch(images: np.ndarray, size: int) -> np.ndarray:
    """(N,H,W,C) uint8 → (N,size,size,C) uint8."""
    if images.shape[1:3] == (size, size):
        return images
    out = np.empty((len(images), size, size, images.shape[-1]), dtype=np.uint8)
    for i, img in enumerate(images):
        pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
        out[i] = np.asarray(resize_image(pil, size)).reshape(size, size, -1)
    return out
