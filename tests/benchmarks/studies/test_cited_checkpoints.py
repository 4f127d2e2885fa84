"""cited_checkpoints: make baselines retrains every checkpoint a committed result cites, each with a command."""

from __future__ import annotations

import json
import re
import shlex
import time

import pytest

from benchmarks.studies import cited_checkpoints as cc
from benchmarks.studies.registry import RESULTS
from toolchain.errors import ConfigError

SHA = re.compile(r'"(\w*sha256\w*)":\s*"([0-9a-f]{64})"')


def test_every_checkpoint_the_committed_results_cite_has_a_train_command():
    cited = cc.scan(RESULTS)
    # read independently of the scanner: every 64-hex value under a *sha256* key of a result JSON
    # (make baselines' own cited section excepted: it names retrained checkpoints, which cite nothing)
    texts = [json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != "cited"})
             if path.name in cc.OWN else path.read_text() for path in RESULTS.glob("*.json")]
    named = {sha for text in texts for _, sha in SHA.findall(text)}
    assert named and named <= set(cited), f"cited but not scanned: {sorted(named - set(cited))}"
    assert cc.uncovered(cited) == []
    recovery = json.loads((RESULTS / "recovery.json").read_text())["models"]
    retrain = {c.sha256: c.command for c in cc.to_retrain(cited)}
    for m in recovery.values():  # the recovery study's dense checkpoints, with their own commands
        assert _flags(retrain[m["checkpoint_sha256"]]) == _flags(m["train_command"]), m["train_command"]


def _flags(command: str) -> list[tuple[str, str]]:
    """A ``medprune train`` line as its sorted (flag, value) pairs: two renderings may order flags differently."""
    words = shlex.split(command)
    assert words[:2] == ["medprune", "train"], command
    pairs, rest = [], words[2:]
    while rest:
        flag = rest.pop(0)
        value = rest.pop(0) if rest and not rest[0].startswith("--") else ""
        pairs.append((flag, value.strip('"')))
    return sorted(pairs)


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
    counts = cc.summary(list(rows.values()))
    assert (counts["cited"], counts["reproduced"], counts["different"], counts["not_retrained"]) == (2, 0, 1, 1)


def test_the_selection_split_design_checkpoints_are_cited_with_their_split_flags():
    retrain = {c.sha256: c.command for c in cc.to_retrain(cc.scan(RESULTS))}
    models = json.loads((RESULTS / "recovery_selection.json").read_text())["models"]
    assert models
    for m in models.values():  # the command that retrains each must carry the split its checkpoint records
        split = m["selection"]["split"]
        flags = [f"--{k.replace('_', '-')} {v:g}" for k, v in split.items()]
        assert flags and retrain[m["checkpoint_sha256"]] == m["train_command"]
        assert all(f in m["train_command"] for f in flags), (m["train_command"], flags)


def test_scan_does_not_read_back_its_own_cited_section(tmp_path):
    own, other, retrained = "a" * 64, "b" * 64, "c" * 64
    _write(tmp_path, "baselines_cpu.json", {
        "runs": [{"key": "vgg19:x", "checkpoint": "/a", "weights_sha256": own}],
        "cited": [{"sha256": other, "checkpoint": "/old/b", "command": "medprune train --model x", "files": ["r.json"],
                   "retrained": {"checkpoint": "/r", "sha256": retrained}}]})
    _write(tmp_path, "recovery.json", {"m": {"checkpoint": "/b", "checkpoint_sha256": other, "train_command": "y"}})
    cited = cc.scan(tmp_path)
    assert set(cited) == {own, other}  # a DIFFERENT retrain is not a citation
    assert cited[other].files == ["recovery.json"] and cited[other].checkpoint == "/b"


def test_a_checkpoint_trained_on_another_device_is_listed_not_retrained_unless_named(tmp_path, monkeypatch):
    import toolchain.settings

    a = "a" * 64
    _write(tmp_path, "paper_grid.json", {"m": [{"checkpoint": "/gpu", "checkpoint_sha256": a, "train_command": "x"}]})
    _write(tmp_path, "baselines.json", {"runs": [{"checkpoint": "/gpu", "train_wall_s": 17.4, "train_device": "cuda"}]})
    monkeypatch.setattr(toolchain.settings, "resolve_device", lambda device="auto": "cpu")
    called = []
    monkeypatch.setattr(cc, "retrain", lambda c: called.append(c.sha256) or (tmp_path / "w", "f" * 64))
    [row] = cc.section(tmp_path, {}, train=True, log=print)
    assert called == [] and cc.status(row).startswith("not retrained: trained on cuda, this machine trains on cpu")
    text = "\n".join(cc.markdown_lines([row]))
    assert "1 were trained on another device (0.3 min on cuda recorded)" in text and "`paper_grid.json`" in text
    cc.section(tmp_path, {}, train=("aaaa",), log=print)
    assert called == [a]


def _train_tiny(npz, cache):
    from toolchain.train import TrainConfig, train

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDPRUNE_CACHE", str(cache))
        mp.setenv("MEDPRUNE_THREADS", "1")
        return train(TrainConfig(model="test_resnet", data=str(npz), img_size=16, epochs=2, batch_size=16, lr=3e-3,
                                 augment=False, patience=0, device="cpu", quiet=True))


def test_a_retrain_is_told_from_a_cache_hit_and_its_differences_are_named(tmp_path):
    from tests.conftest import write_tiny_npz
    from toolchain.models import read_sidecar

    npz = write_tiny_npz(tmp_path / "tinymnist.npz", n=(32, 16, 16))
    cited_w = _train_tiny(npz, tmp_path / "a")
    sha = read_sidecar(cited_w)[1]["weights_sha256"]
    c = cc.Cited(sha, checkpoint=str(cited_w), command="medprune train")
    row = {**c.to_dict(), "made_by": None, "recorded": {"wall_s": None, "device": None}}
    t0 = time.time()
    again = _train_tiny(npz, tmp_path / "b")  # the same command into an empty cache
    fresh = cc.retrained_record(c, again, read_sidecar(again)[1]["weights_sha256"], t0)
    assert fresh["sha256"] == sha and not fresh["same_file"] and fresh["trained_by_this_call"]
    assert fresh["how"]["threads"] == fresh["cited_how"]["threads"] == 1
    assert fresh["config_differs"] == [] and cc.differences(fresh) == []
    assert cc.status({**row, "retrained": fresh}).startswith("retrained, same sha256 (")
    later = cc.retrained_record(c, again, sha, time.time() + 1)  # found in that cache by a later call
    assert not later["trained_by_this_call"]
    assert f"found in its training cache `{tmp_path / 'b'}`" in cc.status({**row, "retrained": later})
    assert "trained there by the same `medprune train` command" in "\n".join(cc.markdown_lines([{**row, "retrained": later}]))
    hit = cc.retrained_record(c, cited_w, sha, t0)  # the cited checkpoint itself: no retrain at all
    assert hit["same_file"] and cc.status({**row, "retrained": hit}).startswith("NOT retrained")
    assert "**0 reproduced bit-identically**" in "\n".join(cc.markdown_lines([{**row, "retrained": hit}]))
    other = {**fresh, "sha256": "f" * 64, "how": {**fresh["how"], "threads": 2, "cache_key": "x-1"}}
    said = cc.status({**row, "retrained": other})
    assert said.startswith("retrained, DIFFERENT sha256") and "threads 1 -> 2" in said and "training-code" in said
    assert "config differs: lr" in cc.status({**row, "retrained": {**other, "config_differs": ["lr"]}})
    newer_code = {**fresh, "how": {**fresh["how"], "cache_key": "x-1"}}  # same weights from changed code
    assert cc.status({**row, "retrained": newer_code}).endswith(
        "; trained unlike the cited one: training-code version differs (cache key)")


def test_section_keeps_the_retrains_an_earlier_run_recorded(tmp_path, monkeypatch):
    a, b = "a" * 64, "b" * 64
    _write(tmp_path, "recovery.json", {"m": [{"checkpoint": "/x", "checkpoint_sha256": a, "train_command": "x"},
                                             {"checkpoint": "/y", "checkpoint_sha256": b, "train_command": "y"}]})
    earlier = [{"sha256": a, "retrained": {"checkpoint": "/r/a", "sha256": a}}, {"sha256": b}]
    monkeypatch.setattr(cc, "retrain", lambda c: (tmp_path / "w", "f" * 64))
    rows = {r["sha256"]: r for r in cc.section(tmp_path, {}, train=("bbbb",), log=print, earlier=earlier,
                                               earlier_by="medprune study baselines_cpu --finished d")}
    assert rows[a]["retrained"]["by"] == "medprune study baselines_cpu --finished d"
    assert cc.status(rows[a]) == "retrained, same sha256 (by an earlier run)"
    assert "Retrained by an earlier run, `medprune study baselines_cpu --finished d`: `aaaaaaaa`." in "\n".join(
        cc.markdown_lines(list(rows.values())))
    assert cc.status(rows[b]).startswith("retrained, DIFFERENT sha256")
    counts = cc.summary(list(rows.values()))
    assert (counts["cited"], counts["reproduced"], counts["different"], counts["retrained"]) == (2, 1, 1, 2)


def test_a_config_field_an_older_checkpoint_does_not_record_counts_as_its_default():
    newer = {"meta": {"train_config": {"lr": 1e-3, "ordinal": False, "val_from_train": 0.0}}}
    older = {"meta": {"train_config": {"lr": 1e-3}}}  # written before ordinal / val_from_train existed
    assert cc._config_differs(newer, older) == []
    assert cc._config_differs({"meta": {"train_config": {"lr": 3e-3, "val_from_train": 0.2}}}, older) == [
        "lr", "val_from_train"]


def test_a_checkpoint_no_results_file_cites_any_more_drops_out_of_a_finished_runs_count(tmp_path, monkeypatch):
    """Stop 18 stopped citing two earlier recovery checkpoints: ``--finished ... --cited list`` recounts today's
    citations (the earlier retrain of one still cited is carried; the stale one is neither row nor count)."""
    from benchmarks.studies import baselines_cpu as bc

    kept, stale = "a" * 64, "c" * 64
    results, finished, out = tmp_path / "results", tmp_path / "finished", tmp_path / "out"
    results.mkdir(), finished.mkdir()
    _write(results, "recovery.json", {"m": {"checkpoint": "/a", "checkpoint_sha256": kept,
                                             "train_command": "medprune train --model resnet50"}})
    _write(results, "baselines.json", {"runs": [{"checkpoint": "/a", "train_wall_s": 711.1, "train_device": "cpu",
                                                 "train_threads": 2}]})
    earlier = [{"sha256": s, "checkpoint": f"/{s[0]}", "command": "medprune train", "files": ["recovery.json"],
                "made_by": None, "retrained": {"checkpoint": f"/r/{s[0]}", "sha256": s}} for s in (kept, stale)]
    doc = {"command": "medprune study baselines_cpu", "created": "then", "schedule": "s", "chosen_lr": {}, "runs": [],
           "machine": {"cpu": "x", "cores_usable": 2, "nice": 0}, "trained": {"checkpoints": 0, "minutes": 0,
           "with_time": 0}, "timing": {"wall_min": 1, "cpu_min": 1, "load": {"mean": 1, "max": 1, "samples": 1}},
           "cited": earlier, "cited_summary": {"cited": 2, "reproduced": 2}, "cited_added_by": "medprune study x"}
    _write(finished, "baselines_cpu.json", doc)
    _write(finished, "hparam_policy.json", {"command": "medprune study hparam_policy", "policy": "p", "models": []})
    monkeypatch.setattr(bc, "RESULTS", results)
    assert bc.main(["--finished", str(finished), "--cited", "list", "--out", str(out)]) == 0
    again = json.loads((out / "baselines_cpu.json").read_text())
    assert [r["sha256"] for r in again["cited"]] == [kept]
    assert (again["cited_summary"]["cited"], again["cited_summary"]["reproduced"]) == (1, 1)
    assert again["cited"][0]["retrained"]["by"] == "medprune study x"  # carried, not retrained
    text = (out / "baselines_cpu.md").read_text()
    assert "1 checkpoints are cited" in text and "**1 reproduced bit-identically**" in text
    assert "`cccccccc" not in text and "Retrained by an earlier run, `medprune study x`: `aaaaaaaa`." in text
    assert "| 711 s on cpu, 2 threads |" in text  # the thread count a retrain must pin, from baselines.json
