"""Recovery study cells record their code version; reuse of a cell computed by other code is listed, and
``--recompute-stale`` recomputes exactly those cells (a tiny fake cell dir, no model is trained)."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
import torch

from benchmarks.studies import _recovery_versions as versions
from benchmarks.studies import recovery_grid as grid


@pytest.fixture
def fake_study(monkeypatch, tmp_path):
    """run_model with every heavy step stubbed: cells land in ``tmp_path`` and count run_cell calls."""
    import toolchain.importance as importance
    import toolchain.prune_eval as prune_eval
    import toolchain.recovery as recovery
    import toolchain.units as units

    monkeypatch.setenv("MEDPRUNE_CACHE", str(tmp_path))
    ds = types.SimpleNamespace(name="pneumoniamnist", fingerprint="f" * 64, class_names=["a", "b"])
    ctx = types.SimpleNamespace(ds=ds, meta={}, sha256="c" * 64, model=torch.nn.Identity(), device="cpu")
    monkeypatch.setattr(grid, "dense_checkpoint", lambda m, d, given: ("dense.safetensors", "medprune train"))
    monkeypatch.setattr(grid, "_dense_probs", lambda ctx: {})
    monkeypatch.setattr(prune_eval, "load_context", lambda w, device="cpu": ctx)
    monkeypatch.setattr(prune_eval, "reference_inputs", lambda *a, **k: (torch.zeros(2, 1, 4, 4), [0, 1],
                                                                         np.arange(2)))
    monkeypatch.setattr(units, "find_unit_layers", lambda m: [])
    monkeypatch.setattr(importance, "get_criterion", lambda name: lambda *a: {})
    monkeypatch.setattr(recovery, "masker_for", lambda *a: None)
    monkeypatch.setattr(recovery, "pruner_at", lambda *a: "prune")
    monkeypatch.setattr(versions, "cell_code_version", lambda name: "v2" + "0" * 62)
    computed = []

    def run_cell(ctx, prune, example, target, rcfg, threads, repeats, log, align=False):
        computed.append(target)
        return {"target_macs_div": target, "probs": {}}

    monkeypatch.setattr(grid, "run_cell", run_cell)

    def run(*flags):
        computed.clear()
        args = grid.parser().parse_args(["--criteria", "lrp", "--model-macs", "vgg19=3/5/8", *flags])
        return grid.run_model("vgg19", "pneumoniamnist", args, lambda msg: None), list(computed)

    return run, tmp_path / "studies" / "recovery"


def _cell_file(root, target):
    (path,) = root.glob(f"pneumoniamnist-vgg19-lrp-{target:g}-*.json")
    return path


def test_reuse_of_other_code_is_listed_and_recompute_stale_redoes_only_those(fake_study):
    run, root = fake_study
    out, computed = run()
    assert computed == [3.0, 5.0, 8.0] and out["stale_cells"] == []
    assert all(json.loads(_cell_file(root, t).read_text())["code_version"].startswith("v2") for t in (3, 5, 8))
    # ÷5 predates the record, ÷8 was computed by older code; ÷3 is today's
    old5 = json.loads(_cell_file(root, 5).read_text())
    del old5["code_version"]
    _cell_file(root, 5).write_text(json.dumps(old5))
    old8 = {**json.loads(_cell_file(root, 8).read_text()), "code_version": "v1" + "0" * 62}
    _cell_file(root, 8).write_text(json.dumps(old8))

    out, computed = run()  # reused, never silently
    assert computed == []
    assert [(s["cell"], s["reason"], s["recorded"]) for s in out["stale_cells"]] == [
        ("pneumoniamnist/vgg19/lrp/÷5", "unrecorded", None), ("pneumoniamnist/vgg19/lrp/÷8", "older", "v10000000000")]
    text = versions.markdown(versions.summary([out]))
    assert "Of 3 cells assembled, 2 were computed by code other than today's" in text
    assert "before versions were recorded (1): pneumoniamnist/vgg19/lrp/÷5" in text
    assert "older code version (1): pneumoniamnist/vgg19/lrp/÷8 (v10000000000)" in text

    out, computed = run("--recompute-stale")
    assert computed == [5.0, 8.0] and out["stale_cells"] == []
    assert "every one was computed by today's code" in versions.markdown(versions.summary([out]))
    assert json.loads(_cell_file(root, 5).read_text())["code_version"].startswith("v2")


def test_recompute_stale_cannot_go_with_cached_only(tmp_path):
    from toolchain.errors import ConfigError

    with pytest.raises(ConfigError, match="--recompute-stale"):
        grid.main(["--cached-only", "--recompute-stale", "--out", str(tmp_path)])


def test_code_version_covers_the_criterion_and_removal_code_only():
    from toolchain.importance import get_criterion
    from toolchain.pipeline import source_files
    from toolchain.removal import remove_units

    files = source_files(type(get_criterion("taylor")), remove_units)
    kept = [f.as_posix() for f in files if versions._in_scope(f)]
    assert any(f.endswith("toolchain/removal/remove.py") for f in kept)
    assert any("toolchain/importance/" in f for f in kept)
    assert not any(f.endswith(("toolchain/data/dataset.py", "toolchain/evaluate.py")) for f in kept)
    version = versions.cell_code_version.__wrapped__("taylor")
    assert len(version) == 64 and version == versions.cell_code_version.__wrapped__("taylor")
