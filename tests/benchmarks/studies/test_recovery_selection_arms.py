"""The long-recovery arm of the selection-split design: its cells' arguments, the headline pooled over both arms
(only when every long level is complete), and the 2-epoch assembly leaving the long arm's keys alone."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.studies import _recovery_report as rep
from benchmarks.studies import _selection_arms as arms
from benchmarks.studies import _selection_report as sel
from benchmarks.studies import recovery_selection as rs
from tests.benchmarks.studies.recovery_fixtures import fake_cell, fake_run
from toolchain.errors import ConfigError


def _run(cells: list[tuple[str, float, int]], speedup=None) -> dict:
    """A VGG19 run on PneumoniaMNIST (40 + 160 val/test images); ``wrong`` class-1 images lost per cell."""
    run = fake_run([fake_cell(c, t, (speedup or {}).get((c, t), 0.8 * t), w) for c, t, w in cells])
    run["dataset"] = "pneumoniamnist"
    return run


def _doc(run: dict, arm: str, design: dict | None = None) -> dict:
    doc = rep.build([run], {"criteria": list(rs.CRITERIA), "threads": 1, "models": ["vgg19"],
                            "recover_epochs": 6 if arm == "long" else 2,
                            "model_macs": {"vgg19": list(rs.arm_levels(arm)["vgg19"])}}, f"cmd {arm}", "now")
    rs.add_sections(doc, [run], design or {"models": {}}, rs.RESULTS / "x.json", arm=arm)
    if design is not None:
        arms.add_arms(doc, design)
    return doc


def _full(level_wrong: dict[float, int], extra=()) -> list[tuple[str, float, int]]:
    return [(c, t, w) for t, w in level_wrong.items() for c in rs.CRITERIA] + list(extra)


def _both(design_cells, long_cells, speedup=None) -> tuple[dict, dict]:
    design = _doc(_run(design_cells), "design")
    return design, _doc(_run(long_cells, speedup), "long", design)


def test_the_more_compressed_long_model_passing_val_is_chosen_and_is_a_new_test_reading():
    # 2-epoch: ÷3 passes (no lost image), ÷5 and ÷8 lose 5 of 160 (3.1 pts > 2); long: ÷5 passes, ÷8 fails
    design, long = _both(_full({3.0: 0, 5.0: 5, 8.0: 5}), _full({5.0: 0, 8.0: 5}))
    a = long["models"]["pneumoniamnist:vgg19"]["arms"]
    sl = a["speedup_lossless"]
    assert a["complete"] and sl["arm"] == arms.LONG and sl["target"] == 5.0 and sl["new_test_reading"]
    assert sl["holds_on_test"] and a["deploy_ships"]["speedup_ort"] == pytest.approx(4.0) and sl["test_n"] == 200
    assert a["per_arm"][arms.DESIGN] == {"rows": 21, "passing_val": 7, "most_compressed_passing": "lrp ÷3.00"}
    assert a["per_arm"][arms.LONG]["passing_val"] == 7 and a["rows"] == 35
    # the 2-epoch arm's own choice is unchanged by the long arm
    assert design["models"]["pneumoniamnist:vgg19"]["headline"]["speedup_lossless"]["target"] == 3.0


def test_an_exact_tie_goes_to_the_2_epoch_model_already_read_on_test():
    design, long = _both(_full({5.0: 0, 3.0: 0, 8.0: 5}), _full({5.0: 0, 8.0: 5}))
    sl = long["models"]["pneumoniamnist:vgg19"]["arms"]["speedup_lossless"]
    assert sl["arm"] == arms.DESIGN and sl["target"] == 5.0 and not sl["new_test_reading"]


def test_a_long_model_failing_on_test_ships_the_dense_model():
    design, _ = _both(_full({3.0: 0, 5.0: 5, 8.0: 5}), [])
    run = _run(_full({5.0: 0, 8.0: 5}))
    lost = np.asarray(run["cells"]["tp-taylor/5"]["probs"]["kd/test"]).copy()
    lost[40:60] = [1.0, 0.0]  # 20 class-1 test images lost: passes val, fails the test gate
    run["cells"]["tp-taylor/5"]["speedup_ort"] = 9.0
    run["cells"]["tp-taylor/5"]["macs"]["ratio"] = 5.5
    run["cells"]["tp-taylor/5"]["probs"]["kd/test"] = lost
    a = _doc(run, "long", design)["models"]["pneumoniamnist:vgg19"]["arms"]
    assert a["speedup_lossless"]["criterion"] == "tp-taylor" and not a["speedup_lossless"]["holds_on_test"]
    assert a["deploy_ships"]["speedup_ort"] == 1.0


def test_an_incomplete_long_arm_chooses_nothing_and_owns_no_headline_key():
    design, long = _both(_full({3.0: 0, 5.0: 5, 8.0: 5}), _full({5.0: 0}))  # ÷8 missing for all seven
    a = long["models"]["pneumoniamnist:vgg19"]["arms"]
    assert not a["complete"] and "speedup_lossless" not in a and a["per_arm"][arms.LONG]["rows"] == 7
    assert arms.superseded(long) == set()
    assert sel.headline_entries(long, "r/long.json", part="arms") == {}
    text = "\n".join(arms.preface(long, design, "p.md", list(rs.CRITERIA)))
    assert "long levels incomplete (7 cells missing: lrp ÷8, dlb ÷8" in text and "| 8 | lrp | fail" in text
    assert "keeps the 2-epoch arm's ×2.40 (lrp MACs ÷3.00; test accuracy drop 0.0 [0.0, 0.0] pts" in text


def test_the_arms_must_share_the_dense_checkpoint():
    design, _ = _both(_full({3.0: 0}), [])
    run = _run(_full({5.0: 0, 8.0: 0}))
    run["checkpoint_sha256"] = "1" * 64
    with pytest.raises(ConfigError, match="checkpoint"):
        _doc(run, "long", design)


def test_pooled_headline_entries_check_against_the_written_json_and_are_owned_by_the_long_arm(tmp_path):
    from benchmarks import headline as hl

    design, long = _both(_full({3.0: 0, 5.0: 5, 8.0: 5}), _full({5.0: 0, 8.0: 5}))
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "long.json").write_text(json.dumps(long, default=lambda o: o.tolist()))
    entries = sel.headline_entries(long, "r/long.json", part="arms", arm="pooled over both arms")
    assert set(entries) == arms.superseded(long) == {"recovery/pneumoniamnist/vgg19/speedup_lossless",
                                                     "recovery/pneumoniamnist/vgg19/best_criterion"}
    sl = entries["recovery/pneumoniamnist/vgg19/speedup_lossless"]
    assert sl["value"] == pytest.approx(4.0) and "long arm" in sl["label"] and "pooled over both arms" in sl["label"]
    for key, entry in entries.items():
        assert hl.check_entry(key, entry, root=tmp_path) == []
    text = "\n".join(arms.preface(long, design, "p.md", list(rs.CRITERIA)))
    assert "val chose lrp MACs ÷5.00 (long arm" in text and "a new test reading" in text and "(n=200)" in text
    assert "| 5 | lrp | fail (" in text and "| pass (" in text and "target ×5 NOT met" in text


def test_main_long_arm_assembles_6_epoch_cells_under_its_own_names(monkeypatch, tmp_path):
    from benchmarks.studies import recovery_grid

    design, long = _both(_full({3.0: 0, 5.0: 5, 8.0: 5}), [])
    run, seen = _run(_full({5.0: 0, 8.0: 5})), {}

    def fake_assemble(args, command, log):
        seen.update(vars(args))
        return _doc(run, "long") | {"command": command}, [run]

    monkeypatch.setattr(recovery_grid, "assemble", fake_assemble)
    monkeypatch.setattr(rs, "check_design_split", lambda path, data: None)
    baseline, design_path = tmp_path / "recovery.json", tmp_path / "recovery_selection.json"
    baseline.write_text(json.dumps({"args": {"pool_per_class": 64, "recover_epochs": 2, "align": True}, "models": {}}))
    design_path.write_text(json.dumps(design, default=lambda o: o.tolist()))
    common = ["--data", "pneumoniamnist", "--cached-only", "--baseline", str(baseline), "--design", str(design_path),
              "--checkpoint", "pneumoniamnist/vgg19=ck.safetensors", "--out", str(tmp_path)]
    assert rs.main(["--arm", "long", *common]) == 0
    assert seen["recover_epochs"] == 6 and seen["pool_per_class"] == 64 and seen["align"]
    assert seen["model_macs"] == {"vgg19": [5.0, 8.0]} and seen["models"] == ["vgg19"]
    md = (tmp_path / "recovery_selection_long.md").read_text()
    assert md.index("Pre-registered long-recovery arm") < md.index("Command:") and "instead of 2" in md
    assert (tmp_path / "recovery_selection_long.png").is_file() and not (tmp_path / "recovery_selection.md").exists()
    with pytest.raises(ConfigError, match="levels for vgg19 only"):
        rs.main(["--arm", "long", "--models", "resnet50", *common])
    with pytest.raises(ConfigError, match="assemble the 2-epoch arm first"):
        rs.main(["--arm", "long", *common[:-6], "--design", str(tmp_path / "none.json"), *common[-4:]])


def test_the_2_epoch_assembly_leaves_the_keys_a_complete_long_arm_owns(monkeypatch, tmp_path):
    from benchmarks.studies import recovery_grid

    design, long = _both(_full({3.0: 0, 5.0: 5, 8.0: 5}), _full({5.0: 0, 8.0: 5}))
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    (results / "recovery_selection_long.json").write_text(json.dumps(long, default=lambda o: o.tolist()))
    headline = results / "headline.json"
    mine = {"value": 4.0, "unit": "×", "source": "x", "command": "long"}
    headline.write_text(json.dumps({"recovery/pneumoniamnist/vgg19/speedup_lossless": mine}))
    baseline = tmp_path / "recovery.json"
    baseline.write_text(json.dumps({"args": {"recover_epochs": 2}, "models": {}}))
    monkeypatch.setattr(rs, "RESULTS", results)
    monkeypatch.setattr(rs, "HEADLINE", headline)
    monkeypatch.setattr(rs, "check_design_split", lambda path, data: None)
    monkeypatch.setattr(recovery_grid, "assemble", lambda args, command, log: (design, [_run(_full({3.0: 0}))]))
    monkeypatch.setattr(rs, "add_sections", lambda *a, **k: None)  # ``design`` has its sections already
    assert rs.main(["--models", "vgg19", "--data", "pneumoniamnist", "--cached-only", "--baseline", str(baseline),
                    "--checkpoint", "pneumoniamnist/vgg19=ck", "--out", str(results), "--update-headline"]) == 0
    assert json.loads(headline.read_text()) == {"recovery/pneumoniamnist/vgg19/speedup_lossless": mine}
