"""Protocol grid: the lossless rule, the val choice, the holds-on-test fraction, equal-cost points, and one
tiny end-to-end run (a one-epoch tiny ResNet) through the study's main."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.studies import _protocol_rules as rules
from tests.benchmarks.studies.test_paper_grid import tiny_ckpt  # noqa: F401  (a one-epoch tiny ResNet)
from toolchain.errors import ConfigError


def _onehot(pred, k=2):
    return np.eye(k)[np.asarray(pred)]


def test_identical_predictions_pass_and_a_lost_class_fails_the_bound():
    y = np.array([0] * 50 + [1] * 50)
    dense = _onehot(y)
    same = rules.drops(y, dense, dense, ["a", "b"], n_boot=200)
    assert same["accuracy_drop_pts"] == 0 and same["accuracy_drop_ci_pts"] == [0.0, 0.0]
    assert rules.passes_bound(same, 1.0, 2.0) and rules.passes_point(same, 1.0, 2.0)
    # one class-a image lost of 50 (2 sensitivity points, 1 accuracy point): the point rule accepts it at
    # tolerance 1/2, the bound rule does not (its upper bound exceeds the point drop)
    worse = y.copy()
    worse[0] = 1
    d = rules.drops(y, dense, _onehot(worse), ["a", "b"], n_boot=500)
    assert d["accuracy_drop_pts"] == pytest.approx(1.0) and d["sensitivity_drop_pts"]["a"] == pytest.approx(2.0)
    assert rules.passes_point(d, 1.0, 2.0)
    assert d["accuracy_drop_ci_pts"][1] > 1.0 and not rules.passes_bound(d, 1.0, 2.0)


def test_select_ratio_stops_at_the_first_failure():
    assert rules.select_ratio([0.1, 0.2, 0.3, 0.4], [True, True, False, True]) == 0.2
    assert rules.select_ratio([0.3, 0.1, 0.2], [True, True, True]) == 0.3  # order of the grid does not matter
    assert rules.select_ratio([0.1, 0.2], [False, True]) == 0.0
    with pytest.raises(ConfigError):
        rules.select_ratio([0.1], [True, False])


def test_holds_fraction_with_exact_interval():
    h = rules.holds_fraction([True, True, False, True])
    assert (h["k"], h["n"], h["fraction"]) == (3, 4, 0.75)
    assert h["ci"][0] < 0.75 < h["ci"][1]
    all_hold = rules.holds_fraction([True] * 10)
    assert all_hold["ci"][1] == 1.0 and all_hold["ci"][0] == pytest.approx(0.025 ** (1 / 10))
    assert rules.holds_fraction([])["fraction"] is None


def test_at_budget_picks_the_first_ratio_meeting_the_cost():
    pts = [{"ratio": 0.1, "macs_frac": 0.9}, {"ratio": 0.3, "macs_frac": 0.6}, {"ratio": 0.5, "macs_frac": 0.45},
           {"ratio": 0.7, "macs_frac": 0.2}]
    assert rules.at_budget(pts, "macs_frac", 0.5)["ratio"] == 0.5
    assert rules.at_budget(pts, "macs_frac", 0.6)["ratio"] == 0.3
    assert rules.at_budget(pts, "macs_frac", 0.1) is None
    # two criteria at equal MACs: the one that removes more MACs per unit reaches the budget at fewer units
    other = [{"ratio": 0.1, "macs_frac": 0.7}, {"ratio": 0.3, "macs_frac": 0.4}]
    assert rules.at_budget(other, "macs_frac", 0.5)["ratio"] == 0.3
    with pytest.raises(ConfigError):
        rules.at_budget(pts, "macs_frac", 0.0)


def test_main_end_to_end_on_a_tiny_resnet(tiny_ckpt, tmp_path, monkeypatch, capsys):  # noqa: F811
    from benchmarks.studies import protocol_grid

    monkeypatch.setenv("MEDPRUNE_CACHE", str(tmp_path / "cache"))
    argv = ["--checkpoint", f"resnet50={tiny_ckpt['checkpoint']}", "--criteria", "lrp,magnitude", "--sampling", "random",
            "--n-per-class", "2", "--ratios", "0.2,0.5", "--budgets", "0.9,0.5", "--n-boot", "100",
            "--full-curves", "--out", str(tmp_path)]
    assert protocol_grid.main(argv) == 0
    first = json.loads((tmp_path / "protocol_grid.json").read_text())
    capsys.readouterr()
    assert protocol_grid.main(argv) == 0  # resumes: every cell from the cache, same results
    assert capsys.readouterr().out.count(": cached") == 3
    doc = json.loads((tmp_path / "protocol_grid.json").read_text())
    cells = doc["models"][0]["cells"]
    # magnitude raw + l1, lrp raw
    assert [(c["criterion"], c["normalize"]) for c in cells] == [("lrp", "none"), ("magnitude", "none"),
                                                                ("magnitude", "l1")]
    for c in cells:
        assert [p["ratio"] for p in c["points"]] == [0.2, 0.5]
        assert all(0 < p["macs_frac"] < 1 and 0 < p["params_frac"] < 1 for p in c["points"])
        assert c["selected"]["ratio"] in (0.0, 0.2, 0.5)
        assert c["points"][0]["test_metrics"]["accuracy"]["n"] == 12
    assert [c["selected"] for c in cells] == [c["selected"] for c in first["models"][0]["cells"]]
    att = doc["summary"]["attribution"]["bound_rule"]
    assert att["n"] == 1
    assert (tmp_path / "protocol_grid.md").read_text().count("| lrp |") >= 2
    assert (tmp_path / "protocol_grid.png").stat().st_size > 0


def test_bad_checkpoint_argument_is_a_config_error(tmp_path):
    from benchmarks.studies import protocol_grid

    with pytest.raises(ConfigError):
        protocol_grid.main(["--checkpoint", "resnet50", "--out", str(tmp_path)])
    with pytest.raises(ConfigError):
        protocol_grid.main(["--checkpoint", f"resnet50={tmp_path}/missing", "--out", str(tmp_path)])


def _doc(model: str, holds: list[bool], ratios=(0.1, 0.3), sha="s", first=0) -> dict:
    cells = [{"criterion": f"c{i + first}", "normalize": "none", "attribution": True,
              "selected": {"holds": h, "dense": False}, "selected_point_rule": {"holds": h, "dense": False}}
             for i, h in enumerate(holds)]
    return {"command": f"run {model}", "wall_s": 10.0, "models_requested": [model], "tolerance_pts": 1.0,
            "sens_tolerance_pts": 2.0, "ratios": list(ratios), "budgets": [0.5], "sampling": "clustering",
            "n_per_class": 10, "n_boot": 100, "seed": 0,
            "models": [{"model": model, "dataset": "d", "sha256": sha, "cells": cells}]}


def test_merge_combines_runs_of_different_models_and_recounts():
    from benchmarks.studies import protocol_grid

    doc = protocol_grid.merge([_doc("a", [True, False]), _doc("b", [True, True])], "merge")
    assert [m["model"] for m in doc["models"]] == ["a", "b"] and doc["wall_s"] == 20.0
    assert doc["summary"]["attribution"]["bound_rule"]["k"] == 3 and doc["summary"]["attribution"]["bound_rule"]["n"] == 4
    assert doc["command"] == "run a && run b && merge"
    with pytest.raises(ConfigError, match="ratios"):
        protocol_grid.merge([_doc("a", [True]), _doc("b", [True], ratios=(0.2,))], "merge")
    with pytest.raises(ConfigError, match="more than one run"):
        protocol_grid.merge([_doc("a", [True]), _doc("a", [True])], "merge")
    two = protocol_grid.merge([_doc("a", [True]), _doc("a", [False], sha="t")], "merge")  # two checkpoints of a
    assert [m["sha256"] for m in two["models"]] == ["s", "t"] and two["summary"]["attribution"]["bound_rule"]["n"] == 2
    mixed = protocol_grid.merge([{**_doc("a", [True]), "full_curves": False}, _doc("b", [True])], "merge")
    assert mixed["full_curves"] == "mixed" and mixed["models"][1]["cells"][0]["full_curves"] is True
    # one model split over two runs (criteria run in parallel): its cells are combined
    split = protocol_grid.merge([_doc("a", [True]), _doc("a", [False], first=1)], "merge")
    assert len(split["models"]) == 1 and [c["criterion"] for c in split["models"][0]["cells"]] == ["c0", "c1"]
    assert split["summary"]["attribution"]["bound_rule"]["k"] == 1


def test_lossless_range_claim_uses_the_bracket_the_grid_resolves():
    from benchmarks.studies._protocol_report import _bracket_verdict

    grid = [0.1, 0.2, 0.3, 0.5, 0.7]
    assert _bracket_verdict(0.3, grid, 0.45, 0.55) == "UNRESOLVED at this grid step"  # boundary in [0.3, 0.5)
    assert _bracket_verdict(0.1, grid, 0.45, 0.55) == "REFUTED"  # boundary in [0.1, 0.2)
    assert _bracket_verdict(0.2, grid, 0.2, 0.3) == "CONFIRMED"  # boundary in [0.2, 0.3)
    assert _bracket_verdict(0.7, grid, 0.45, 0.55) == "REFUTED"


def test_val_stops_at_the_first_failure_and_test_is_read_at_the_chosen_ratio_only(monkeypatch):
    """Pruning beyond 0.3 loses every image: val stops at 0.3 (0.5 and 0.7 cannot be chosen), the choice
    is the same as with every ratio evaluated, and test is read once, at the chosen ratio 0.2."""
    import types

    from benchmarks.studies import protocol_grid as pg

    y = np.array([0, 1] * 20)
    calls = []

    def probs(model, ctx, split):  # the "model" is its ratio: up to 0.2 it keeps every prediction
        calls.append((model, split))
        return _onehot(y if model <= 0.2 + 1e-9 else 1 - y), y

    monkeypatch.setattr(pg, "_removed", lambda ctx, masks, example: masks.ratio)
    monkeypatch.setattr(pg, "_costs", lambda model, example: {"macs": int(100 * (1 - model)), "params": 10})
    monkeypatch.setattr(pg, "_probs", probs)
    monkeypatch.setattr("toolchain.masking.build_masks", lambda scores, layers, r, mode, norm: types.SimpleNamespace(
        ratio=r, units_pruned=int(10 * r), units_total=10))
    ctx = types.SimpleNamespace(ds=types.SimpleNamespace(class_names=["a", "b"]))
    dense = {"example": None, "cost": {"macs": 100, "params": 10}, "pv": _onehot(y), "yv": y, "pt": _onehot(y), "yt": y}
    a = types.SimpleNamespace(ratios=[0.1, 0.2, 0.3, 0.5, 0.7], n_boot=50, seed=0, tolerance=1.0, sens_tolerance=2.0,
                              budgets=[0.5], full_curves=False)
    cell = pg.run_cell(ctx, None, None, None, dense, a, lambda msg: None)
    assert [p["ratio"] for p in cell["points"]] == [0.1, 0.2, 0.3]
    assert [m for m, s in calls if s == "test"] == [0.2] and cell["selected"]["ratio"] == 0.2
    assert cell["selected"]["holds"] and cell["equal_cost"] is None
    assert ["test" in p for p in cell["points"]] == [False, True, False]
    calls.clear()
    full = pg.run_cell(ctx, None, None, None, dense, types.SimpleNamespace(**{**vars(a), "full_curves": True}),
                       lambda msg: None)
    assert len(full["points"]) == 5 and full["selected"] == cell["selected"]
    assert [m for m, s in calls if s == "test"] == [0.1, 0.2, 0.3, 0.5, 0.7]


def test_both_failed_needs_a_failure_under_each_rule():
    assert not rules.both_failed([{"val_pass_bound": False, "val_pass_point": True}])
    assert rules.both_failed([{"val_pass_bound": False, "val_pass_point": True},
                              {"val_pass_bound": False, "val_pass_point": False}])


def test_from_baselines_takes_the_listed_checkpoints(tmp_path):
    from benchmarks.studies import protocol_grid as pg

    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"x")
    listing = tmp_path / "baselines_cpu.json"
    listing.write_text(json.dumps({"runs": [{"key": "vgg19:breastmnist", "checkpoint": str(ckpt)},
                                            {"key": "resnet50:breastmnist", "checkpoint": str(tmp_path / "gone")}]}))
    assert pg._baseline_checkpoints(listing, ["vgg19:breastmnist"]) == [("vgg19", str(ckpt))]
    with pytest.raises(ConfigError, match="not in the training cache"):
        pg._baseline_checkpoints(listing, [])
    with pytest.raises(ConfigError, match="not in"):
        pg._baseline_checkpoints(listing, ["vit_b16:breastmnist"])


def test_merge_keeps_runs_of_different_samplings_apart_and_judges_sampling():
    """A second sampling of the same checkpoint adds cells (lrp [clustering] and lrp [random]); the same cached
    cell twice is kept once; per-sampling fractions and the sampling claims are computed from the cells."""
    from benchmarks.studies import protocol_grid
    from benchmarks.studies._protocol_report import claims

    def doc(sampling: str, ratio: float, key: str) -> dict:
        d = _doc("a", [True])
        d["sampling"] = sampling
        cell = d["models"][0]["cells"][0]
        cell.update(criterion="lrp", sampling=sampling, key=key, points=[],
                    selected={"holds": True, "dense": False, "ratio": ratio})
        return d

    merged = protocol_grid.merge([doc("clustering", 0.3, "k1"), doc("random", 0.0, "k2")], "merge")
    assert merged["sampling"] == "clustering, random"
    assert [c["sampling"] for c in merged["models"][0]["cells"]] == ["clustering", "random"]
    assert set(merged["summary"]["per_sampling"]) == {"clustering", "random"}
    assert merged["summary"]["attribution"]["bound_rule"]["n"] == 2
    text = "\n".join(claims({**merged, "models": [{**m, "cells": [{**c, "selected_point_rule": c["selected"]}
                                                                   for c in m["cells"]]} for m in merged["models"]]}))
    # 0.3 and 0 (dense) are two grid steps apart in (0, 0.1, 0.3): sampling matters here; clustering has the larger ratio
    assert "Sampling barely matters" in text and "-> REFUTED" in text
    assert "Clustering best sampling (its val-selected ratio the largest, ties count): 1/1 groups -> CONFIRMED" in text
    again = protocol_grid.merge([doc("clustering", 0.3, "k1"), doc("clustering", 0.3, "k1")], "merge")
    assert len(again["models"][0]["cells"]) == 1
    with pytest.raises(ConfigError, match="more than one run"):
        protocol_grid.merge([doc("clustering", 0.3, "k1"), doc("clustering", 0.1, "k3")], "merge")


def test_attribution_vs_data_free_claim_compares_per_checkpoint():
    from benchmarks.studies._protocol_report import _attribution_beats_data_free

    def cell(criterion: str, ratio: float, attribution: bool) -> dict:
        return {"criterion": criterion, "attribution": attribution, "selected": {"ratio": ratio}}

    above = {"model": "m", "sha256": "s" * 8, "cells": [cell("lrp", 0.3, True), cell("ig", 0.5, True),
                                                        cell("magnitude", 0.1, False)]}
    below = {"model": "n", "sha256": "t" * 8, "cells": [cell("lrp", 0.0, True), cell("random", 0.2, False)]}
    assert _attribution_beats_data_free({"models": [above]}, ("lrp", "ig")).endswith("-> CONFIRMED")
    assert _attribution_beats_data_free({"models": [above, below]}, ("lrp", "ig")).endswith("-> PARTIAL")
    assert _attribution_beats_data_free({"models": [below]}, ("lrp", "ig")).endswith("-> REFUTED")
    assert "NOT JUDGED" in _attribution_beats_data_free({"models": [{**below, "cells": below["cells"][:1]}]}, ("lrp",))


def test_summary_counts_attribution_cells_per_dataset_and_model():
    """Checkpoints of one dataset x model pool; data-free cells and other datasets do not count in a group."""
    a, b, c = _doc("vgg19", [True, False])["models"][0], _doc("vgg19", [True], sha="t")["models"][0], \
        _doc("vit_b16", [False])["models"][0]
    c["dataset"] = "e"
    b["cells"].append({"criterion": "magnitude", "normalize": "none", "attribution": False,
                       "selected": {"holds": False, "dense": False}, "selected_point_rule": {"holds": False, "dense": False}})
    per = rules.summarise([a, b, c])["per_model"]
    assert set(per) == {"d/vgg19", "e/vit_b16"}
    assert (per["d/vgg19"]["bound_rule"]["k"], per["d/vgg19"]["bound_rule"]["n"]) == (2, 3)
    assert (per["e/vit_b16"]["bound_rule"]["k"], per["e/vit_b16"]["bound_rule"]["n"]) == (0, 1)


def test_report_states_the_val_resolution_of_a_small_class():
    """78 val images with 21 of one class (BreastMNIST): one image is 4.76 sensitivity points > 2, 1.28
    accuracy points > 1; a 524-image val split with 135/389 is fine."""
    from benchmarks.studies._protocol_report import resolution

    doc = {"tolerance_pts": 1.0, "sens_tolerance_pts": 2.0}

    def model(support: dict) -> dict:
        return {"class_names": list(support), "cells": [{"points": [{"val": {"support": support}}]}]}

    small = resolution(model({"malignant": 21, "normal_benign": 57}), doc)
    assert len(small) == 2 and "1.28 accuracy points" in small[0] and "malignant" in small[1] and "4.76" in small[1]
    assert resolution(model({"normal": 135, "pneumonia": 389}), doc) == []
    assert resolution({"class_names": ["a"], "cells": [{"points": []}]}, doc) == []


def test_claims_count_a_load_size_variant_as_its_dataset():
    from benchmarks.studies._protocol_report import claims

    def model(dataset: str) -> dict:
        return {"model": "vgg19", "dataset": dataset, "sha256": "s" * 8, "cells": []}

    doc = {"ratios": [0.1, 0.3], "sampling": "clustering",
           "models": [model("breastmnist_64"), model("chest_xray_224"), model("pneumoniamnist")]}
    assert not any(t.startswith("Datasets not in this run") for t in claims(doc))
    assert "Datasets not in this run: breastmnist" in "\n".join(claims({**doc, "models": doc["models"][1:]}))


def test_checkpoints_note_says_from_baselines_only_when_every_model_is(monkeypatch):
    from benchmarks.studies import _protocol_report as report

    monkeypatch.setattr(report, "_baseline_shas", lambda: {"made"})
    doc = {"checkpoints_source": "baselines_cpu.json", "models": [{"sha256": "made"}]}
    assert report._checkpoints_note(doc).startswith("**Checkpoints.** From `baselines_cpu.json`")
    mixed = {**doc, "models": [{"sha256": "made"}, {"sha256": "other"}]}
    assert "were not trained under the policy" in report._checkpoints_note(mixed)
