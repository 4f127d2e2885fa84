"""Deploy's selection protocol (#14): every choice on val, test read once in the final report phase,
the lossless rule with paired bootstrap bounds, intervals with n in the manifest and model card, and
outputs checked before any stage runs (#12)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from devices.deploy import holdout
from tests.devices._deploy_tiny import deploy_args, deploy_json, guard_test_split, tiny_setup
from tests.toolchain import fs_fixtures
from toolchain.cli import main
from toolchain.lossless import judge, resolution_warnings

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
readonly_dir = fs_fixtures.readonly_dir  # fixture used below


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_setup(tmp_path_factory)


@pytest.fixture(scope="module")
def guarded(tiny, tmp_path_factory):
    """One deploy (fresh cache) where *every* dataset's test split raises until the report phase."""
    root = tmp_path_factory.mktemp("deploy_protocol")
    with guard_test_split() as reads:
        summary = deploy_json(deploy_args(tiny, root / "dist", root / "cache"))
    return summary, reads


def test_deploy_reads_test_only_in_its_final_report(guarded):
    summary, reads = guarded
    assert reads and "early" not in reads, reads
    stages = list(summary["stages"])
    # the report comes after every choosing stage, reporting stages after it
    assert stages.index("test-report") > max(stages.index(s) for s in ("ratio", "prune", "calibrate", "export"))
    assert "gate-check" not in stages


def test_sealed_dataset_refuses_test_outside_the_report_phase():
    from toolchain.data.dataset import Dataset, Split

    split = Split(np.zeros((2, 4, 4, 1), np.uint8), np.array([0, 1]))
    ds = holdout.seal(Dataset("d", "", ["a", "b"], 1, {"train": split, "val": split, "test": split}, "f" * 64))
    assert ds.split("val") is split
    with pytest.raises(holdout.SealedTestSplitError):
        ds.split("test")
    with holdout.report_phase():
        assert ds.split("test") is split
    with pytest.raises(holdout.SealedTestSplitError):
        ds.splits.get("test")


def test_manifest_and_card_report_intervals_with_n(guarded):
    summary, _ = guarded
    pkg = Path(summary["package"])
    m = json.loads((pkg / "manifest.json").read_text())
    metrics = m["metrics"]
    assert metrics["split"] == "test" and metrics["n"] > 0
    for which in ("dense", "pruned", "deployed"):
        mm = metrics[which]
        for key in ("accuracy", "balanced_accuracy", "auc"):
            lo, hi = mm[f"{key}_ci"]
            assert lo <= mm[key] <= hi
        for cls, row in mm["per_class"].items():
            assert row["support"] > 0 and row["n_negative"] > 0, cls
            assert row["sensitivity_ci"][0] <= row["sensitivity"] <= row["sensitivity_ci"][1]
            assert row["specificity_ci"][0] <= row["specificity"] <= row["specificity_ci"][1]
    sel = m["selection"]
    assert sel["split"] == "val" and "paired" in sel["rule"] and sel["val"]["passes"]
    assert sel["val"]["n"] == sum(sel["val"]["support"].values())
    lo, hi = metrics["gates"]["accuracy_drop_ci_pts"]
    assert lo <= metrics["gates"]["accuracy_drop_pts"] <= hi and metrics["gates"]["n"] == metrics["n"]
    card = (pkg / "MODEL_CARD.md").read_text()
    assert "paired class-stratified bootstrap" in card and "95 % intervals" in card
    n_test = metrics["n"]
    assert f"| accuracy ({n_test}) |" in card and "95% CI" in card


def test_val_resolution_warnings_reach_manifest_and_model_card(guarded):
    """The tiny val split has 12 images per class: one image is 8.33 sensitivity points, more than the
    2-point tolerance, so deploy says so (and what to do) in the manifest and on the model card."""
    summary, _ = guarded
    pkg = Path(summary["package"])
    m = json.loads((pkg / "manifest.json").read_text())
    lines = [w for w in m["warnings"] if "val images: one image is" in w]
    assert len(lines) == 2 and all("8.33" in w and "--sens-tolerance" in w for w in lines), m["warnings"]
    assert lines == [w for w in m["selection"]["warnings"] if "val images: one image is" in w]
    card = (pkg / "MODEL_CARD.md").read_text()
    assert all(f"- **Warning:** {w}" in card for w in lines)


def test_summary_names_the_checkpoint_fingerprint(guarded):
    """deploy's summary (what deploy_runs and res224 store) names the dense checkpoint by its weights sha256."""
    from toolchain.models import recorded_sha256

    summary, _ = guarded
    m = json.loads((Path(summary["package"]) / "manifest.json").read_text())
    assert summary["checkpoint_sha256"] == recorded_sha256(summary["checkpoint"]) == m["source_checkpoint_sha256"]


def test_lossless_rule_uses_the_paired_bound():
    names = ["a", "b"]
    y = np.array([0] * 60 + [1] * 40)
    dense = np.eye(2)[y]
    same = judge(y, dense, dense.copy(), names, tolerance=1.0, sens_tolerance=2.0)
    assert same["passes"] and same["accuracy_drop_ci_pts"] == [0.0, 0.0]
    lost = dense.copy()
    lost[[60, 61]] = np.eye(2)[0]  # two class-b images now wrong: point drop 5 pts of b's sensitivity
    res = judge(y, dense, lost, names, tolerance=5.0, sens_tolerance=5.0)
    assert res["sensitivity_drop_pts"]["b"] == pytest.approx(5.0) and res["passes_point"]
    assert not res["passes"] and res["sensitivity_drop_ci_pts"]["b"][1] > 5.0  # the bound refuses it
    assert any("b sensitivity" in f for f in res["failed"])


def test_small_classes_are_flagged():
    y = np.array([0] * 200 + [1] * 20)
    lines = resolution_warnings(y, ["big", "small"], tolerance=1.0, sens_tolerance=2.0)
    assert len(lines) == 1 and "class small has 20 val images" in lines[0] and "5.00" in lines[0]
    assert "--sens-tolerance" in lines[0]


def test_readonly_out_fails_before_any_stage(tiny, tmp_path, capsys, readonly_dir):
    with pytest.raises(SystemExit) as exc:
        main(deploy_args(tiny, readonly_dir / "dist", tmp_path / "cache"))
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err, err
    assert [ln for ln in err.splitlines() if ln.startswith("medprune: error:")][0].count("\n") == 0
    assert "--out" in err and not (tmp_path / "cache" / "stages").exists()


def test_file_as_cache_fails_before_any_stage(tiny, tmp_path, capsys):
    (tmp_path / "cache").write_text("a file")
    with pytest.raises(SystemExit) as exc:
        main(deploy_args(tiny, tmp_path / "dist", tmp_path / "cache"))
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--cache" in err and "Traceback" not in err, err
