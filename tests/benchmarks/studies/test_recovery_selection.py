"""Selection-split design: the recovery study's report under its own names, headline only where complete."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.studies import _recovery_report as rep
from benchmarks.studies import _selection_report as sel
from benchmarks.studies import recovery_selection as rs
from toolchain.errors import ConfigError


def _cell(crit: str, target: float, kd_val, kd_test, none) -> dict:
    return {"criterion": crit, "target_macs_div": target, "ratio": 0.5,
            "macs": {"ratio": target, "dense": 6, "pruned": 6 / target}, "params": {"dense": 4, "pruned": 2},
            "speedup_ort": 0.9 * target, "latency_ms": {"dense": {"median_ms": 0.9 * target}, "pruned": {"median_ms": 1.0}},
            "probs": {"none/val": none, "none/test": none, "kd/val": kd_val, "kd/test": kd_test}}


def _run(criteria=("lrp", "tp-taylor"), targets=(3.0, 2.0)) -> dict:
    """A ResNet50 run on a 2-class set with 300 val images (100 normal): every cell identical to dense on val,
    the ÷3 cells lose 20 normal test images (fail the test gate), the ÷2 cells none."""
    y = np.r_[np.zeros(100, int), np.ones(200, int)]
    dense = np.eye(2)[y] * 0.8 + 0.1
    worse = np.eye(2)[np.r_[np.ones(20, int), y[20:]]] * 0.8 + 0.1
    flat = np.full((300, 2), 0.5)
    cells = {f"{c}/{t:g}": _cell(c, t, dense, worse if t == 3.0 else dense, flat) for c in criteria for t in targets}
    return {"labels": {"val": y, "test": y}, "dense": {"val": dense, "test": dense}, "class_names": ["normal", "pneu"],
            "cells": cells, "model": "resnet50", "dataset": "pneumoniamnist", "checkpoint": "ck",
            "checkpoint_sha256": "a" * 64, "train_command": "medprune train ...", "dataset_fingerprint": "f"}


def _doc(run: dict, earlier: dict | None = None) -> dict:
    doc = rep.build([run], {"criteria": list(rs.CRITERIA), "macs": [2.0], "threads": 1, "models": ["resnet50"],
                            "model_macs": {"resnet50": [3.0, 2.0, 5.0]}}, "medprune study recovery_selection x", "now")
    rs.add_sections(doc, [run], earlier or {"models": {}}, rs.RESULTS / "recovery.json")
    return doc


def test_headline_levels_must_be_complete_for_every_criterion():
    doc = _doc(_run(criteria=rs.CRITERIA, targets=(3.0,)))  # ÷2 missing for all seven
    s = doc["models"]["pneumoniamnist:resnet50"]["selection"]
    assert not s["headline"]["complete"] and s["headline"]["levels"] == [3.0, 2.0]
    assert len(s["headline"]["missing"]) == 7 and "lrp ÷2" in s["headline"]["missing"]
    assert sel.headline_entries(doc, "benchmarks/results/recovery_selection.json") == {}
    full = _doc(_run(criteria=rs.CRITERIA, targets=(3.0, 2.0)))  # ÷5 (third level) not needed
    assert full["models"]["pneumoniamnist:resnet50"]["selection"]["headline"]["complete"]


def test_headline_entries_are_what_deploy_ships_and_check_against_the_written_json(tmp_path):
    from benchmarks import headline as hl

    doc = _doc(_run(criteria=rs.CRITERIA, targets=(3.0, 2.0)))
    h = doc["models"]["pneumoniamnist:resnet50"]["headline"]
    # the ÷3 cells pass on val (identical to dense there) and fail on test: the val choice is ÷3, deploy ships dense
    assert h["speedup_lossless"]["macs_ratio"] == 3.0 and not h["speedup_lossless"]["holds_on_test"]
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "sel.json").write_text(json.dumps(doc, default=lambda o: o.tolist()))
    entries = sel.headline_entries(doc, "r/sel.json")
    sl = entries["recovery/pneumoniamnist/resnet50/speedup_lossless"]
    assert sl["value"] == 1.0 and "FAILS the gates on test" in sl["label"] and "selection-split design" in sl["label"]
    assert "n=300" in sl["note"]
    for key, entry in entries.items():
        assert hl.check_entry(key, entry, root=tmp_path) == []
    path = tmp_path / "headline.json"
    path.write_text(json.dumps({"other/key": {"value": 1, "unit": "", "source": "x", "command": "y"}}))
    rs.update_headline(entries, path)
    assert set(json.loads(path.read_text())) == {"other/key", *entries}


def test_preface_states_the_design_val_resolution_and_the_earlier_study():
    earlier = _doc(_run(criteria=("lrp",), targets=(2.0,)))
    doc = _doc(_run(criteria=rs.CRITERIA, targets=(3.0,)), earlier={"models": earlier["models"]})
    s = doc["models"]["pneumoniamnist:resnet50"]["selection"]
    assert s["val_n_per_class"] == {"normal": 100, "pneu": 200} and s["earlier"]["rows"] == 1
    text = "\n".join(sel.preface(doc, "selection_split_preregistration.md"))
    assert "Pre-registered selection-split design" in text and "(selection_split_preregistration.md)" in text
    assert "300 (normal 100, pneu 200)" in text and "official val + a stratified 20 % of train, cut before" in text
    one_lost = doc["models"]["pneumoniamnist:resnet50"]["val_resolution"]["normal"]
    assert f"normal {one_lost:.1f}" in text and one_lost > 1.0
    assert "headline stays on the earlier study; missing for it: lrp ÷2" in text
    assert "×2.70 (lrp MACs ÷3.00" not in text  # it fails on test: shipped as x1.00
    assert "val chose" in text


def test_report_is_written_under_the_designs_names_with_the_preface(monkeypatch, tmp_path):
    from benchmarks.studies import recovery_grid

    run = _run(criteria=rs.CRITERIA, targets=(3.0, 2.0))
    seen = {}

    def fake_assemble(args, command, log):
        seen.update(vars(args))
        return _doc(run) | {"command": command}, [run]

    monkeypatch.setattr(recovery_grid, "assemble", fake_assemble)
    monkeypatch.setattr(rs, "check_design_split", lambda path, data: None)
    baseline = tmp_path / "recovery.json"
    baseline.write_text(json.dumps({"args": {"pool_per_class": 64, "recover_epochs": 2, "align": True,
                                             "skipped_pairs": ["x"], "out": "old"}, "models": {}}))
    assert rs.main(["--models", "resnet50", "--data", "pneumoniamnist", "--cached-only", "--baseline", str(baseline),
                    "--checkpoint", "pneumoniamnist/resnet50=ck.safetensors", "--out", str(tmp_path)]) == 0
    assert seen["pool_per_class"] == 64 and seen["recover_epochs"] == 2 and seen["align"]  # the study's recipe
    assert seen["criteria"] == list(rs.CRITERIA) and seen["model_macs"] == {"resnet50": [3.0, 2.0, 5.0]}
    assert seen["checkpoint"] == ["pneumoniamnist/resnet50=ck.safetensors"] and "skipped_pairs" not in seen
    md = (tmp_path / "recovery_selection.md").read_text()
    assert md.startswith("# Recovery study") and md.index("Pre-registered selection-split") < md.index("Command:")
    assert (tmp_path / "recovery_selection.png").is_file() and not (tmp_path / "recovery.md").exists()
    with pytest.raises(ConfigError, match="nothing to report"):  # no pair to assemble: no half-written report
        rs.main(["--cached-only", "--baseline", str(baseline), "--out", str(tmp_path / "none")])
    assert not (tmp_path / "none").exists()
    with pytest.raises(ConfigError, match="inside the repository"):
        rs.main(["--cached-only", "--baseline", str(baseline), "--out", str(tmp_path), "--update-headline"])


def test_a_checkpoint_without_the_designs_split_is_refused(monkeypatch):
    from toolchain.models import checkpoint

    monkeypatch.setattr(checkpoint, "checkpoint_meta", lambda p: {"train_config": {"val_fraction": 0.1}})
    with pytest.raises(ConfigError, match="design's split of chest_xray_224"):
        rs.check_design_split("x.safetensors", "chest_xray_224")
    monkeypatch.setattr(checkpoint, "checkpoint_meta", lambda p: {"train_config": {"val_from_train": 0.2}})
    rs.check_design_split("x.safetensors", "pneumoniamnist")


def test_preface_names_the_pairs_whose_headline_the_long_arm_carries():
    doc = _doc(_run(criteria=rs.CRITERIA, targets=(3.0,)))
    doc["models"]["pneumoniamnist:resnet50"]["selection"]["headline"]["complete"] = True
    mine = "\n".join(sel.preface(doc, "p.md"))
    assert "pneumoniamnist:resnet50: the headline is this design's" in mine
    owned = {"recovery/pneumoniamnist/resnet50/speedup_lossless"}
    theirs = "\n".join(sel.preface(doc, "p.md", owned))
    assert "the headline is this design's" not in theirs and "long-recovery arm's" in theirs
