"""Model input preprocessing (stored with every checkpoint) and light training augmentation."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError


@dataclass(frozen=True)
class Augment:
    """Small geometric jitter only: X-rays and ultrasound have a fixed orientation and laterality,
    so there is no flip; zoom/aspect/rotation/shift stay small so lesions are not cropped away."""

    scale: tuple[float, float] = (0.85, 1.0)  # area of the random-resized crop
    ratio: tuple[float, float] = (0.9, 1.1)
    degrees: float = 8.0
    translate: float = 0.05  # fraction of the image side


@dataclass
class Preprocess:
    """uint8 NHWC → float32 NCHW: channel match, antialiased resize to ``img_size``, normalise.

    ``mean``/``std`` are per model input channel in [0,1] units, computed on the train split.
    """

    img_size: int
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.in_chans not in (1, 3):
            raise ConfigError(f"in_chans must be 1 or 3, got {self.in_chans}")
        self.mean = tuple(float(m) for m in np.broadcast_to(self.mean, (self.in_chans,)))
        self.std = tuple(float(s) for s in np.broadcast_to(self.std, (self.in_chans,)))
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"preprocess std must be positive, got {self.std}")

    @classmethod
    def for_dataset(cls, ds, img_size: int, in_chans: int) -> Preprocess:
        mean, std = channel_stats(ds.split("train").images, in_chans)
        return cls(int(img_size), int(in_chans), mean, std)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        return cls(int(d["img_size"]), int(d["in_chans"]), tuple(d["mean"]), tuple(d["std"]))

    def __call__(self, images, *, augment: Augment | bool | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Images as (N,H,W,C), (H,W,C) or (N,H,W) uint8; ``augment`` only for training batches."""
        x = torch.as_tensor(np.asarray(images))
        if x.ndim == 3 and x.shape[-1] not in (1, 3):
            x = x[..., None]  # (N,H,W) grey
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[-1] not in (1, 3):
            raise ValueError(f"expected uint8 (N,H,W,C) images with C in (1,3), got shape {tuple(x.shape)}")
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        if x.shape[1] == 3 and self.in_chans == 1:
            x = x.mean(dim=1, keepdim=True)
        if x.shape[-2:] != (self.img_size, self.img_size):
            x = F.interpolate(x, size=(self.img_size, self.img_size), mode="bilinear", antialias=True,
                              align_corners=False)
        if augment:
            x = random_affine(x, Augment() if augment is True else augment, generator)
        if x.shape[1] == 1 and self.in_chans == 3:
            x = x.expand(-1, 3, -1, -1)
        mean = torch.tensor(self.mean, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype).view(1, -1, 1, 1)
        return ((x - mean) / std).contiguous()


def channel_stats(images: np.ndarray, in_chans: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std in [0,1] of uint8 NHWC images as the model will see them (chunked, float64)."""
    c = images.shape[-1]
    chunk = max(1, (1 << 22) // max(1, int(np.prod(images.shape[1:]))))  # ~32 MB of float64 at a time
    total = np.zeros(c)
    total_sq = np.zeros(c)
    count = 0
    for start in range(0, len(images), chunk):
        block = images[start:start + chunk].astype(np.float64) / 255.0
        total += block.sum(axis=(0, 1, 2))
        total_sq += np.square(block).sum(axis=(0, 1, 2))
        count += block.shape[0] * block.shape[1] * block.shape[2]
    mean = total / max(count, 1)
    var = np.maximum(total_sq / max(count, 1) - mean**2, 0.0)
    if c == 3 and in_chans == 1:
        # std of the channel mean needs the cross-channel covariance; recompute exactly on the grey image.
        grey = [images[s:s + chunk].astype(np.float64).mean(axis=-1) / 255.0 for s in range(0, len(images), chunk)]
        flat_mean = sum(g.sum() for g in grey) / max(count, 1)
        flat_var = max(sum(np.square(g).sum() for g in grey) / max(count, 1) - flat_mean**2, 0.0)
        mean, var = np.array([flat_mean]), np.array([flat_var])
    elif c == 1 and in_chans == 3:
        mean, var = np.repeat(mean, 3), np.repeat(var, 3)
    std = np.sqrt(var)
    std = np.where(std < 1e-6, 1.0, std)  # a constant channel must not blow up to inf
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def random_affine(x: torch.Tensor, aug: Augment, generator: torch.Generator | None) -> torch.Tensor:
    """Per-sample random-resized-crop + rotation + shift as one bilinear resample (same seed → same batch)."""
    n = x.shape[0]

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=generator)

    area = uniform(*aug.scale)
    log_r = uniform(math.log(aug.ratio[0]), math.log(aug.ratio[1]))
    # affine_grid maps output to input coordinates: a factor < 1 samples a smaller region (zoom in).
    sx = torch.sqrt(area * torch.exp(log_r)).clamp(max=1.0)
    sy = torch.sqrt(area / torch.exp(log_r)).clamp(max=1.0)
    angle = uniform(-aug.degrees, aug.degrees) * (math.pi / 180.0)
    tx = uniform(-1, 1) * ((1 - sx) + 2 * aug.translate)
    ty = uniform(-1, 1) * ((1 - sy) + 2 * aug.translate)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([
        torch.stack([sx * cos, -sy * sin, tx], dim=1),
        torch.stack([sx * sin, sy * cos, ty], dim=1),
    ], dim=1).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
