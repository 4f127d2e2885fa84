"""Refuse pickled files before anything reads them: unpickling runs whatever code the file names.

One helper for every entry point (checkpoints, ``medprune bench``, packages), so the user sees the same
one-line refusal everywhere. Detection looks at the name and at the bytes, because a renamed pickle is
still a pickle: the pickle PROTO opcode (protocol 2-5) that ``torch.save``'s legacy format and
``pickle.dump`` start with, and the zip archive with a ``*.pkl`` member that ``torch.save`` writes
since PyTorch 1.6. A valid safetensors header is never mistaken for a pickle.
"""

from __future__ import annotations

import json
import os
import struct
import zipfile
from pathlib import Path

from .errors import CheckpointError, MedpruneError

PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")
_SAFETENSORS_MAX_HEADER = 100 * 2**20  # the safetensors library's own limit


def pickle_reason(path: str | os.PathLike) -> str | None:
    """Why ``path`` is (or claims to be) a pickle, or None. Reads at most the first bytes and the zip index."""
    path = Path(path)
    if path.name.lower().endswith(PICKLE_SUFFIXES):
        return f"{path.suffix} is a pickle format"
    if not path.is_file():
        return None
    with open(path, "rb") as fh:
        head = fh.read(8)
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5 and not _is_safetensors(path, head):
        return "it starts with the pickle PROTO opcode"
    if head[:2] == b"PK" and zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                if any(n.endswith(".pkl") for n in zf.namelist()):
                    return "it is a torch.save zip archive"
        except (zipfile.BadZipFile, OSError):
            return None
    return None


def _is_safetensors(path: Path, head: bytes) -> bool:
    """True when ``head`` is a plausible safetensors header length followed by a JSON object."""
    if len(head) < 8:
        return False
    (n,) = struct.unpack("<Q", head)
    if not 2 <= n <= min(_SAFETENSORS_MAX_HEADER, path.stat().st_size - 8):
        return False
    with open(path, "rb") as fh:
        fh.seek(8)
        text = fh.read(n)
    try:
        return isinstance(json.loads(text), dict)
    except (UnicodeDecodeError, ValueError):
        return False


def refuse_pickle(path: str | os.PathLike, error: type[MedpruneError] = CheckpointError) -> None:
    """Raise ``error`` (one line, exit 2 through the CLI) when ``path`` is a pickle; never opens it as one."""
    reason = pickle_reason(path)
    if reason:
        raise error(f"refusing {Path(path).name}: {reason}, and medprune never unpickles (loading one runs any "
                    "code inside it); use a .safetensors checkpoint with its .json sidecar, or an exported .onnx/.xml")
