"""lrp_cost: runs of some parts merge into the results file without losing the parts measured before."""

from __future__ import annotations


def test_merge_keeps_parts_measured_earlier_and_writes_every_table(tmp_path, monkeypatch):
    from benchmarks.studies import lrp_cost

    monkeypatch.setattr(lrp_cost, "RESULTS", tmp_path)
    earlier = {"command": "medprune study lrp_cost --archs vgg19", "load_average": [9.0, 9.0, 9.0],
               "models": [{"arch": "vgg19", "params": 1, "unit_layers": 2, "units": 3, "frozen_fwd_bwd_s": [1.0],
                           "lrp_s": [1.8], "ratio_per_pair": [1.8], "ratio_median": 1.8,
                           "ig": {"captum_input_ig_s": [2.0], "ig_criterion_s": [2.2], "ratio_median": 1.1,
                                  "n_steps": 8, "internal_batch_size": 256}}]}
    row = {"arch": "vgg19", "params": 1, "unit_layers": 2, "units": 3,
           "dlb": {"command": "medprune study lrp_cost --parts dlb", "created": "t", "load_average": [1.0],
                   "frozen_fwd_bwd_s": [1.0], "dlb_s": [1.5], "ratio_per_pair": [1.5], "ratio_median": 1.5}}
    results = {"n_samples": 20, "dataset": "pneumoniamnist", "img_size": 32, "repeats": 1, "torch": "x", "cpu": "x",
               "threads": 2, "composite": "c", "models": list(earlier["models"])}
    lrp_cost.merge(earlier, results, row)
    (merged,) = results["models"]
    assert merged["ratio_median"] == 1.8 and merged["ig"]["ratio_median"] == 1.1 and merged["dlb"]["ratio_median"] == 1.5
    assert merged["lrp_run"]["command"] == earlier["command"] and merged["ig"]["command"] == earlier["command"]
    lrp_cost.write(results)
    md = (tmp_path / "lrp_cost.md").read_text()
    assert "| vgg19 | 1.000 | 1.500 | 1.50 | yes |" in md  # DLB table
    assert "| vgg19 | 2.000 | 2.200 | 1.10 | NO |" in md  # IG table, target 1
    assert "--parts dlb" in md and "--archs vgg19" in md  # each part names its command
