"""What the training images looked like, so a prediction can warn about inputs far outside it.

``input_profile(ds)`` goes into the checkpoint sidecar (``meta["input_profile"]``) when a model is
trained or imported with data; ``input_warnings`` compares one decoded input image against it.
"Far outside" is deliberately coarse (a warning, never a refusal): side under half of the training
side (the model sees upsampled blur) or over 8 times it (small findings vanish in the downsampling),
another aspect ratio when the training images all had one size, colour vs grey, and a mean brightness
beyond the 1st-99th percentile range of training images' means by more than half that range.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .folder import GREY_TOLERANCE  # RGB channels within this many levels count as grey

SMALL_FACTOR, LARGE_FACTOR, ASPECT_FACTOR = 0.5, 8.0, 1.5
MEAN_MARGIN = 0.5  # of the training 1-99 % range of image means
CHUNK = 512


def input_profile(ds) -> dict:
    """JSON-ready profile of ``ds``'s train split (uint8 NHWC as loaded, i.e. after ``load_size``)."""
    images = ds.split("train").images
    means = np.concatenate([images[s:s + CHUNK].reshape(len(images[s:s + CHUNK]), -1).mean(axis=1) / 255.0
                            for s in range(0, len(images), CHUNK)]) if len(images) else np.zeros(1)
    p01, p50, p99 = (float(v) for v in np.percentile(means, [1, 50, 99]))
    return {"image_size": [int(images.shape[1]), int(images.shape[2])], "channels": int(ds.channels),
            "load_size": (ds.params or {}).get("load_size"),
            "image_mean_p01": round(p01, 4), "image_mean_p50": round(p50, 4), "image_mean_p99": round(p99, 4),
            "n": int(len(images))}


def is_colour(image: np.ndarray) -> bool:
    if image.ndim == 2 or image.shape[-1] == 1:
        return False
    spread = image.max(axis=-1).astype(np.int16) - image.min(axis=-1)
    return bool(spread.max(initial=0) > GREY_TOLERANCE)


def input_warnings(profile: dict | None, image: np.ndarray, raw_size: tuple[int, int]) -> list[str]:
    """Reasons ``image`` (decoded uint8, (H,W) or (H,W,C)) lies far outside ``profile``; [] when it does not.

    ``raw_size`` is the file's own (height, width) before any load-time resize.
    """
    if not profile:
        return []
    out = []
    colour, trained_colour = is_colour(image), int(profile["channels"]) == 3
    if colour != trained_colour:
        out.append(f"{'colour' if colour else 'grey'} image, but the model was trained on "
                   f"{'colour' if trained_colour else 'grey'} images")
    h, w = raw_size
    th, tw = profile["image_size"]
    ref = profile.get("load_size") or min(th, tw)
    if min(h, w) < SMALL_FACTOR * ref:
        out.append(f"image is {h}x{w}, under half the training side ({ref} px): it is upsampled")
    elif max(h, w) > LARGE_FACTOR * ref:
        out.append(f"image is {h}x{w}, over {LARGE_FACTOR:g}x the training side ({ref} px)")
    if not profile.get("load_size"):
        aspect, trained = w / h, tw / th
        if not 1 / ASPECT_FACTOR <= aspect / trained <= ASPECT_FACTOR:
            out.append(f"aspect ratio {aspect:.2f} (width/height) differs from the training images' {trained:.2f}")
    mean = float(np.asarray(image, dtype=np.float64).mean() / 255.0)
    lo, hi = float(profile["image_mean_p01"]), float(profile["image_mean_p99"])
    margin = MEAN_MARGIN * max(hi - lo, 0.05)
    if not lo - margin <= mean <= hi + margin:
        out.append(f"mean intensity {mean:.2f} lies far outside the training images' {lo:.2f}-{hi:.2f} "
                   "(1st-99th percentile): wrong windowing or inverted?")
    return out


def file_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image file from its header, before any load-time resize."""
    from PIL import Image

    from ..errors import DataError
    from .dicom import dicom_size

    if Path(path).suffix.lower() == ".dcm":
        return dicom_size(path)
    try:
        with Image.open(path) as im:
            return im.size[1], im.size[0]
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"corrupt or unreadable image {path}: {exc}".replace("\n", " ")) from None
