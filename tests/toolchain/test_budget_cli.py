"""`medprune prune --macs-budget/--speedup`: budget met on the removed model, recovery, val gates, errors."""

from __future__ import annotations

import json

import pytest

from tests.conftest import train_tiny_resnet
from toolchain.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("budget_cli")
    return (*train_tiny_resnet(root), root / "cache")


def _run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


@pytest.mark.parametrize("criterion", ["taylor", "tp-magnitude"])
def test_macs_budget_recovers_and_gates(ckpt, tmp_path, capsys, monkeypatch, criterion):
    from toolchain.models import checkpoint_meta, count_macs, load_checkpoint

    weights, npz, cache = ckpt
    monkeypatch.setenv("MEDPRUNE_CACHE", str(cache))
    js, out_ckpt = tmp_path / "b.json", tmp_path / "pruned.safetensors"
    code, out, err = _run(["prune", "-c", str(weights), "--data", str(npz), "--criterion", criterion,
                           "--sampling", "random", "--n-per-class", "3", "--macs-budget", "0.5",
                           "--recover-epochs", "1", "--tolerance", "50", "--sens-tolerance", "100",
                           "--json", str(js), "--out", str(out_ckpt), "-q"], capsys)
    assert code == 0, err
    doc = json.loads(js.read_text())
    assert doc["search"]["met"] and doc["passes_at_budget"]
    assert doc["chosen"]["recovery"]["recipe"]["epochs"] == 1 and doc["gates"]["split"] == "val"
    pruned, meta = load_checkpoint(out_ckpt)
    dense, _ = load_checkpoint(weights)
    import torch

    x = torch.zeros(1, 1, 16, 16)
    assert count_macs(pruned, x) <= 0.5 * count_macs(dense, x)
    assert checkpoint_meta(out_ckpt)["pruning"]["recipe"]["criterion"] == criterion and "recovery" in meta


@pytest.mark.parametrize("argv,needle", [(["--macs-budget", "0.5", "--speedup", "2"], "one budget"),
                                         (["--speedup", "0.5"], "--speedup"),
                                         (["--macs-budget", "x"], "--macs"),
                                         (["--macs-budget", "0.5", "--kd-temperature", "0"], "temperature")])
def test_budget_errors_are_one_line(ckpt, capsys, argv, needle):
    weights, npz, _ = ckpt
    code, _, err = _run(["prune", "-c", str(weights), "--data", str(npz), *argv], capsys)
    assert code == 2 and needle in err and "Traceback" not in err
