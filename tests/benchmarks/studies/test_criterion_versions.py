"""The recovery cells' versions and the protocol grid's cache keys follow each criterion's own code: an
edit to ig's module leaves lrp's and taylor's cells current, one to shared code reaches them all."""

from __future__ import annotations

import types

from benchmarks.studies import _recovery_versions as versions
from benchmarks.studies import protocol_grid as pg
from tests.toolchain._source_edits import edit_sources
from toolchain.importance import get_criterion

CRITERIA = ("ig", "lrp", "taylor")


def test_recovery_cell_versions_follow_each_criterions_code(monkeypatch):
    version = versions.cell_code_version.__wrapped__  # uncached: the files change between calls
    before = {c: version(c) for c in CRITERIA}
    assert len(set(before.values())) == len(CRITERIA)
    edit = edit_sources(monkeypatch)
    edit("importance/ig.py")
    after = {c: version(c) for c in CRITERIA}
    assert after["ig"] != before["ig"] and after["lrp"] == before["lrp"] and after["taylor"] == before["taylor"]
    edit("removal/remove.py")  # removal code computes every cell
    assert all(version(c) != after[c] for c in CRITERIA)


def test_protocol_cell_keys_follow_each_criterions_code(monkeypatch):
    a = types.SimpleNamespace(sampling="stratified", n_per_class=4, pool_per_class=8, seed=0, ratios=[0.5],
                              budgets=[1.0], tolerance=1.0, sens_tolerance=2.0, n_boot=10, full_curves=False)

    def keys() -> dict[str, str]:
        return {c: pg._cell_key("sha", c, {}, None, get_criterion(c), a, device="cpu") for c in CRITERIA}

    before = keys()
    assert len(set(before.values())) == len(CRITERIA)
    edit = edit_sources(monkeypatch)
    edit("importance/_lrp_rules.py")
    after = keys()
    assert after["lrp"] != before["lrp"] and after["ig"] == before["ig"] and after["taylor"] == before["taylor"]
    edit("importance/base.py")
    assert all(k != after[c] for c, k in keys().items())
