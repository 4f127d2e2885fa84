"""cited_checkpoints: make baselines retrains every checkpoint a committed result cites, each with a command."""

from __future__ import annotations

import json
import re

import pytest

from benchmarks.studies import cited_checkpoints as cc
from benchmarks.studies.registry import RESULTS
from toolchain.errors import ConfigError

SHA = re.compile(r'"(\w*sha256\w*)":\s*"([0-9a-f]{64})"')


def test_every_checkpoint_the_committed_results_cite_has_a_train_command():
    cited = cc.scan(RESULTS)
    # read independently of the scanner: every 64-hex value under a *sha256* key of a result JSON
    named = {sha for path in RESULTS.glob("*.json") for _, sha in SHA.findall(path.read_text())}
    assert named and named <= set(cited), f"cited but not scanned: {sorted(named - set(cited))}"
    assert cc.uncovered(cited) == []
    recovery = json.loads((RESULTS / "recovery.json").read_text())["models"]
    retrain = {c.sha256: c.command for c in cc.to_retrain(cited)}
    for m in recovery.values():  # the recovery study's dense checkpoints, with their own commands
        assert retrain[m["checkpoint_sha256"]] == m["train_command"]


def _write(folder, name, doc):
    (folder / name).write_text(json.dumps(doc))


def test_scan_takes_the_command_from_any_file_citing_the_same_checkpoint(tmp_path):
    a, b, c, own = "a" * 64, "b" * 64, "c" * 64, "d" * 64
    _write(tmp_path, "recovery.json", {"models": {"x": {"checkpoint": "/x", "checkpoint_sha256": a,
                                                        "train_command": "medprune train --model vgg19"}}})
    _write(tmp_path, "grid.json", {"models": [{"checkpoint": "/b", "sha256": b,
                                               "train_config": {"model": "resnet50", "train_subset": 1500}}]})
    _write(tmp_path, "ece.json", {"runs": [{"checkpoint": "/b", "sha256": b}, {"checkpoint": "/c", "sha256": c},
                                           {"sha256": "e" * 64}]})  # no checkpoint beside: not a checkpoint
    _write(tmp_path, "hparam_policy.json", {"models": [{"candidates": [{"checkpoint": "/d", "sha256": own}]}]})
    cited = cc.scan(tmp_path)
    assert set(cited) == {a, b, c, own}
    assert cited[a].command == "medprune train --model vgg19"
    assert cited[b].command.startswith("medprune train --model resnet50") and "--train-subset 1500" in cited[b].command
    assert cited[b].files == ["ece.json", "grid.json"]
    assert [x.sha256 for x in cc.uncovered(cited)] == [c]  # cited, but nothing says how to train it
    assert own not in {x.sha256 for x in cc.to_retrain(cited)}  # made by the policy itself


def test_section_lists_without_training_and_names_the_runs_that_reproduced(tmp_path):
    a, b = "a" * 64, "b" * 64
    _write(tmp_path, "recovery.json", {"m": [{"checkpoint": "/nowhere", "checkpoint_sha256": a, "train_command": "x"},
                                             {"checkpoint": "/nowhere2", "checkpoint_sha256": b, "train_command": "y"}]})
    rows = cc.section(tmp_path, {a: "vgg19:pneumoniamnist"}, train=False, log=print)
    status = {r["sha256"]: cc.status(r) for r in rows}
    assert status[a].startswith("reproduced") and status[b] == "not retrained by this run"
    text = "\n".join(cc.markdown_lines(rows))
    assert "**1 reproduced bit-identically**" in text and "| not retrained by this run | n/a | `y` |" in text


def test_retrain_refuses_a_command_that_is_not_medprune_train():
    with pytest.raises(ConfigError):
        cc.retrain(cc.Cited("a" * 64, command="rm -rf /tmp/x"))
    with pytest.raises(ConfigError):
        cc.scan(RESULTS / "no-such-folder")


def test_section_retrains_only_the_selected_checkpoints_and_compares_sha256(tmp_path, monkeypatch):
    a, b = "a" * 64, "b" * 64
    _write(tmp_path, "recovery.json", {"m": [{"checkpoint": "/x", "checkpoint_sha256": a, "train_command": "x"},
                                             {"checkpoint": "/y", "checkpoint_sha256": b, "train_command": "y"}]})
    called = []
    monkeypatch.setattr(cc, "retrain", lambda c: called.append(c.sha256) or (tmp_path / "w", "f" * 64))
    rows = {r["sha256"]: r for r in cc.section(tmp_path, {}, train=("bbbb",), log=print)}
    assert called == [b] and "retrained" not in rows[a]
    assert cc.status(rows[b]).startswith("retrained, DIFFERENT sha256")
