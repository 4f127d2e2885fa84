"""protocol_grid_repro: one command replays a merged protocol-grid result from the runs it records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.studies import protocol_grid, protocol_grid_repro
from tests.benchmarks.studies.test_paper_grid import tiny_ckpt  # noqa: F401  (a one-epoch tiny ResNet)
from toolchain.errors import ConfigError

RUN = "medprune study protocol_grid --checkpoint m=/c --criteria lrp --out"


def test_plan_moves_each_run_under_work_and_merges_those_folders():
    command = f"{RUN} /x/a && {RUN} '/y/a' && medprune study protocol_grid --merge /x/a /y/a --out /x/merged"
    runs, merge = protocol_grid_repro.plan(command, Path("/w"), Path("/res"))
    assert [r[-1] for r in runs] == ["/w/00-a", "/w/01-a"]  # same folder names stay apart
    assert merge == ["--merge", "/w/00-a", "/w/01-a", "--out", "/res"]


@pytest.mark.parametrize("command", [
    f"{RUN} /x/a && medprune study protocol_grid --merge /x/a /x/b --out /m",  # /x/b: no run writes it
    f"{RUN} /x/a",  # a single run, no merge
    f"{RUN} /x/a && medprune study recovery --merge /x/a",  # another study
])
def test_plan_refuses_a_command_it_cannot_replay(command):
    with pytest.raises(ConfigError):
        protocol_grid_repro.plan(command, Path("/w"), Path("/res"))


def test_replays_a_merged_run_to_the_same_cells(tiny_ckpt, tmp_path, monkeypatch, capsys):  # noqa: F811
    monkeypatch.setenv("MEDPRUNE_CACHE", str(tmp_path / "cache"))
    common = ["--checkpoint", f"resnet50={tiny_ckpt['checkpoint']}", "--sampling", "random", "--n-per-class", "2",
              "--ratios", "0.2,0.5", "--n-boot", "100"]
    for crit, out in (("lrp", "a"), ("magnitude", "b")):
        assert protocol_grid.main([*common, "--criteria", crit, "--out", str(tmp_path / out)]) == 0
    merged = tmp_path / "merged"
    assert protocol_grid.main(["--merge", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(merged)]) == 0
    source = merged / "protocol_grid.json"
    capsys.readouterr()

    repro = ["--from", str(source), "--work", str(tmp_path / "work"), "--out", str(tmp_path / "repro")]
    assert protocol_grid_repro.main([*repro, "--dry-run"]) == 0
    listed = capsys.readouterr().out
    assert "1 of 1 cells cached" in listed and "2 of 2 cells cached" in listed  # lrp; magnitude raw and l1
    assert not (tmp_path / "repro").exists()  # a dry run writes nothing

    assert protocol_grid_repro.main(repro) == 0
    assert capsys.readouterr().out.count(": cached") == 3  # every cell read, none computed
    old, new = json.loads(source.read_text()), json.loads((tmp_path / "repro" / "protocol_grid.json").read_text())
    assert new["models"] == old["models"] and new["summary"] == old["summary"]
    assert str(tmp_path / "work" / "00-a") in new["command"]
