"""Issue #14: the device a grid cell computes on is in its cache key. Recovery and protocol cells keep
the keys they had before the device was passed (pinned digests computed with the old code), so cached
CPU cells stay valid; another device gives another key."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest

from benchmarks.studies import protocol_grid as pg
from benchmarks.studies import recovery_grid as rg
from benchmarks.studies._recovery_options import parser as recovery_parser

RECIPE = {"epochs": 2, "lr": 1e-4, "kd_weight": 1.0}
# recovery_grid.cell_path's digest of these inputs before the device was keyed
OLD_RECOVERY_KEY = "fc63e1275b6c9003853cc5e4a48bc799abf05672d2e378fe10bfe146f4c4fc52"
# protocol_grid._cell_key before the device was passed (it wrote "cpu"), code version fixed to "code-v"
OLD_PROTOCOL_KEY = "156903568e711fdcbbfa"


def _recovery_key(device: str) -> str:
    return rg.cell_key("ab" * 32, "lrp", 3.0, [3, 1, 4], RECIPE, 1, device)


def test_recovery_cpu_key_is_the_old_key_and_cuda_differs():
    assert _recovery_key("cpu") == OLD_RECOVERY_KEY
    assert _recovery_key("cuda") != OLD_RECOVERY_KEY


def test_recovery_cell_path_follows_the_context_device():
    def path(device: str) -> str:
        prep = types.SimpleNamespace(ctx=types.SimpleNamespace(sha256="ab" * 32, device=device),
                                     idx=np.array([3, 1, 4]), rcfg=types.SimpleNamespace(recipe=lambda: RECIPE))
        return rg.cell_path(prep, "pneumoniamnist", "vgg19", "lrp", 3.0, types.SimpleNamespace(threads=1)).name

    assert path("cpu") == f"pneumoniamnist-vgg19-lrp-3-{OLD_RECOVERY_KEY[:12]}.json"
    assert path("cuda") != path("cpu")


def test_recovery_cells_compute_and_record_the_cell_device(monkeypatch, tmp_path):
    import toolchain.prune_eval as prune_eval

    seen = {}

    def load_context(weights, *, device="auto"):
        seen["device"] = device
        raise RuntimeError("stop")

    monkeypatch.setattr(rg, "dense_checkpoint", lambda *a: ("w", "cmd"))
    monkeypatch.setattr(prune_eval, "load_context", load_context)
    args = recovery_parser().parse_args([])
    with pytest.raises(RuntimeError, match="stop"):
        rg.prepare("vgg19", "pneumoniamnist", args)
    assert seen["device"] == rg.CELL_DEVICE == "cpu"
    assert rg.recovery_config(args, "vgg19").device == rg.CELL_DEVICE

    monkeypatch.setattr(rg, "run_cell", lambda *a, **k: {"ratio": 0.5})
    prep = types.SimpleNamespace(ctx=types.SimpleNamespace(device=rg.CELL_DEVICE), pruners={"lrp": object()},
                                 example=None, rcfg=None)
    out = tmp_path / "cell.json"
    rg.compute_cell(prep, "vgg19", "lrp", 3.0, args, "v1", out, lambda m: None)
    assert json.loads(out.read_text())["device"] == "cpu"


def test_protocol_cpu_key_is_the_old_key_and_cuda_differs(monkeypatch):
    import toolchain.pipeline as pipeline
    from toolchain.importance import get_criterion

    monkeypatch.setattr(pipeline, "code_version", lambda *files: "code-v")
    monkeypatch.setattr(pipeline, "criterion_source_files", lambda *a, **k: [])
    a = types.SimpleNamespace(sampling="stratified", n_per_class=4, pool_per_class=8, seed=0, ratios=[0.5],
                              budgets=[1.0], tolerance=1.0, sens_tolerance=2.0, n_boot=10, full_curves=False)

    def key(device: str) -> str:
        return pg._cell_key("sha", "lrp", {}, None, get_criterion("lrp"), a, device=device)

    assert key("cpu") == OLD_PROTOCOL_KEY
    assert key("cuda") != key("cpu")
    assert pg.cell_keys("sha", "lrp", a, "cpu")[1] == {None: key("cpu")}  # the run's keys: the same function


def test_paper_task_keys_record_the_task_device():
    from benchmarks.studies.paper import cache as paper_cache

    task = paper_cache._task("dense", {"data": "d"}, "sha", {})
    assert json.loads(task.full_key)["device"] == paper_cache.TASK_DEVICE == "cpu"
