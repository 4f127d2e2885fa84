"""Helpers of the bring-your-own-model, DICOM and predict tests: tiny image folders (built per test,
never shipped) and in-process CLI runs."""

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


def run_cli(argv, capsys) -> tuple[int, str, str]:
    """``medprune ARGV`` in-process: (exit code, stdout, stderr)."""
    import pytest

    from toolchain.cli import main

    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    out = capsys.readouterr()
    return exc.value.code or 0, out.out, out.err


def one_error_line(err: str) -> str:
    """The single ``medprune: error:`` line of ``err`` (asserting there is exactly one and no traceback)."""
    lines = [line for line in err.splitlines() if line.startswith("medprune: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]
