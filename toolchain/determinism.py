"""Bit-reproducible torch computation: deterministic kernels inside a ``with`` block only.

With the same config, data, seed, torch build and thread count, CPU training gives bit-identical
weights: ``deterministic`` enforces deterministic kernels, and the data loader derives its shuffles
and augmentations from (seed, epoch) without worker processes (``toolchain.data.loader``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def deterministic(device: str = "cpu") -> Iterator[None]:
    """Deterministic kernels and no cuDNN autotuning inside the block; the previous settings after.

    On CPU an op without a deterministic kernel raises (a nondeterministic op cannot slip into
    training unseen); on CUDA it warns, since some backward kernels have no deterministic version.
    """
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    if device != "cpu":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS is deterministic only with it
    torch.use_deterministic_algorithms(True, warn_only=device != "cpu")
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before[2], before[3]
