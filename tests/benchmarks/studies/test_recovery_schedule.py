"""Recovery-schedule study: its cells come from the recovery study's recorded recipe, the pre-registered
decision rule, the paired comparisons' direction, bad options as one-line errors."""

from __future__ import annotations

import argparse
import json

import pytest

from benchmarks.studies import _schedule_report as sched
from benchmarks.studies import recovery_schedule as study
from tests.benchmarks.studies.recovery_fixtures import fake_cell, fake_run

BASELINE = {"recover_epochs": 2, "criteria": ["lrp", "random"], "model_macs": {"vgg19": [3.0, 5.0, 8.0]},
            "macs": [2.0], "kd_weight": 1.0, "ce_weight": 0.0, "recover_lr": None, "pool_per_class": 64,
            "cached_only": True, "align": True, "retime": False, "checkpoint": ["pneumoniamnist/vgg19=/x"]}


def test_cells_option_parses_targets_and_criteria_and_rejects_bad_text():
    assert study._cells("vgg19=5:lrp/taylor,resnet50=3:tp-taylor") == {"vgg19": {5.0: ["lrp", "taylor"]},
                                                                      "resnet50": {3.0: ["tp-taylor"]}}
    for bad in ("vgg19:lrp", "vgg19=x:lrp", "vgg19=1:lrp"):
        with pytest.raises(argparse.ArgumentTypeError):
            study._cells(bad)


def test_grid_args_keep_the_recovery_studys_recipe_and_change_only_epochs_cells_and_caching():
    a = study.grid_args(BASELINE, "vgg19", 5.0, ["lrp"], 6, cached_only=False)
    assert a.recover_epochs == 6 and a.criteria == ["lrp"] and a.model_macs == {"vgg19": [5.0]}
    assert not a.cached_only and not a.align and a.pool_per_class == 64 and a.checkpoint == BASELINE["checkpoint"]
    assert a.kd_weight == 1.0 and a.ce_weight == 0.0
    assert BASELINE["recover_epochs"] == 2 and BASELINE["criteria"] == ["lrp", "random"]  # not mutated


def _doc(short_wrong: int, long_wrong: int, iter_wrong: int | None = None) -> dict:
    short, long = fake_run([fake_cell("lrp", 5, 5.0, short_wrong)]), fake_run([fake_cell("lrp", 5, 5.0, long_wrong)])
    for run, epochs in ((short, 2), (long, 6)):
        run["cells"]["lrp/5"]["recovery"] = {"summary": {"epochs_run": epochs, "best_epoch": epochs}}
    iterative = []
    if iter_wrong is not None:
        cell = fake_cell("lrp", 5, 5.1, iter_wrong) | {"steps": 3, "epochs_per_step": 2,
                                                        "trail": [{"cost": {"ratio": 5.0}, "val": {"accuracy": 0.9}}]}
        iterative = [{"model": "vgg19", "target": 5.0, "criterion": "lrp", "cell": cell}]
    oneshot = [{"model": "vgg19", "target": 5.0, "short": short, "long": long}]
    return sched.build(oneshot, iterative, {"long_epochs": 6, "baseline": "b"}, "cmd", "now")


def test_decision_adopts_the_longer_recipe_only_when_a_cell_passes_val_and_holds_on_test():
    doc = _doc(short_wrong=20, long_wrong=0)  # 6 epochs: identical to dense on val and test
    e = doc["oneshot"][0]
    assert e["same_pruned_model"] and e["passes_val_long"] and e["holds_test_long"]
    assert doc["decision"]["adopt_longer_recipe"] and doc["decision"]["pass_val_short"] == 0
    assert e["long_vs_short"]["diff_pts"] == pytest.approx(10.0) and e["long_vs_short"]["reading"] == "above"
    no = _doc(short_wrong=20, long_wrong=8)  # better, but 8 of 160 class-1 images lost: fails the val rule
    assert not no["decision"]["adopt_longer_recipe"] and no["oneshot"][0]["long_vs_short"]["diff_pts"] > 0
    assert "**Do not adopt**" in sched.markdown(no) and "Pre-registered" in sched.markdown(no)
    assert "timed twice" in sched.markdown(no) and "×5.00 (nan) / ×5.00 (nan)" in sched.markdown(no)


def test_iterative_verdict_is_the_paired_test_difference_against_the_longer_one_shot():
    assert _doc(0, 20, iter_wrong=0)["iterative"][0]["verdict"] == "win"
    lose = _doc(0, 0, iter_wrong=20)["iterative"][0]
    assert lose["verdict"] == "lose" and lose["vs_oneshot_long"]["diff_pts"] == pytest.approx(-10.0)
    assert _doc(0, 0, iter_wrong=0)["iterative"][0]["verdict"] == "tie"


def test_report_is_written_with_its_findings(tmp_path):
    doc = _doc(20, 0, iter_wrong=0)
    sched.write(doc, tmp_path)
    assert json.loads((tmp_path / "recovery_schedule.json").read_text())["findings"][0].startswith("longer recovery")
    assert (tmp_path / "recovery_schedule.png").read_bytes()[:4] == b"\x89PNG"


def test_missing_baseline_and_bad_cells_are_one_line_errors(tmp_path):
    from toolchain.errors import ConfigError  # the medprune CLI prints it on one line and exits 2

    with pytest.raises(ConfigError, match="not found"):
        study.main(["--baseline", str(tmp_path / "none.json"), "--out", str(tmp_path)])
    with pytest.raises(ConfigError, match="model=S:crit"):
        study.main(["--oneshot", "vgg19:lrp", "--out", str(tmp_path)])
    assert not list(tmp_path.iterdir())
