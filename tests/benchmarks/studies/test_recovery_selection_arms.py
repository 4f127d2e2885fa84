"""The long-recovery arm of the selection-split design: its cells' arguments, the headline pooled over both arms
(over the long levels of a pair's complete stages: ÷5/÷8, then PneumoniaMNIST's ÷6.5/÷7), and the 2-epoch assembly
leaving the long arm's keys alone."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from benchmarks.studies import _recovery_report as rep
from benchmarks.studies import _selection_arms as arms
from benchmarks.studies import _selection_report as sel
from benchmarks.studies import recovery_selection as rs
from tests.benchmarks.studies.recovery_fixtures import fake_cell, fake_run
from toolchain.errors import ConfigError

CHEST, PNEU = "chest_xray_224", "pneumoniamnist"
LABEL = f"{CHEST}:vgg19"  # the pair with the pre-registration's two long levels only (÷5, ÷8)


def _run(cells: list[tuple[str, float, int]], speedup=None, dataset: str = CHEST) -> dict:
    """A VGG19 run on ``dataset`` (40 + 160 val/test images); ``wrong`` class-1 images lost per cell."""
    run = fake_run([fake_cell(c, t, (speedup or {}).get((c, t), 0.8 * t), w) for c, t, w in cells])
    run["dataset"] = dataset
    return run


def _doc(run: dict | list[dict], arm: str, design: dict | None = None) -> dict:
    runs = run if isinstance(run, list) else [run]
    data, models = [r["dataset"] for r in runs], ["vgg19"]
    doc = rep.build(runs, {"criteria": list(rs.CRITERIA), "threads": 1, "models": models, "data": data,
                           "recover_epochs": 6 if arm == "long" else 2,
                           "model_macs": rs.model_macs(arm, data, models)}, f"cmd {arm}", "now")
    rs.add_sections(doc, runs, design or {"models": {}}, rs.RESULTS / "x.json", arm=arm)
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
    a = long["models"][LABEL]["arms"]
    sl = a["speedup_lossless"]
    assert a["complete"] and sl["arm"] == arms.LONG and sl["target"] == 5.0 and sl["new_test_reading"]
    assert sl["holds_on_test"] and a["deploy_ships"]["speedup_ort"] == pytest.approx(4.0) and sl["test_n"] == 200
    assert a["per_arm"][arms.DESIGN] == {"rows": 21, "passing_val": 7, "most_compressed_passing": "lrp ÷3.00"}
    assert a["per_arm"][arms.LONG]["passing_val"] == 7 and a["rows"] == 35
    # the 2-epoch arm's own choice is unchanged by the long arm
    assert design["models"][LABEL]["headline"]["speedup_lossless"]["target"] == 3.0


def test_an_exact_tie_goes_to_the_2_epoch_model_already_read_on_test():
    design, long = _both(_full({5.0: 0, 3.0: 0, 8.0: 5}), _full({5.0: 0, 8.0: 5}))
    sl = long["models"][LABEL]["arms"]["speedup_lossless"]
    assert sl["arm"] == arms.DESIGN and sl["target"] == 5.0 and not sl["new_test_reading"]


def test_a_long_model_failing_on_test_ships_the_dense_model():
    design, _ = _both(_full({3.0: 0, 5.0: 5, 8.0: 5}), [])
    run = _run(_full({5.0: 0, 8.0: 5}))
    lost = np.asarray(run["cells"]["tp-taylor/5"]["probs"]["kd/test"]).copy()
    lost[40:60] = [1.0, 0.0]  # 20 class-1 test images lost: passes val, fails the test gate
    run["cells"]["tp-taylor/5"]["speedup_ort"] = 9.0
    run["cells"]["tp-taylor/5"]["macs"]["ratio"] = 5.5
    run["cells"]["tp-taylor/5"]["probs"]["kd/test"] = lost
    a = _doc(run, "long", design)["models"][LABEL]["arms"]
    assert a["speedup_lossless"]["criterion"] == "tp-taylor" and not a["speedup_lossless"]["holds_on_test"]
    assert a["deploy_ships"]["speedup_ort"] == 1.0


def test_an_incomplete_long_arm_chooses_nothing_and_owns_no_headline_key():
    design, long = _both(_full({3.0: 0, 5.0: 5, 8.0: 5}), _full({5.0: 0}))  # ÷8 missing for all seven
    a = long["models"][LABEL]["arms"]
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
    assert set(entries) == arms.superseded(long) == {"recovery/chest_xray_224/vgg19/speedup_lossless",
                                                     "recovery/chest_xray_224/vgg19/best_criterion"}
    sl = entries["recovery/chest_xray_224/vgg19/speedup_lossless"]
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
    common = ["--data", "chest_xray_224", "--cached-only", "--baseline", str(baseline), "--design", str(design_path),
              "--checkpoint", "chest_xray_224/vgg19=ck.safetensors", "--out", str(tmp_path)]
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
    headline.write_text(json.dumps({"recovery/chest_xray_224/vgg19/speedup_lossless": mine}))
    baseline = tmp_path / "recovery.json"
    baseline.write_text(json.dumps({"args": {"recover_epochs": 2}, "models": {}}))
    monkeypatch.setattr(rs, "RESULTS", results)
    monkeypatch.setattr(rs, "HEADLINE", headline)
    monkeypatch.setattr(rs, "check_design_split", lambda path, data: None)
    monkeypatch.setattr(recovery_grid, "assemble", lambda args, command, log: (design, [_run(_full({3.0: 0}))]))
    monkeypatch.setattr(rs, "add_sections", lambda *a, **k: None)  # ``design`` has its sections already
    assert rs.main(["--models", "vgg19", "--data", "chest_xray_224", "--cached-only", "--baseline", str(baseline),
                    "--checkpoint", "chest_xray_224/vgg19=ck", "--out", str(results), "--update-headline"]) == 0
    assert json.loads(headline.read_text()) == {"recovery/chest_xray_224/vgg19/speedup_lossless": mine}


def _two_pairs(pneu_long, chest_long=None) -> tuple[dict, dict]:
    """Both VGG19 pairs: 2-epoch arm ÷3 passing (lrp ÷3 its choice), ÷5/÷8 failing; the given long cells."""
    design_cells = _full({3.0: 0, 5.0: 5, 8.0: 5})
    design = _doc([_run(design_cells, dataset=PNEU), _run(design_cells)], "design")
    long_runs = [_run(pneu_long, dataset=PNEU), _run(_full({5.0: 0, 8.0: 5}) if chest_long is None else chest_long)]
    return design, _doc(long_runs, "long", design)


def _section(text: str, label: str) -> str:
    """One pair's part of the preface: from its heading to the next heading or the pooled headline."""
    start = text.index(f"### {label.replace(':', ' · ')}")
    ends = [i for i in (text.find("### ", start + 4), text.find("Pooled headline", start)) if i > 0]
    return text[start:min(ends)]


def test_long_levels_are_per_dataset_and_the_grid_gets_them_per_pair():
    assert arms.long_levels(PNEU, "vgg19") == (5.0, 6.5, 7.0, 8.0) and arms.long_levels(CHEST, "vgg19") == (5.0, 8.0)
    macs = rs.model_macs("long", [PNEU, CHEST], ["vgg19"])
    assert macs == {f"{PNEU}/vgg19": [5.0, 6.5, 7.0, 8.0], f"{CHEST}/vgg19": [5.0, 8.0]}
    assert rs.model_macs("long", [CHEST], ["vgg19"]) == {"vgg19": [5.0, 8.0]}  # one dataset: per model, as before
    run = argparse.Namespace(arm="long", models=["vgg19"], data=[PNEU, CHEST], cached_only=False, runtimes=False,
                             out="o")
    grid_args = rs.grid_args({"recover_epochs": 2, "macs": [2.0]}, run, [])
    assert grid_args.model_macs == macs and grid_args.recover_epochs == arms.LONG_EPOCHS and not grid_args.cached_only
    assert rs.model_macs("design", [PNEU, CHEST], ["vgg19"]) == {"vgg19": [5.0, 3.0, 8.0]}
    from benchmarks.studies import recovery_grid as grid

    args = argparse.Namespace(macs=[2.0], model_macs=macs)
    # the cells a run computes (or lists as missing): chest never gets ÷6.5/÷7
    assert grid.targets_for("vgg19", args, CHEST) == [5.0, 8.0]
    assert grid.targets_for("vgg19", args, PNEU) == [5.0, 6.5, 7.0, 8.0] and grid.targets_for("resnet50", args) == [2.0]


def test_all_four_pneumoniamnist_levels_and_chests_two_are_both_complete():
    # PneumoniaMNIST long: ÷5 and ÷6.5 pass on val, ÷7 and ÷8 fail; chest long: ÷5 passes, ÷8 fails
    design, long = _two_pairs(_full({5.0: 0, 6.5: 0, 7.0: 5, 8.0: 5}))
    p, c = long["models"][f"{PNEU}:vgg19"], long["models"][LABEL]
    assert p["selection"]["headline"]["complete"] and c["selection"]["headline"]["complete"]
    assert p["selection"]["headline"]["levels"] == [5.0, 6.5, 7.0, 8.0] and c["selection"]["headline"]["levels"] == [5.0, 8.0]
    a = p["arms"]
    assert a["complete"] and a["levels"] == [5.0, 8.0, 6.5, 7.0] and a["per_arm"][arms.LONG]["rows"] == 28
    sl = a["speedup_lossless"]
    assert sl["arm"] == arms.LONG and sl["target"] == 6.5 and sl["new_test_reading"]
    # the choice over ÷5/÷8 alone (the earlier stage) is kept and named as an earlier reading
    (e,) = a["earlier_stages"]
    assert e["levels"] == [5.0, 8.0] and e["speedup_lossless"]["target"] == 5.0 and e["speedup_lossless"]["arm"] == "long"
    assert sl["earlier_readings"] == ["the 2-epoch arm's choice", "the choice over long levels ÷5/÷8"]
    assert c["arms"]["complete"] and c["arms"]["earlier_stages"] == [] and c["arms"]["speedup_lossless"]["target"] == 5.0
    entries = sel.headline_entries(long, "r/long.json", part="arms")
    assert set(entries) == arms.superseded(long) and len(entries) == 4
    text = "\n".join(arms.preface(long, design, "p.md", list(rs.CRITERIA)))
    assert f"- {PNEU}:vgg19: val chose lrp MACs ÷6.50 (long arm" in text and "test split already read for the 2-epoch arm's choice, the choice over long levels ÷5/÷8" in text
    assert f"- {PNEU}:vgg19, earlier reading: over long levels ÷5/÷8 only, val chose lrp MACs ÷5.00" in text


def test_a_missing_7_cell_leaves_pneumoniamnist_on_its_5_and_8_choice_and_chest_complete():
    # every ÷6.5 and ÷7 cell present passes val (it would win if counted); tp-magnitude ÷7 is missing
    cells = [x for x in _full({5.0: 0, 6.5: 0, 7.0: 0, 8.0: 5}) if x[:2] != ("tp-magnitude", 7.0)]
    design, long = _two_pairs(cells)
    p, c = long["models"][f"{PNEU}:vgg19"], long["models"][LABEL]
    assert not p["selection"]["headline"]["complete"] and p["selection"]["headline"]["missing"] == ["tp-magnitude ÷7"]
    a = p["arms"]
    assert not a["complete"] and a["levels"] == [5.0, 8.0] and a["missing"] == ["tp-magnitude ÷7"]
    # the choice is the one over ÷5/÷8 (already read on test): no ÷6.5/÷7 row is counted
    assert a["speedup_lossless"]["target"] == 5.0 and a["per_arm"][arms.LONG]["rows"] == 14
    assert a["earlier_stages"] == [] and c["arms"]["complete"] and c["selection"]["headline"]["complete"]
    # headline.json keeps PneumoniaMNIST's entries as they are (nothing written), the 2-epoch arm does not take them
    entries = sel.headline_entries(long, "r/long.json", part="arms")
    assert set(entries) == {f"recovery/{CHEST}/vgg19/speedup_lossless", f"recovery/{CHEST}/vgg19/best_criterion"}
    assert f"recovery/{PNEU}/vgg19/speedup_lossless" in arms.superseded(long)
    text = "\n".join(arms.preface(long, design, "p.md", list(rs.CRITERIA)))
    assert f"- {PNEU}:vgg19: val chose lrp MACs ÷5.00 (long arm" in text
    assert "long level(s) ÷7 incomplete (1 cells missing: tp-magnitude ÷7) — not counted" in text
    assert "| 7 | tp-magnitude | — | — | — | — |" in _section(text, f"{PNEU}:vgg19")


def test_the_preface_lists_6_5_and_7_for_pneumoniamnist_only():
    design, long = _two_pairs(_full({5.0: 0}))  # PneumoniaMNIST: only ÷5 so far, no stage complete
    text = "\n".join(arms.preface(long, design, "p.md", list(rs.CRITERIA)))
    pneu, chest = _section(text, f"{PNEU}:vgg19"), _section(text, LABEL)
    assert "by pre-registered stage: ÷5/÷8; then ÷6.5/÷7 (a later stage counts" in pneu
    assert "by pre-registered stage: ÷5/÷8." in chest and "÷6.5" not in chest and "| 6.5 |" not in chest
    rows = [line.split(" | ")[0] for line in pneu.splitlines() if line.startswith("| ") and "lrp" in line]
    assert rows == ["| 3", "| 5", "| 6.5", "| 7", "| 8"]  # ÷6.5 and ÷7 between ÷5 and ÷8, rows or not
    a = long["models"][f"{PNEU}:vgg19"]["arms"]
    assert a["levels"] == [] and "speedup_lossless" not in a and len(a["missing"]) == 21
    assert f"- {PNEU}:vgg19: long levels incomplete (21 cells missing" in text


def test_the_report_body_lists_missing_cells_per_dataset():
    cells = [x for x in _full({5.0: 0, 6.5: 0, 7.0: 0, 8.0: 5}) if x[:2] != ("tp-magnitude", 7.0)]
    _, long = _two_pairs(cells)
    md = rep.markdown(long)
    chest = md[md.index(f"## vgg19 ({CHEST})"):]
    pneu = md[md.index(f"## vgg19 ({PNEU})"):md.index(f"## vgg19 ({CHEST})")]
    assert "Missing cells (not computed): tp-magnitude ÷7" in pneu and "Missing cells" not in chest


def test_grid_args_do_not_inherit_the_recovery_studys_per_cell_int8_flag():
    # recovery.json records --runtimes-per-cell cached; inherited, the selection reports grew an empty per-cell
    # INT8 section and a recovery_selection_int8.json no study declares (stop 19)
    run = argparse.Namespace(arm="design", models=["vgg19"], data=[PNEU], cached_only=True, runtimes=True, out="o")
    baseline = {"recover_epochs": 2, "macs": [2.0], "runtimes_per_cell": "cached"}
    assert rs.grid_args(baseline, run, []).runtimes_per_cell is None
