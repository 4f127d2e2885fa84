"""lrp_cost: runs of some parts merge into the results file without losing the parts measured before."""

from __future__ import annotations


def test_merge_keeps_parts_measured_earlier_and_writes_every_table(tmp_path, monkeypatch):
    from benchmarks.studies import lrp_cost

    monkeypatch.setattr(lrp_cost, "RESULTS", tmp_path)
    earlier = {"command": "medprune study lrp_cost --archs vgg19", "load_average": [9.0, 9.0, 9.0],
               "models": [{"arch": "vgg19", "params": 1, "unit_layers": 2, "units": 3, "frozen_fwd_bwd_s": [1.0],
                           "lrp_s": [1.8], "ratio_per_pair": [1.8], "ratio_median": 1.8,
                           "ig": {"captum_input_ig_s": [2.0], "ig_criterion_s": [2.2], "ratio_per_pair": [1.1],
                                  "ratio_median": 1.1,
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
    assert "| vgg19 | 1.000 | 1.500 | 1.50 | — (n = 1, too few) | — | yes |" in md  # DLB table
    assert "| vgg19 | 2.000 | 2.200 | 1.10 | — (n = 1, too few) | — | NO |" in md  # IG table, target 1
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


def test_median_interval_is_the_exact_order_statistic_interval():
    """Coverage of [x_(k), x_(n+1-k)] is 1 - 2 P(Bin(n, 1/2) <= k-1); the widest k still at 95 % is taken."""
    from scipy.stats import binom

    from benchmarks.studies.lrp_cost import median_interval

    for n, k in ((6, 1), (9, 2), (20, 6)):
        values = [float(v) for v in range(n, 0, -1)]  # order must not matter
        lo, hi, coverage = median_interval(values)
        assert (lo, hi) == (float(k), float(n + 1 - k)), n
        assert abs(coverage - (1 - 2 * binom.cdf(k - 1, n, 0.5))) < 1e-12
        assert coverage >= 0.95 > 1 - 2 * binom.cdf(k, n, 0.5)  # one step narrower falls below 95 %
    assert median_interval([1.0] * 5) is None  # [min, max] of 5 covers 0.9375 only


def test_pairs_record_the_interval_of_the_median_ratio():
    from benchmarks.studies import lrp_cost

    base = [1.0] * 9
    part = lrp_cost._pairs(base, [0.9, 1.3, 1.0, 0.95, 1.1, 1.05, 0.8, 1.2, 1.02])
    assert part["ratio_ci95"] == [0.9, 1.2] and abs(part["ratio_ci95_coverage"] - 0.9609375) < 1e-12
    assert lrp_cost._ci(part["ratio_per_pair"]) == "0.90–1.20 (n = 9)"
