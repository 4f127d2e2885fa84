"""res224's cost part: lrp_cost's measure on the model at the study's size, with its run's CPU-time ratio."""

from __future__ import annotations

import argparse

import torch


def test_cost_part_times_lrp_against_the_frozen_baseline(monkeypatch):
    from benchmarks.studies import res224

    monkeypatch.setattr(res224, "SIZE", 16)  # the wiring, not 224 px: seconds
    x, y = torch.randn(2, 1, 16, 16), torch.tensor([0, 1])
    args = argparse.Namespace(repeats=2, composite="epsilon_plus_flat")
    row = res224.measure_model("resnet50", x, y, args, {"cost"}, "medprune study res224 --parts cost")
    cost = row["cost"]
    assert set(row) == {"model", "cost"} and cost["unit_layers"] == 53
    assert len(cost["frozen_fwd_bwd_s"]) == len(cost["lrp_s"]) == len(cost["cpu_ratio_per_pair"]) == 2
    ratios = [b / a for a, b in zip(cost["frozen_fwd_bwd_s"], cost["lrp_s"], strict=True)]
    assert cost["ratio_per_pair"] == ratios and cost["ratio_median"] == sum(ratios) / 2
    assert cost["threads"] == torch.get_num_threads() and len(cost["load_average"]) == 3
