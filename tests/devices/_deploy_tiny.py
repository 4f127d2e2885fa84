"""A tiny trained checkpoint shared by the deploy test files (trained once per pytest session)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import write_tiny_npz


@dataclass
class Tiny:
    root: Path
    npz: Path
    ckpt: Path


def tiny_setup(tmp_path_factory) -> Tiny:
    """test_resnet (16 px, 1 channel) trained 3 epochs on the brightness dataset; reused if present."""
    from toolchain.train import TrainConfig, train

    root = tmp_path_factory.getbasetemp() / "medprune_deploy_tiny"
    done = root / "checkpoint.txt"
    npz = root / "tinymnist.npz"
    if done.exists():
        return Tiny(root, npz, Path(done.read_text().strip()))
    root.mkdir(parents=True, exist_ok=True)
    write_tiny_npz(npz, n=(48, 24, 24))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDPRUNE_CACHE", str(root / "cache"))
        weights = train(TrainConfig(model="test_resnet", data=str(npz), img_size=16, epochs=3, batch_size=16,
                                    lr=3e-3, augment=False, patience=0, device="cpu", quiet=True))
    done.write_text(str(weights))
    return Tiny(root, npz, weights)


def deploy_args(tiny: Tiny, out: Path, cache: Path, *extra: str) -> list[str]:
    """`medprune deploy` argv for the tiny checkpoint with lean settings (few images, few bench runs)."""
    return ["deploy", "--checkpoint", str(tiny.ckpt), "--data", str(tiny.npz), "--out", str(out),
            "--cache", str(cache), "--n-per-class", "3", "--pool-per-class", "12", "--fidelity-images", "4",
            "--bench-runs", "5", *extra]


def deploy_json(argv: list[str]) -> dict:
    """Run the CLI in-process with --json and return its summary (module fixtures cannot use capsys)."""
    import contextlib
    import io
    import json

    from toolchain.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit) as exc:
        main([*argv, "--json"])
    assert exc.value.code == 0
    return json.loads(buf.getvalue())
