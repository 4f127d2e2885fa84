"""criteria_agreement: rank agreement on hand-made scores (self = 1, reversed = -1, constant layers skipped), the
study on a tiny ResNet (shape of the output; epsilon-LRP and Taylor read at one point rank units identically, Taylor
read before the BatchNorm does not), its report files, and the one-line errors of its options."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from benchmarks.studies import criteria_agreement as ca
from tests.conftest import tiny_model
from toolchain.errors import ConfigError


def test_a_criterion_agrees_with_itself():
    s = {"l1": np.array([3.0, 1.0, 2.0, 5.0]), "l2": np.array([0.1, 0.4, 0.2])}
    row = ca.pair_agreement(s, s, ["l1", "l2"])
    assert row["spearman_all_units"] == pytest.approx(1.0)
    assert row["spearman_per_layer_median"] == pytest.approx(1.0) and row["layers_compared"] == 2
    assert row["jaccard_lowest_half_global"] == 1.0 and row["jaccard_lowest_half_per_layer"] == 1.0
    assert row["units"] == 7


def test_reversed_scores_disagree_and_ties_use_average_ranks():
    a = {"l1": np.array([1.0, 2.0, 3.0, 4.0])}
    row = ca.pair_agreement(a, {"l1": -a["l1"]}, ["l1"])
    assert row["spearman_all_units"] == pytest.approx(-1.0)
    assert row["jaccard_lowest_half_global"] == 0.0  # {0, 1} vs {2, 3}
    # one tie: rho of ranks (1, 2.5, 2.5, 4) with (1, 2, 3, 4)
    assert ca.spearman(np.array([1.0, 2.0, 2.0, 4.0]), a["l1"]) == pytest.approx(
        np.corrcoef([1, 2.5, 2.5, 4], [1, 2, 3, 4])[0, 1])


def test_constant_layers_are_skipped_and_named():
    a = {"l1": np.array([1.0, 2.0, 3.0]), "l2": np.ones(4), "l3": np.array([1.0, 2.0])}
    b = {"l1": np.array([1.0, 3.0, 2.0]), "l2": np.array([1.0, 2.0, 3.0, 4.0]), "l3": np.array([2.0, 1.0])}
    row = ca.pair_agreement(a, b, ["l1", "l2", "l3"])
    assert row["layers_skipped"] == ["l2"] and row["layers_compared"] == 1  # l3 has <= 2 units: not compared
    assert row["spearman_per_layer_median"] == pytest.approx(0.5)
    assert row["per_layer"]["l2"] is None and "l3" not in row["per_layer"]


def _tiny_run() -> dict:
    torch.manual_seed(0)
    model = tiny_model("resnet")
    for m in model.modules():  # as after training: BatchNorms that shift and scale (fresh ones are identities)
        if isinstance(m, torch.nn.BatchNorm2d):
            for t in (m.weight.data, m.bias.data, m.running_mean):
                t.copy_(torch.randn_like(t) * 0.5 + (1.0 if t is m.weight.data else 0.0))
            m.running_var.uniform_(0.5, 2.0)
    x, y = torch.randn(6, 1, 16, 16), torch.tensor([0, 1, 0, 1, 0, 1])
    criteria = {c: ca.Variant(c) for c in ("lrp", "taylor", "tp-magnitude")} | ca.CONTROLS
    return {"model": "tiny_resnet", "checkpoint": "/c/tiny-abc/model.safetensors", "checkpoint_sha256": "ab" * 32,
            **ca.score_model(model, x, y, criteria, log=lambda _msg: None)}


def test_tiny_resnet_every_pair_once_and_the_control_matches_taylor():
    run = _tiny_run()
    pairs = {frozenset((p["a"], p["b"])) for p in run["pairs"]}
    assert len(run["pairs"]) == len(pairs) == 10  # 5 criteria: every unordered pair once
    assert run["units"] == sum(ly["size"] for ly in run["layers"]) and run["n_images"] == 6
    assert run["read_points"]["conv"] == {"BatchNorm output": run["unit_layers"]}  # each conv read after its BN
    ctl = ca._pair(run, "lrp-epsilon", "taylor")
    # same read point: epsilon-LRP is gradient x activation, so every layer ranks its units identically
    assert ctl["spearman_per_layer_min"] == pytest.approx(1.0, abs=1e-3)
    assert ctl["jaccard_lowest_half_per_layer"] == pytest.approx(1.0)
    for p in run["pairs"]:
        assert len(p["per_layer"]) == sum(ly["size"] > 2 for ly in run["layers"])
    # read before the BatchNorm, Taylor sees another tensor (the BN's shift and scale) and ranks differently
    pre = ca._pair(run, "taylor-pre-bn", "taylor")
    assert pre["spearman_per_layer_min"] < 0.99


def test_pre_bn_variant_moves_only_conv_hooks():
    from toolchain.units import UnitLayer

    layers = [UnitLayer("c", "conv", 4, "bn", "output", 1), UnitLayer("b.mlp.fc1", "mlp", 8, "b.mlp.fc1", "output", -1)]
    moved = ca.CONTROLS["taylor-pre-bn"].layers(layers)
    assert [ly.hook for ly in moved] == ["c", "b.mlp.fc1"]
    assert ca.Variant("taylor").layers(layers) == layers


def test_report_files(tmp_path):
    from benchmarks.studies._pairs import publish

    report = {"command": "medprune study criteria_agreement", "commit": "abc", "created": "t", "threads": 1,
              "seconds": 1.0, "read_point": ca.READ_POINT, "criteria": {},
              "references": {"sampling": "clustering", "n_per_class": 3, "pool_per_class": 8, "seed": 0,
                             "source": "test"}, "runs": [_tiny_run()]}
    publish(tmp_path, ca.NAME, report, ca.findings, ca.markdown, ca.plot)
    doc = json.loads((tmp_path / "criteria_agreement.json").read_text())  # strict JSON: no NaN
    assert doc["findings"][0].startswith("tiny_resnet: per-layer median rho from")
    assert any("control, lrp-epsilon vs taylor" in f for f in doc["findings"])
    md = (tmp_path / "criteria_agreement.md").read_text()
    assert ca.READ_POINT in md and "| lrp | taylor |" in md and "sha256 `abababababab…`" in md
    assert (tmp_path / "criteria_agreement.png").stat().st_size > 0


@pytest.mark.parametrize(("argv", "match"), [
    (["--checkpoint", "vgg19=/no/such.safetensors"], "pneumoniamnist/MODEL=PATH"),
    (["--criteria", "lrp"], "at least two"),
    (["--criteria", "lrp,nope"], "unknown 'nope'"),
])
def test_bad_options_are_one_line_errors(argv, match):
    with pytest.raises(ConfigError, match=match):
        ca.main(argv)
