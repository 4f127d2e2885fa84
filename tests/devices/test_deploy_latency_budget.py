"""`medprune deploy --latency-ms` on the cpu target: the budget is timed with the REAL ONNX Runtime timer here.

The budget is 0.7 x the tiny dense checkpoint's median batch-1 latency, measured in the test; the tiny model may or
may not reach it. Asserted is the bookkeeping (``tests.toolchain._real_timer.check_search``): the budget stage's
trace holds the medians the real timer returned, the manifest's latencies are those of the packaged ratio, the
speedup is their ratio, "met" follows ``meets()`` (pruned <= the budget in ms) and a missed budget is said.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
from pathlib import Path

import pytest
import torch

from devices.deploy.budget_latency import MEASURED_LABEL
from tests.devices._deploy_tiny import deploy_args, tiny_setup
from tests.toolchain._real_timer import check_search, dense_median_ms, spy_ort_timer
from toolchain.budget import Budget, search_budget
from toolchain.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.mark.slow  # a whole tiny deploy (recovery, export, bench, verification): ~30 s of idle CPU
def test_latency_ms_deploy_records_the_measured_latencies(tmp_path_factory, monkeypatch):
    import toolchain.budget as budget_mod
    from toolchain.models import load_checkpoint

    timings = spy_ort_timer(monkeypatch)
    # a 0.5 grid (one timed ratio, 0.5) instead of 0.01 (~6): the grid is covered by tests/toolchain
    monkeypatch.setattr(budget_mod, "search_budget", functools.partial(search_budget, resolution=0.5))
    tiny = tiny_setup(tmp_path_factory)
    dense, meta = load_checkpoint(tiny.ckpt)
    x = torch.zeros(1, int(meta["in_chans"]), int(meta["img_size"]), int(meta["img_size"]))
    value = float(f"{0.7 * dense_median_ms(dense.eval(), x):.6f}")
    root = tmp_path_factory.mktemp("deploy_latency_ms")
    argv = deploy_args(tiny, root / "dist", root / "cache", "--latency-ms", f"{value:.6f}", "--recover-epochs", "1",
                       "--tolerance", "50", "--sens-tolerance", "100", "--max-ratio", "0.6")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exc:
        main([*argv, "--json"])
    assert exc.value.code == 0, err.getvalue()[-2000:]
    summary = json.loads(out.getvalue())
    manifest = json.loads((Path(summary["package"]) / "manifest.json").read_text())
    found = json.loads(next((root / "cache" / "stages").glob(f"budget-{summary['stages']['budget']['digest']}"))
                       .joinpath("result.json").read_text())

    budget = Budget("latency_ms", value)
    check_search(found, budget, timings, resolution=0.5, max_ratio=0.6)
    rec = manifest["recovery"]
    assert rec["budget"]["kind"] == "latency_ms" and rec["budget"]["value"] == pytest.approx(value)
    m = rec["measured"]
    assert m["label"] == MEASURED_LABEL == found["latency_label"] and m["quantity"] == "batch-1 latency, median ms"
    # the packaged ratio's latencies are the search's, and the speedup their ratio
    assert (m["dense"], m["pruned"]) == (found["cost"]["dense"], found["cost"]["pruned"])
    assert m["speedup"] == pytest.approx(m["dense"] / m["pruned"], rel=1e-12)
    assert found["ratio"] == manifest["pruning"]["ratio"]
    assert found["met"] == manifest["selection"]["budget"]["budget_ratio_met"] == (m["pruned"] <= value)
    assert rec["budget"]["met"] == (found["met"] and rec["budget"]["passes_at_budget"])
    if not found["met"]:
        assert any("budget not reachable" in w for w in manifest["warnings"])
    card = (Path(summary["package"]) / "MODEL_CARD.md").read_text()
    assert f"Budget latency_ms {value:g}: dense/pruned {m['speedup']:.2f}x ({MEASURED_LABEL})" in card
