"""Heads vs MLP units removed per ViT cell, counted from checkpoint manifests of a tiny fake ViT."""

from __future__ import annotations

import json

import pytest

from benchmarks.studies import _recovery_heads as heads


def _t(*shape: int) -> dict:
    return {"shape": list(shape), "dtype": "float32"}


# two blocks, 2 heads of width 4 each (proj input 8), 16 MLP units each
DENSE = {"meta": {}, "tensors": {"blocks.0.attn.proj.weight": _t(8, 8), "blocks.0.mlp.fc1.weight": _t(16, 8),
                                 "blocks.1.attn.proj.weight": _t(8, 8), "blocks.1.mlp.fc1.weight": _t(16, 8),
                                 "head.weight": _t(2, 8)}}
# block 0 lost one head and 6 MLP units; block 1 nothing
PRUNED = {"meta": {"pruning": {"module_attrs": {"blocks.0.attn": {"num_heads": 1, "attn_dim": 4},
                                                "blocks.1.attn": {"num_heads": 2, "attn_dim": 8}}}},
          "tensors": {"blocks.0.attn.proj.weight": _t(8, 4), "blocks.0.mlp.fc1.weight": _t(10, 8),
                      "blocks.1.attn.proj.weight": _t(8, 8), "blocks.1.mlp.fc1.weight": _t(16, 8)}}


def test_heads_and_mlp_units_are_counted_per_kind():
    assert heads.unit_kinds(DENSE, PRUNED) == {"heads_total": 4, "heads_pruned": 1, "mlp_total": 32,
                                               "mlp_pruned": 6, "head_width": 4}


def test_a_cnn_or_a_checkpoint_without_head_widths_gives_no_count():
    cnn = {"meta": {}, "tensors": {"features.0.weight": _t(8, 3, 3, 3)}}
    assert heads.unit_kinds(cnn, cnn) is None
    assert heads.unit_kinds(DENSE, {"meta": {}, "tensors": PRUNED["tensors"]}) is None
    with pytest.raises(ValueError, match="head widths"):
        heads.head_width({"a": {"num_heads": 2, "attn_dim": 8}, "b": {"num_heads": 2, "attn_dim": 6}})


def _checkpoint(folder, sidecar: dict):
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"")  # only the manifest is read
    (folder / "model.json").write_text(json.dumps(sidecar))
    return folder / "model.safetensors"


def test_table_reads_each_cells_recovered_checkpoint_and_checks_the_removal_report(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDPRUNE_CACHE", str(tmp_path / "cache"))
    dense = _checkpoint(tmp_path / "dense", DENSE)
    _checkpoint(tmp_path / "cache" / "recovered" / ("a" * 16), PRUNED)
    cells = {"lrp/2": {"criterion": "lrp", "target_macs_div": 2.0, "recovery": {"key": "a" * 64},
                       "units": {"removed": 7}},
             "taylor/2": {"criterion": "taylor", "target_macs_div": 2.0, "recovery": {"key": "a" * 64},
                          "units": {"removed": 8}},
             "random/3": {"criterion": "random", "target_macs_div": 3.0, "recovery": {"key": "b" * 64}}}
    table = heads.table({"checkpoint": str(dense), "cells": cells})
    assert [(e["criterion"], e.get("heads_pruned"), e.get("matches_removal")) for e in table] == [
        ("lrp", 1, True), ("taylor", 1, False), ("random", None, None)]
    text = "\n".join(heads.markdown(table))
    assert "- lrp ÷2: heads pruned 1 / 4, MLP units pruned 6 / 32 (check ok)" in text
    assert "taylor ÷2: heads pruned 1 / 4, MLP units pruned 6 / 32 (check FAILS)" in text
    assert "- random ÷3: not known (no recovered checkpoint in the cache)" in text
    cnn = _checkpoint(tmp_path / "cnn", {"meta": {}, "tensors": {"features.0.weight": _t(8, 3, 3, 3)}})
    assert heads.table({"checkpoint": str(cnn), "cells": cells}) == [] and heads.markdown([]) == []
