"""`medprune deploy --speedup`: on a CPU target the budget is timed with ONNX Runtime on this machine; on a Jetson
it is the roofline prediction on the target's profile (``devices.deploy.budget_latency``), labelled
``predicted (roofline, <profile>)``, with the MACs ratio only as a labelled fallback.

No assertion is on a timed value: the tiny model may or may not reach the speedup here. What is checked is that
the manifest holds the budget, both latencies, the speedup as their ratio, a verdict that follows
``toolchain.budget.meets`` (speedup >= the budget, no tolerance), dense / before-recovery / recovered test
metrics and the recovery recipe.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch

from devices.deploy.budget_latency import MEASURED_LABEL, RooflineLatency, latency_for, latency_source
from devices.profiles import load_profile
from devices.roofline import load_device_fit
from tests.conftest import tiny_model
from tests.devices._deploy_tiny import deploy_args, tiny_setup
from toolchain.budget import Budget, measure, meets
from toolchain.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SPEEDUP = 1.1
JETSON = "jetson-orin-nano"


def _deploy(tmp_path_factory, name: str, *extra: str) -> tuple[dict, dict, str, Path]:
    """``(summary, manifest, stderr, package)`` of a tiny deploy to ``--speedup SPEEDUP``, 1 recovery epoch,
    loose gates (the gates are not what is tested here)."""
    tiny = tiny_setup(tmp_path_factory)
    root = tmp_path_factory.mktemp(name)
    argv = deploy_args(tiny, root / "dist", root / "cache", "--speedup", str(SPEEDUP), "--recover-epochs", "1",
                       "--tolerance", "50", "--sens-tolerance", "100", "--max-ratio", "0.5", *extra)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exc:
        main([*argv, "--json"])
    assert exc.value.code == 0, err.getvalue()[-2000:]
    summary = json.loads(out.getvalue())
    package = Path(summary["package"])
    summary["budget_stage"] = json.loads(next((root / "cache" / "stages").glob(
        f"budget-{summary['stages']['budget']['digest']}")).joinpath("result.json").read_text())
    return summary, json.loads((package / "manifest.json").read_text()), err.getvalue(), package


def _check_budget_record(summary: dict, manifest: dict) -> dict:
    """The manifest's budget fields, consistent with each other and with the budget search's trace."""
    rec, sel = manifest["recovery"], manifest["selection"]
    assert rec["budget"]["kind"] == "speedup" and rec["budget"]["value"] == SPEEDUP
    m = rec["measured"]
    assert m["dense"] > 0 and m["pruned"] > 0 and m["speedup"] == pytest.approx(m["dense"] / m["pruned"], rel=1e-12)
    budget = Budget("speedup", SPEEDUP)
    found = summary["budget_stage"]
    assert found["latency_label"] == m["label"] and found["cost"]["ratio"] == m["speedup"]
    for point in found["trace"]:  # every evaluated ratio: the verdict is meets() on its own cost
        assert point["met"] == meets(budget, point["cost"]) == (point["cost"]["ratio"] >= SPEEDUP)
    met = [p["ratio"] for p in found["trace"] if p["met"]]
    # the smallest ratio that met the budget, else the most compressed one tried (and the budget is not met)
    assert found["ratio"] == (min(met) if met else max(p["ratio"] for p in found["trace"])) == manifest["pruning"]["ratio"]
    assert found["met"] == bool(met) == sel["budget"]["budget_ratio_met"] == (m["speedup"] >= SPEEDUP)
    assert rec["budget"]["met"] == (found["met"] and rec["budget"]["passes_at_budget"])
    if not found["met"]:
        assert any("budget not reachable" in w for w in manifest["warnings"])
    # dense, pruned-before-recovery and recovered metrics on test, each with its interval and n
    metrics = manifest["metrics"]
    for which in ("dense", "pruned_before_recovery", "pruned"):
        assert len(metrics[which]["accuracy_ci"]) == 2 and metrics[which]["n"] == metrics["n"]
    assert rec["recipe"]["epochs"] == 1 and rec["recipe_name"] == "kd" and rec["val_rule"]["passes"]
    return m


@pytest.mark.slow  # a whole tiny deploy whose budget search exports and times ~6 models (~30 s of CPU)
def test_speedup_deploy_on_cpu_records_the_measured_latencies(tmp_path_factory):
    summary, manifest, _, package = _deploy(tmp_path_factory, "deploy_speedup_cpu")
    m = _check_budget_record(summary, manifest)
    assert m["label"] == MEASURED_LABEL and m["quantity"] == "batch-1 latency, median ms"
    card = (package / "MODEL_CARD.md").read_text()
    assert f"Budget speedup {SPEEDUP:g}: dense/pruned {m['speedup']:.2f}x ({MEASURED_LABEL})" in card


@pytest.mark.slow  # a whole tiny deploy to a Jetson package (~20 s of CPU)
def test_jetson_speedup_budget_is_the_roofline_prediction(tmp_path_factory):
    summary, manifest, err, package = _deploy(tmp_path_factory, "deploy_speedup_jetson", "--target", "jetson",
                                              "--fidelity-images", "0", "--no-calibrate")
    m = _check_budget_record(summary, manifest)
    fit = load_device_fit(JETSON)
    assert m["label"] == (f"predicted (roofline, {JETSON}): tensorrt fp16 batch 1, leave-one-out error "
                          f"{fit.loo_mape * 100:.0f} % on published tensorrt latencies")
    assert m["quantity"] == "batch-1 latency, predicted ms"
    # the dense latency is the roofline's prediction for the dense checkpoint on the Jetson profile
    from toolchain.models import load_checkpoint

    dense, meta = load_checkpoint(tiny_setup(tmp_path_factory).ckpt)
    x = torch.zeros(1, int(meta["in_chans"]), int(meta["img_size"]), int(meta["img_size"]))
    assert m["dense"] == pytest.approx(RooflineLatency(load_profile(JETSON), "fp16").predict(dense, x)["latency_ms"],
                                       rel=1e-9)
    # the pruned one is the bench stage's prediction for the packaged model (recovery keeps the architecture):
    # the budget and the package's latency report use one predictor
    bench = next(p for p in summary["bench"]["predicted"] if p["batch"] == 1)
    assert bench["target"] == JETSON and m["pruned"] == pytest.approx(bench["latency_ms"], rel=1e-9)
    # the label reaches the CLI's output and the model card
    assert f"({m['label']})" in " ".join(err.split())
    assert f"dense/pruned {m['speedup']:.2f}x ({m['label']})" in (package / "MODEL_CARD.md").read_text()


def test_latency_source_says_how_each_target_gets_its_latency():
    speedup, macs = {"kind": "speedup", "value": 2.0}, {"kind": "macs", "value": 0.5}
    jetson = load_profile(JETSON)
    assert latency_source(macs, jetson, "fp16") == {"kind": "counted"}
    assert latency_source(speedup, load_profile("cpu"), "fp32")["kind"] == "measured"
    assert latency_source(speedup, load_profile("x86-edge"), "fp32")["kind"] == "measured"
    src = latency_source(speedup, jetson, "fp16")
    assert src["kind"] == "roofline" and src["target"] == JETSON and src["peak_gflops"] == jetson.peak_gflops("fp16")
    assert src["fit"]["loo_mape"] == load_device_fit(JETSON).loo_mape
    assert latency_source(speedup, jetson, "fp32") != src  # another precision is another cache key


def test_roofline_prediction_of_a_pruned_model():
    """Physically removed channels are predicted faster, but by less than the MACs ratio: the per-layer overhead
    of the fitted profile stays (removal keeps every layer)."""
    from toolchain.importance import get_criterion
    from toolchain.masking import build_masks
    from toolchain.removal import remove_units
    from toolchain.units import find_unit_layers

    dense, x = tiny_model("vgg"), torch.zeros(1, 1, 16, 16)
    layers = find_unit_layers(dense)
    scores = get_criterion("magnitude")(dense, None, None, layers)
    pruned, _ = remove_units(dense, build_masks(scores, layers, 0.5), x, "neuron", None, scores=scores, strict=False)
    fn, label, quantity = latency_for(latency_source({"kind": "speedup", "value": 2.0}, load_profile(JETSON), "fp16"),
                                      dense, x)
    assert isinstance(fn, RooflineLatency) and label.startswith(f"predicted (roofline, {JETSON})")
    cost = measure("speedup", dense, pruned, x, latency_fn=fn)
    assert 1.0 < cost["ratio"] < measure("macs", dense, pruned, x)["ratio"]
    assert fn.last["target"] == JETSON and fn.last["precision"] == "fp16" and fn.last["label"] == "predicted"


def test_without_published_peaks_the_macs_ratio_stands_in_and_says_so():
    """The cpu profile's peaks are measured at run time (null in the file): no roofline without them."""
    dense, x = tiny_model("vgg"), torch.zeros(1, 1, 16, 16)
    source = {"kind": "roofline", "target": "cpu", "precision": "fp32"}
    fn, label, quantity = latency_for(source, dense, x)
    assert label.startswith("predicted: MACs ratio (fallback: no roofline prediction for cpu: ")
    assert quantity == "MACs (millions), standing in for latency"
    half = tiny_model("vgg")
    assert measure("speedup", dense, half, x, latency_fn=fn)["ratio"] == pytest.approx(1.0)
