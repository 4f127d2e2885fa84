"""Issue 15's target table: computed from headline.json, the results it cites and split_shift.json."""

from __future__ import annotations

import json

import pytest

from benchmarks.studies import recovery_targets as rt
from toolchain.errors import ConfigError

SHA = "ab" * 32


def row(crit, target, macs, speed, passes, state="kd", acc_hi=0.5, sens_hi=1.0, worst=0):
    return {"criterion": crit, "target_macs_div": target, "state": state, "macs_ratio": macs, "speedup_ort": speed,
            "val": {"passes_bound": passes, "accuracy_drop_ci_pts": [0.0, acc_hi],
                    "worst_sensitivity_drop_upper_pts": sens_hi, "balanced_accuracy": 0.9},
            "test": {"n": 624, "worst_class": worst}}


def chosen(r, holds, sens=(0.9, -0.5, 3.0)):
    return {"speedup_ort": r["speedup_ort"], "macs_ratio": r["macs_ratio"], "criterion": r["criterion"],
            "target": r["target_macs_div"], "state": "kd", "holds_on_test": holds,
            "test_accuracy_drop_pts": {"value": 0.2, "ci": [-0.8, 1.1]},
            "test_worst_sensitivity_drop_pts": {"value": sens[0], "ci": list(sens[1:])}}


def section(rows, sl, model="vgg19"):
    ships = sl["speedup_ort"] if sl and sl["holds_on_test"] else 1.0
    return {"model": model, "checkpoint_sha256": SHA, "class_names": ["normal", "pneumonia"], "rows": rows,
            "headline": {"state": "kd", "speedup_lossless": sl, "deploy_ships": {"speedup_ort": ships}}}


def doc(models, epochs=2, levels=(3.0, 5.0), criteria=("lrp", "tp-taylor")):
    return {"args": {"recover_epochs": epochs, "model_macs": {"vgg19": list(levels)}, "criteria": list(criteria)},
            "models": models}


def entry(source, label, value, part="headline"):
    return {"value": value, "unit": "×", "source": f"benchmarks/results/{source}", "command": "c",
            "path": f"models/{label}/{part}/deploy_ships/speedup_ort"}


def write(folder, name, obj):
    (folder / name).write_text(json.dumps(obj))


def shift_doc(diff=0.27, lo=0.2):
    return {"runs": [{"sha256": SHA, "rows": [{"class": "normal", "diff": {"value": diff, "ci": [lo, 0.34]},
                                                "val": {"n": 335}, "test": {"n": 234}}]}]}


def test_missed_on_val_names_val_accuracy_latency_and_the_incomplete_long_arm(tmp_path):
    slow_choice = row("lrp", 3.0, 3.1, 2.4, True)
    rows = [slow_choice, row("tp-taylor", 3.0, 3.0, 2.5, False),
            row("lrp", 5.0, 5.2, 6.0, False, acc_hi=1.2, sens_hi=2.4),  # fast, fails val narrowly
            row("tp-taylor", 5.0, 5.1, 4.1, False, acc_hi=9.0, sens_hi=40.0)]  # MACs ÷5 but slower than x5
    write(tmp_path, "recovery_selection.json", doc({"tiny:vgg19": section(rows, chosen(slow_choice, True))}))
    long = section([row("lrp", 5.0, 5.2, 5.9, True)], None)
    long.update(arms={"complete": False}, selection={"headline": {"missing": ["tp-taylor ÷5"]}})
    write(tmp_path, rt.LONG_DOC, doc({"tiny:vgg19": long}, epochs=6))
    b = rt.behind(entry("recovery_selection.json", "tiny:vgg19", 2.4), tmp_path)
    why = rt.limits(5.0, 2.4, b, None)
    assert why[0].startswith("accuracy on val: none of the 1 recovered models measured at ×5 or faster")
    assert "lrp ÷5.20" in why[0] and "1.2 / 2.4" in why[0]
    assert any(w.startswith("latency not following MACs: 1 of 2 models at MACs ÷5") for w in why)
    assert why[-1].startswith("time: the pre-registered 6-epoch arm is incomplete (1 cells missing)")
    assert "1 of its 1 models measured at ×5 or faster pass val" in why[-1]
    assert not any("accuracy on test" in w for w in why)  # the val choice holds on test
    # the same pair with the target met has nothing limiting it
    assert rt.limits(2.0, 2.4, b, None) == []


def test_val_choice_failing_on_test_names_its_class_and_the_dense_models_shift(tmp_path):
    fast = row("tp-taylor", 5.0, 8.3, 10.9, True, worst=0)
    rows = [row("lrp", 3.0, 3.1, 2.4, False), fast]
    write(tmp_path, "recovery.json", doc({"tiny:vgg19": section(rows, chosen(fast, False, (2.6, 0.0, 6.0)))}))
    b = rt.behind(entry("recovery.json", "tiny:vgg19", 1.0), tmp_path)
    why = rt.limits(5.0, 1.0, b, shift_doc())
    assert why[0] == "accuracy on test: the val choice loses 2.6 [0.0, 6.0] pts of normal's sensitivity (gate 2)"
    assert why[1].startswith("val→test shift: the dense model's normal sensitivity is +27.0 pts [+20.0, +34.0]")
    assert "within the interval" not in why[1]
    assert "within the interval" in rt.limits(5.0, 1.0, b, shift_doc(diff=0.05, lo=-0.01))[1]
    assert "not measured for this checkpoint" in rt.limits(5.0, 1.0, b, {"runs": []})[1]
    assert "FAILS on test" in rt._best(b) and "×10.90 measured" in rt._best(b)


def pooled_results(folder, long_speed=5.5, holds=True):
    """A pooled-arms headline (tiny:vgg19 as pneumoniamnist · vgg19) and a 2-epoch one (as other · vgg19)."""
    two = [row("lrp", 5.0, 5.1, 4.0, False), row("tp-taylor", 3.0, 3.1, 3.0, True)]
    long = [row("lrp", 5.0, 5.1, long_speed, True)]
    write(folder, "recovery_selection.json", doc({"tiny:vgg19": section(two, chosen(two[1], True))}))
    sl = {**chosen(long[0], holds), "arm": "long", "test_n": 624}
    m = section(long, None)
    ships = long_speed if holds else 1.0
    m["arms"] = {"state": "kd", "speedup_lossless": sl, "deploy_ships": {"speedup_ort": ships}, "complete": True}
    ld = doc({"tiny:vgg19": m}, epochs=6, levels=(5.0,))
    ld["design"] = {"earlier": "recovery_selection.json"}
    write(folder, rt.LONG_DOC, ld)
    write(folder, "headline.json", {
        "recovery/pneumoniamnist/vgg19/speedup_lossless": entry(rt.LONG_DOC, "tiny:vgg19", ships, "arms"),
        "recovery/other/vgg19/speedup_lossless": entry("recovery_selection.json", "tiny:vgg19", 3.0),
        "baseline/x/acc": {"value": 0.9, "unit": "proportion", "source": "x", "command": "c"}})
    return sl


def test_pooled_headline_reads_both_arms_and_the_main_writes_one_row_per_pair(tmp_path):
    pooled_results(tmp_path)
    out = tmp_path / "out"
    assert rt.main(["--results", str(tmp_path), "--out", str(out)]) == 0
    rows = json.loads((out / "recovery_targets.json").read_text())["rows"]
    assert [(r["dataset"], r["target"], r["met"]) for r in rows] == [("pneumoniamnist", 5, True), ("other", None, None)]
    assert rows[0]["budget"]["kd_epochs"] == [2, 6] and len(rows[0]["limits"]) == 0
    assert "(long arm), ×5.50 measured" in rows[0]["best_reached"]
    text = (out / "recovery_targets.md").read_text()
    assert text.count("\n| pneumoniamnist · vgg19 | ×5 | ×5.50 met") == 1 and "2 + 6 KD epochs (pooled arms)" in text
    assert "| other · vgg19 | none set | ×3.00 (`recovery_selection.json`)" in text


def test_stale_or_unknown_headline_entries_are_one_line_errors(tmp_path):
    r = row("lrp", 3.0, 3.1, 2.4, True)
    write(tmp_path, "recovery.json", doc({"tiny:vgg19": section([r], chosen(r, True))}))
    write(tmp_path, "headline.json", {"recovery/a/vgg19/speedup_lossless": entry("recovery.json", "tiny:vgg19", 3.0)})
    with pytest.raises(ConfigError, match="re-assemble"):
        rt.main(["--results", str(tmp_path), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out" / "recovery_targets.md").exists()
    with pytest.raises(ConfigError, match="names no dataset x model"):
        rt.behind(entry("recovery.json", "nope:vgg19", 2.4), tmp_path)
    with pytest.raises(ConfigError, match="no headline.json"):
        rt.main(["--results", str(tmp_path / "missing")])


def test_a_pooled_headline_counts_only_its_complete_long_levels_and_names_the_pending_stage(tmp_path):
    two = [row("tp-taylor", 3.0, 3.1, 3.0, True)]
    counted, later = row("lrp", 5.0, 5.1, 4.0, True), row("lrp", 7.0, 7.1, 6.0, True)  # ÷7: a stage not complete
    write(tmp_path, "recovery_selection.json", doc({"tiny:vgg19": section(two, chosen(two[0], True))}))
    m = section([counted, later], None)
    m["dataset"] = "tiny"
    m["arms"] = {"state": "kd", "speedup_lossless": {**chosen(counted, True), "arm": "long", "test_n": 624},
                 "deploy_ships": {"speedup_ort": 4.0}, "complete": False, "levels": [5.0], "missing": ["tp-taylor ÷7"]}
    ld = doc({"tiny:vgg19": m}, epochs=6, levels=(5.0,))
    ld["args"]["model_macs"] = {"tiny/vgg19": [5.0, 7.0], "vgg19": [5.0]}  # the pair's own levels win
    ld["design"] = {"earlier": "recovery_selection.json"}
    write(tmp_path, rt.LONG_DOC, ld)
    b = rt.behind(entry(rt.LONG_DOC, "tiny:vgg19", 4.0, "arms"), tmp_path)
    assert [(r["arm"], r["target_macs_div"]) for r in b["rows"]] == [("2-epoch", 3.0), ("long", 5.0)]
    assert b["levels"] == [3.0, 5.0] and "tp-taylor ÷7" in b["missing"] and "tp-taylor ÷5" in b["missing"]
    assert b["pending"]["missing"] == ["tp-taylor ÷7"] and [r["target_macs_div"] for r in b["pending"]["rows"]] == [7.0]
    text = "; ".join(rt.limits(5, 4.0, b, None))
    assert "the pre-registered 6-epoch arm is incomplete (1 cells missing)" in text and "1 of its 1 models" in text


def search_aware_doc(prereg, k=7, chosen_row=None, sha=SHA):
    """A recovery_search_aware.json covering the pooled part of tiny:vgg19 (made-up figures)."""
    rec = {"checkpoint_sha256": sha, "pool": "pooled over both arms", "k": k, "confidence": 1 - 0.05 / k,
           "pre_registered": {key: prereg.get(key) for key in ("criterion", "arm", "target", "macs_ratio")},
           "val_n": 100, "chosen": chosen_row, "skipped": [], "undetermined": None}
    return {"status": "post hoc, ...", "sources": ["recovery_selection.json", rt.LONG_DOC],
            "parts": {"pooled over both arms (recovery_selection_long.md)": {"tiny:vgg19": rec}}}


def sa_choice(crit="dlb", macs=3.21, speed=2.87, acc=(0.31, -0.52, 1.13), worst=(1.26, 0.12, 2.41), n=77):
    return {"criterion": crit, "arm": "long", "target_macs_div": 3.0, "macs_ratio": macs, "speedup_ort": speed,
            "test": {"accuracy_drop_pts": {"value": acc[0], "ci": list(acc[1:])}, "n": n,
                     "worst_sensitivity_drop_pts": {"value": worst[0], "ci": list(worst[1:])},
                     "holds_on_test": worst[0] <= 2.0 and acc[0] <= 1.0}}


def test_the_post_hoc_search_aware_clause_comes_from_the_file_and_only_for_the_pairs_it_covers(tmp_path):
    sl = pooled_results(tmp_path, long_speed=4.4, holds=False)  # pooled choice fails on test: target missed
    out = tmp_path / "out"
    assert rt.main(["--results", str(tmp_path), "--out", str(out)]) == 0  # no search-aware file: nothing new
    plain = json.loads((out / "recovery_targets.json").read_text())["rows"]
    assert [r["post_hoc_search_aware"] for r in plain] == [None, None]
    assert "post hoc" not in (out / "recovery_targets.md").read_text().split("|---|")[-1]

    write(tmp_path, rt.SEARCH_AWARE_DOC, search_aware_doc(sl, chosen_row=sa_choice()))
    assert rt.main(["--results", str(tmp_path), "--out", str(out)]) == 0
    rows = json.loads((out / "recovery_targets.json").read_text())["rows"]
    clause = rows[0]["post_hoc_search_aware"]
    assert clause == ("selection over 7 candidates at 95 % each; post hoc, the search-aware rule (each bound at "
                      "99.29 %) would choose dlb (long arm) ÷3.21 (×2.87), test holds (acc drop 0.3 [-0.5, 1.1], "
                      "worst class 1.3 [0.1, 2.4] pts, n 77, committed row) — not a headline "
                      "(recovery_search_aware.md)")
    assert rows[0]["limits"] == plain[0]["limits"] and rows[0]["met"] is False  # a post-hoc reading changes no verdict
    assert rows[1]["post_hoc_search_aware"] is None  # the 2-epoch headline's pool is not in the file
    table_rows = (out / "recovery_targets.md").read_text().split("|---|")[-1]
    assert table_rows.count("post hoc, the search-aware rule") == 1
    assert "(gate 2); " in table_rows and table_rows.index("(gate 2)") < table_rows.index("post hoc")

    b = rt.behind(entry(rt.LONG_DOC, "tiny:vgg19", 1.0, "arms"), tmp_path)
    fails = rt.search_aware(b, search_aware_doc(sl, chosen_row=sa_choice(worst=(2.6, 0.4, 5.0))))
    assert "test fails (acc drop 0.3 [-0.5, 1.1], worst class 2.6 [0.4, 5.0] pts, n 77" in fails
    none = rt.search_aware(b, search_aware_doc(sl, k=49))
    assert "post hoc" in none and "would choose none (the dense model stays, ×1.00)" in none
    stale = rt.search_aware(b, search_aware_doc({**sl, "macs_ratio": 9.9}, chosen_row=sa_choice()))
    assert stale.startswith("post hoc search-aware result not shown") and "dlb" not in stale
    assert "not shown" in rt.search_aware(b, search_aware_doc(sl, chosen_row=sa_choice(), sha="cd" * 32))
