"""Content fingerprints: the same data loaded the same way always hashes the same, anything else differs.

Checkpoints and caches record the fingerprint so a model is never silently evaluated on other data.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

# Bump when the hashed layout changes, so old fingerprints cannot collide with new ones.
VERSION = 1


def _params_bytes(params: Mapping) -> bytes:
    return json.dumps(dict(params), sort_keys=True, separators=(",", ":"), default=str).encode()


def fingerprint_arrays(arrays: Mapping[str, np.ndarray], params: Mapping | None = None) -> str:
    """sha256 over each array's name, dtype, shape and bytes (sorted by name), plus load/split params."""
    h = hashlib.sha256(f"medprune-arrays-v{VERSION}".encode())
    for name in sorted(arrays):
        arr = np.ascontiguousarray(arrays[name])
        h.update(f"\0{name}\0{arr.dtype.str}\0{arr.shape}\0".encode())
        h.update(memoryview(arr).cast("B"))
    h.update(b"\0params\0" + _params_bytes(params or {}))
    return h.hexdigest()


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fingerprint_files(entries: Iterable[tuple[str, str]], params: Mapping | None = None) -> str:
    """sha256 over sorted (relative path, file sha256) pairs plus load/split params."""
    h = hashlib.sha256(f"medprune-files-v{VERSION}".encode())
    for rel, digest in sorted(entries):
        h.update(f"\0{rel}\0{digest}".encode())
    h.update(b"\0params\0" + _params_bytes(params or {}))
    return h.hexdigest()
