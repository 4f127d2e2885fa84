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
    assert "| vgg19 | 1.000 | 1.500 | 1.50 | — | yes |" in md  # DLB table
    assert "| vgg19 | 2.000 | 2.200 | 1.10 | — | NO |" in md  # IG table, target 1
    assert "--parts dlb" in md and "--archs vgg19" in md  # each part names its command


def test_interleaved_records_cpu_time_apart_from_waiting():
    """A call that sleeps takes wall time but almost no CPU time: the CPU-time ratio shows it, the wall one not."""
    import time

    from benchmarks.studies import lrp_cost

    def busy():
        end = time.process_time() + 0.02
        while time.process_time() < end:
            pass

    wall_a, wall_b, cpu = lrp_cost.interleaved(busy, lambda: time.sleep(0.02), 2)
    assert len(wall_a) == len(wall_b) == 2 and all(w >= 0.02 for w in wall_b)
    assert cpu["cpu_ratio_median"] < 0.5 and len(cpu["cpu_ratio_per_pair"]) == 2
