"""Deploy's held-out test split (#14): the seal has no side door, a deploy that trains its own checkpoint
reads test only in its final report too, the clinical gates refuse with the numbers (exit 3), and the
val-resolution warnings say what the user can do."""

from __future__ import annotations

import types

import numpy as np
import pytest

from devices.deploy import holdout
from devices.deploy.report import clinical_gates
from tests.conftest import write_tiny_npz
from tests.devices._deploy_tiny import LEAN, deploy_json, guard_test_split
from toolchain.errors import GateError
from toolchain.lossless import judge, resolution_warnings


def _sealed():
    from toolchain.data.dataset import Dataset, Split

    split = Split(np.zeros((2, 4, 4, 1), np.uint8), np.array([0, 1]))
    test = Split(np.ones((2, 4, 4, 1), np.uint8), np.array([0, 1]))
    return holdout.seal(Dataset("d", "", ["a", "b"], 1, {"train": split, "val": split, "test": test}, "f" * 64)), test


COPIES = {
    "dict()": lambda s: dict(s),
    "{**}": lambda s: {**s},
    "copy()": lambda s: s.copy()["test"],
    "| {}": lambda s: s | {},
    "{} |": lambda s: {} | s,
    "pop": lambda s: s.pop("test"),
    "setdefault": lambda s: s.setdefault("test"),
    "popitem": lambda s: s.popitem(),
    "values": lambda s: list(s.values()),
    "items": lambda s: list(s.items()),
}


@pytest.mark.parametrize("way", sorted(COPIES))
def test_no_copy_of_the_splits_hands_out_test_before_the_report_phase(way):
    ds, test = _sealed()
    with pytest.raises(holdout.SealedTestSplitError):
        COPIES[way](ds.splits)
    assert "test" in ds.splits and len(ds.splits) == 3  # the names stay visible, and nothing was removed
    with holdout.report_phase():
        assert dict(ds.splits)["test"] is test and {**ds.splits}["test"] is test


def test_a_sealed_copy_stays_sealed_and_sealing_twice_reads_nothing():
    ds, test = _sealed()
    copy = ds.splits.copy()
    assert isinstance(copy, holdout.SealedSplits) and copy is not ds.splits
    with pytest.raises(holdout.SealedTestSplitError):
        copy["test"]
    splits = ds.splits
    assert holdout.seal(ds).splits is splits  # no re-wrap, no read of test
    assert ds.split("val").images.shape == (2, 4, 4, 1)


def _drop(lost_b: int):
    """Paired test drops (toolchain.lossless.judge) of a model that loses ``lost_b`` of 40 class-b images."""
    y = np.array([0] * 60 + [1] * 40)
    dense = np.eye(2)[y]
    deployed = dense.copy()
    deployed[60:60 + lost_b] = np.eye(2)[0]
    return judge(y, dense, deployed, ["a", "b"], tolerance=1.0, sens_tolerance=2.0, split="test")


def test_gate_failure_is_exit_3_with_the_numbers_and_their_intervals():
    cfg = types.SimpleNamespace(tolerance=1.0, sens_tolerance=2.0, qwk_tolerance=2.0)
    with pytest.raises(GateError) as exc:
        clinical_gates(cfg, {"drop": _drop(3)})  # 3 of 100 images: 3.00 accuracy pts, 7.50 pts of b (n=40)
    msg = str(exc.value)
    assert exc.value.exit_code == 3 and "\n" not in msg
    assert "test split (n=100" in msg and "no package written" in msg
    assert "accuracy drop 3.00 pts [95% CI " in msg and "(allowed 1.0)" in msg
    assert "b sensitivity drop 7.50 pts [95% CI " in msg and "(n=40, allowed 2.0)" in msg
    assert "a sensitivity" not in msg  # class a lost nothing: only the failing figures are listed


def test_gate_pass_records_the_numbers_with_intervals_and_n():
    cfg = types.SimpleNamespace(tolerance=5.0, sens_tolerance=10.0, qwk_tolerance=2.0)
    gates = clinical_gates(cfg, {"drop": _drop(3)})
    assert gates["passed"] and gates["split"] == "test" and gates["n"] == 100
    assert gates["accuracy_drop_pts"] == pytest.approx(3.0) and gates["support"] == {"a": 60, "b": 40}
    lo, hi = gates["accuracy_drop_ci_pts"]
    assert lo <= 3.0 <= hi and gates["sensitivity_drop_ci_pts"]["b"][0] <= 7.5 <= gates["sensitivity_drop_ci_pts"]["b"][1]


def test_resolution_warnings_cover_accuracy_and_a_class_without_val_images():
    y = np.array([0] * 40 + [2] * 30)  # 70 val images: one image is 1.43 accuracy points; class 1 has none
    lines = resolution_warnings(y, ["a", "b", "c"], tolerance=1.0, sens_tolerance=5.0)
    acc = [ln for ln in lines if "accuracy points" in ln]
    assert len(acc) == 1 and "val has 70 images" in acc[0] and "1.43" in acc[0] and "raise --tolerance" in acc[0]
    assert any("class b has no val images" in ln and "add val images of it" in ln for ln in lines)
    assert not any("class a" in ln or "class c" in ln for ln in lines)  # 40 and 30 images resolve 5 pts
    assert resolution_warnings(np.array([0] * 200 + [1] * 100), ["a", "b"], 1.0, 2.0) == []


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_deploy_that_trains_reads_test_only_in_its_final_report(tmp_path):
    """No --checkpoint: stage 0 trains (1 epoch, fresh cache) under the same guard as the --checkpoint deploy,
    and the checkpoint it made carries no test metrics (training evaluated val only)."""
    from toolchain.models import read_sidecar

    npz = write_tiny_npz(tmp_path / "tinymnist.npz", n=(48, 24, 24))
    argv = ["deploy", "--model", "test_resnet", "--data", str(npz), "--img-size", "16", "--epochs", "1",
            "--out", str(tmp_path / "dist"), "--cache", str(tmp_path / "stages"), *LEAN]
    with pytest.MonkeyPatch.context() as mp, guard_test_split() as reads:
        mp.setenv("MEDPRUNE_CACHE", str(tmp_path / "cache"))  # nothing cached: deploy trains
        mp.setenv("MEDPRUNE_THREADS", "1")
        summary = deploy_json(argv)
    assert reads and "early" not in reads, reads
    weights = summary["checkpoint"]
    assert str(tmp_path / "cache") in weights  # trained by this deploy, not found elsewhere
    _, side = read_sidecar(weights)
    assert set(side["meta"]["metrics"]) == {"val"} and side["meta"]["train"]["epochs_run"] == 1
