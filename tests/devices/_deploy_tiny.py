"""A tiny trained checkpoint shared by the deploy test files (trained once per pytest session)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
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


# few reference images, few fidelity images, few bench runs
LEAN = ("--n-per-class", "3", "--pool-per-class", "12", "--fidelity-images", "4", "--bench-runs", "5")


def deploy_args(tiny: Tiny, out: Path, cache: Path, *extra: str) -> list[str]:
    """`medprune deploy` argv for the tiny checkpoint with lean settings (few images, few bench runs)."""
    return ["deploy", "--checkpoint", str(tiny.ckpt), "--data", str(tiny.npz), "--out", str(out),
            "--cache", str(cache), *LEAN, *extra]


@contextlib.contextmanager
def guard_test_split() -> Iterator[list[str]]:
    """Every dataset's test split raises outside deploy's report phase; yields the reads ("early" for each
    refused one, recorded too in case a caller swallows the error)."""
    from devices.deploy import holdout
    from toolchain.data.dataset import Dataset

    reads: list[str] = []
    original = Dataset.split

    def split(self, name):
        if name == "test":
            if not holdout.report_open():
                reads.append("early")
                raise AssertionError("test split read before the final report phase")
            reads.append(name)
        return original(self, name)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Dataset, "split", split)
        yield reads


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
