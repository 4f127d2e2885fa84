"""Batches of preprocessed tensors straight from the in-memory arrays (no worker processes needed)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from ..errors import DataError
from .dataset import Dataset
from .transforms import Augment, Preprocess


class Loader:
    """Iterable over (x float32 NCHW, y int64) batches; ``len()`` is the number of batches.

    Each pass over a shuffled loader uses a new order derived from (seed, epoch), so a run is
    reproducible end to end; ``set_epoch`` pins the pass explicitly.
    """

    def __init__(self, ds: Dataset, split: str, preprocess: Preprocess, batch_size: int = 64, *,
                 train: bool = False, shuffle: bool | None = None, seed: int = 0,
                 indices: np.ndarray | None = None, augment: Augment | bool | None = None,
                 drop_last: bool | None = None) -> None:
        if batch_size < 1:
            raise DataError(f"batch size must be positive, got {batch_size}")
        data = ds.split(split)
        self.images, self.labels = data.images, data.labels
        n_all = len(self.labels)
        if indices is None:
            self.indices = np.arange(n_all)
        else:
            self.indices = np.asarray(indices, dtype=np.int64).reshape(-1)
            if self.indices.size and (self.indices.min() < -n_all or self.indices.max() >= n_all):
                raise DataError(f"loader indices out of range for split {split} of {n_all} images")
        self.preprocess = preprocess
        self.batch_size = int(batch_size)
        self.train = train
        self.shuffle = train if shuffle is None else shuffle
        # Augment only training batches unless told otherwise; `True` means the default light jitter.
        if augment is None:
            augment = train
        self.augment = Augment() if augment is True else (augment or None)
        # BatchNorm cannot train on a final batch of one; drop the ragged tail only when a full batch exists.
        self.drop_last = (train and len(self.indices) > self.batch_size) if drop_last is None else drop_last
        self.seed = int(seed)
        self.epoch = 0

    @property
    def n(self) -> int:
        return len(self.indices)

    def __len__(self) -> int:
        full, rest = divmod(len(self.indices), self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.indices
        epoch = self.epoch
        self.epoch += 1
        if self.shuffle:
            order = order[np.random.default_rng([self.seed, epoch]).permutation(len(order))]
        gen = None
        if self.augment is not None:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            x = self.preprocess(self.images[idx], augment=self.augment, generator=gen)
            yield x, torch.from_numpy(self.labels[idx].astype(np.int64))


def make_loader(ds: Dataset, split: str, preprocess: Preprocess, batch_size: int = 64, *, train: bool = False,
                shuffle: bool | None = None, seed: int = 0, indices: np.ndarray | None = None,
                augment: Augment | bool | None = None, drop_last: bool | None = None) -> Loader:
    """Batches of ``split``; ``train=True`` shuffles, augments and drops a ragged last batch by default."""
    return Loader(ds, split, preprocess, batch_size, train=train, shuffle=shuffle, seed=seed, indices=indices,
                  augment=augment, drop_last=drop_last)
