"""What the training images looked like, so a prediction can warn about inputs far outside it.

``input_profile(ds)`` goes into the checkpoint sidecar (``meta["input_profile"]``) when a model is
trained or imported with data; ``input_warnings`` compares one decoded input image against it.
"Far outside" is deliberately coarse (a warning, never a refusal): size, colour vs grey and mean
brightness against this profile; the rule lives in the package template ``export/templates/_preprocess.py``
so the bedside predict.py and the toolchain warn alike.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

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


def input_warnings(profile: dict | None, image: np.ndarray, raw_size: tuple[int, int]) -> list[str]:
    """Reasons ``image`` (decoded uint8, (H,W) or (H,W,C)) lies far outside ``profile``; [] when it does not.

    ``raw_size`` is the file's own (height, width) before any load-time resize. One home for the rule:
    the packages' ``_preprocess.py`` template, which the bedside predict.py runs too.
    """
    from export.package_verify import image_input_template

    return image_input_template().input_warnings(profile, image, raw_size)


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
