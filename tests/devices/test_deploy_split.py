"""`medprune deploy --val-from-train / --val-fraction`: the selection split reaches the dense model deploy trains,
is recorded in the package, and a flag that contradicts a given checkpoint's split is refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import write_tiny_npz
from tests.devices._deploy_tiny import deploy_args, deploy_json, tiny_setup
from toolchain.cli import main
from toolchain.errors import ConfigError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_setup(tmp_path_factory)


def _error_line(argv, capsys) -> str:
    """Run the CLI; assert exit 2 with exactly one error line and no traceback; return that line."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("medprune: error:")]
    assert exc.value.code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _train_args(npz: Path, tmp_path: Path, *extra: str) -> list[str]:
    """`medprune deploy` argv that trains its own tiny dense model (no --checkpoint)."""
    return ["deploy", "--model", "test_resnet", "--img-size", "16", "--data", str(npz), "--epochs", "3",
            "--out", str(tmp_path / "dist"), "--cache", str(tmp_path / "cache"), "--n-per-class", "3",
            "--pool-per-class", "12", "--fidelity-images", "4", "--bench-runs", "5", *extra]


@pytest.mark.parametrize("extra,want", [
    ([], {"val_from_train": 0.0, "val_fraction": 0.1}),  # `medprune train`'s defaults
    (["--val-from-train", "0.2"], {"val_from_train": 0.2, "val_fraction": 0.1}),
    (["--val-fraction", "0.25"], {"val_from_train": 0.0, "val_fraction": 0.25}),
])
def test_flags_reach_the_train_config(tmp_path, capsys, monkeypatch, extra, want):
    import toolchain.train as training

    seen = []

    def record(tc, *_a, **_k):
        seen.append(tc)
        raise ConfigError("stopped after the train config was built")

    monkeypatch.setattr(training, "train", record)
    npz = write_tiny_npz(tmp_path / "tinymnist.npz")
    assert "stopped after the train config" in _error_line(_train_args(npz, tmp_path, *extra), capsys)
    assert len(seen) == 1 and {k: getattr(seen[0], k) for k in want} == want


@pytest.mark.parametrize("extra,needle", [
    (["--val-from-train", "0.95"], "--val-from-train must be in [0, 0.9)"),
    (["--val-from-train", "-0.1"], "--val-from-train must be in [0, 0.9)"),
    (["--val-fraction", "0.9"], "--val-fraction must be in [0, 0.9)"),
])
def test_bad_fractions_are_refused_before_training(tmp_path, capsys, extra, needle):
    npz = write_tiny_npz(tmp_path / "tinymnist.npz")
    assert needle in _error_line(_train_args(npz, tmp_path, *extra), capsys)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.safetensors"))


def test_val_from_train_on_data_without_val(tmp_path, capsys):
    import numpy as np

    arrays = dict(np.load(write_tiny_npz(tmp_path / "full.npz")))
    np.savez(tmp_path / "noval.npz", **{k: v for k, v in arrays.items() if not k.startswith("val_")})
    line = _error_line(_train_args(tmp_path / "noval.npz", tmp_path, "--val-from-train", "0.2"), capsys)
    assert "no official val split to enlarge" in line and "--val-fraction" in line


def test_checkpoint_refuses_a_conflicting_split(tiny, tmp_path, capsys):
    # the tiny checkpoint was trained on the official val (nothing moved): 0.2 would put its train images in val
    line = _error_line(deploy_args(tiny, tmp_path / "dist", tmp_path / "cache", "--val-from-train", "0.2"), capsys)
    assert "val_from_train=0 but" in line and "would hold images it trained on" in line
    assert "drop --val-from-train" in line
    assert not (tmp_path / "dist").exists() or not any((tmp_path / "dist").iterdir())


def test_checkpoint_accepts_its_own_split(tiny, tmp_path):
    from devices.deploy import DeployConfig

    base = {"checkpoint": str(tiny.ckpt), "data": str(tiny.npz), "out": str(tmp_path / "dist"),
            "cache": str(tmp_path / "cache")}
    same = DeployConfig(**base, val_from_train=0.0, val_fraction=0.1).resolved()
    unset = DeployConfig(**base).resolved()  # the checkpoint's split is filled in
    assert (same.val_from_train, same.val_fraction) == (unset.val_from_train, unset.val_fraction) == (0.0, 0.1)


def test_manifest_and_card_record_the_split(tmp_path, monkeypatch):
    """A whole deploy that trains with a fifth of train moved into val: the package says so."""
    monkeypatch.setenv("MEDPRUNE_CACHE", str(tmp_path / "train-cache"))
    npz = write_tiny_npz(tmp_path / "tinymnist.npz", n=(60, 24, 24))
    summary = deploy_json(_train_args(npz, tmp_path, "--val-from-train", "0.2"))
    pkg = Path(summary["package"])
    m = json.loads((pkg / "manifest.json").read_text())
    assert m["training"]["val_from_train"] == 0.2 and m["training"]["val_fraction"] == 0.1
    split = m["dataset"]["split"]
    assert split["val"] == "official + moved from train" and split["val_from_train"] == {"fraction": 0.2, "seed": 0}
    assert split["n"] == {"train": 48, "val": 36, "test": 24}  # 12 of 60 train images moved into the 24 of val
    card = (pkg / "MODEL_CARD.md").read_text()
    assert "plus 20% of train moved there" in card and "`--val-from-train`" in card and "Val (n=36)" in card
