"""criteria_cost: a malformed --checkpoint is a one-line ConfigError (the CLI's exit 2) before anything loads."""

from __future__ import annotations

import pytest

from toolchain.errors import ConfigError


def test_checkpoint_override_wants_model_equals_path():
    from benchmarks.studies import criteria_cost

    with pytest.raises(ConfigError, match="MODEL=PATH"):
        criteria_cost.main(["--checkpoint", "vgg19:/no/such.safetensors"])


def test_write_md_renders_each_row_and_names_the_checkpoints(tmp_path, monkeypatch):
    from benchmarks.studies import criteria_cost

    monkeypatch.setattr(criteria_cost, "RESULTS", tmp_path)
    row = {"model": "vgg19", "checkpoint": "/c/vgg19-pneumoniamnist-abc/model.safetensors", "criterion": "dlb", "n": 20,
           "score_s": [3.0, 5.0], "frozen_fwd_bwd_s": [2.0, 2.0], "ratio_per_pair": [1.5, 2.5], "ratio_median": 2.0,
           "cpu_ratio_median": 1.9, "load_average": [4.5, 4.0, 4.0]}
    criteria_cost.write_md({"command": "medprune study criteria_cost", "created": "t", "torch": "x", "threads": 1,
                            "repeats": 2, "rows": [row]})
    md = (tmp_path / "criteria_cost.md").read_text()
    assert "| vgg19 | dlb | 4.000 | 2.000 | 2.00 | 1.90 | 4.5 |" in md
    assert "vgg19 `vgg19-pneumoniamnist-abc`" in md and "`ig` not measured here" in md
