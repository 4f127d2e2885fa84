"""Graded labels through train → evaluate → prune → deploy (QWK and grade MAE with intervals in metrics,
tables, manifest, model card and the gates), and the model card's data text coming from the dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from devices.deploy.description import NONE_GIVEN, dataset_description, find_description
from devices.deploy.report import clinical_gates
from tests.conftest import write_tiny_npz
from tests.devices._deploy_tiny import deploy_json
from tests.toolchain._byom_data import run_cli
from toolchain.errors import ConfigError, GateError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
DESCRIPTION = "Tiny graded test images: three brightness grades, one synthetic source, made by the test suite."
CHEST_WORDS = ("chest", "pneumonia", "x-ray", "paediatric")


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """A 3-grade npz with a description beside it and a test_resnet trained on it with --ordinal."""
    from toolchain.train import TrainConfig, train

    root = tmp_path_factory.mktemp("graded")
    npz = write_tiny_npz(root / "tinygrades.npz", n=(60, 30, 30), classes=3)
    (root / "tinygrades.DESCRIPTION.md").write_text(DESCRIPTION + "\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDPRUNE_CACHE", str(root / "cache"))
        ckpt = train(TrainConfig(model="test_resnet", data=str(npz), img_size=16, epochs=3, batch_size=16, lr=3e-3,
                                 augment=False, patience=0, device="cpu", quiet=True, ordinal=True,
                                 select_metric="qwk"))
    return {"root": root, "npz": npz, "ckpt": ckpt}


def test_training_records_graded_metrics(graded):
    from toolchain.models import checkpoint_meta

    meta = checkpoint_meta(graded["ckpt"])
    assert meta["ordinal"] is True and meta["train_config"]["ordinal"] is True
    assert meta["train"]["select_metric"] == "qwk"  # the epoch with the best val QWK
    for split in ("val", "test"):
        m = meta["metrics"][split]
        assert -1.0 <= m["qwk"] <= 1.0 and m["qwk_ci"][0] <= m["qwk"] <= m["qwk_ci"][1]
        assert m["grade_mae"] >= 0.0 and len(m["grade_mae_ci"]) == 2


def test_evaluate_and_prune_report_qwk(graded, tmp_path, capsys, cli_env):
    code, out, err = run_cli(["evaluate", "-c", graded["ckpt"], "--json", tmp_path / "m.json"], capsys)
    assert code == 0, err
    assert "QWK" in out and "grade MAE" in out  # inherited from the checkpoint: no flag needed
    assert "qwk_ci" in json.loads((tmp_path / "m.json").read_text())["metrics"]
    code, out, err = run_cli(["prune", "-c", graded["ckpt"], "--criterion", "magnitude", "--ratios", "0.3",
                              "--json", tmp_path / "p.json"], capsys)
    assert code == 0, err
    assert "QWK" in out and "grade MAE" in out


def test_ordinal_needs_three_grades(tmp_path, capsys, cli_env):
    npz = write_tiny_npz(tmp_path / "two.npz")
    code, _, err = run_cli(["train", "--data", npz, "--select", "qwk"], capsys)
    assert code == 2 and "--select qwk needs --ordinal" in err
    code, _, err = run_cli(["train", "--model", "test_resnet", "--data", npz, "--img-size", "16", "--epochs", "1",
                            "--ordinal", "--device", "cpu", "-q"], capsys)
    assert code == 2 and "at least 3 graded classes" in err and "Traceback" not in err


def test_deploy_gates_and_card_use_graded_metrics_and_the_description(graded, tmp_path):
    summary = deploy_json(["deploy", "--checkpoint", str(graded["ckpt"]), "--data", str(graded["npz"]),
                           "--out", str(tmp_path / "dist"), "--cache", str(tmp_path / "cache"), "--n-per-class", "3",
                           "--pool-per-class", "12", "--fidelity-images", "0", "--bench-runs", "3",
                           "--criterion", "magnitude", "--ratio", "0.2", "--tolerance", "100", "--sens-tolerance", "100",
                           "--qwk-tolerance", "100"])
    pkg = Path(summary["package"])
    manifest = json.loads((pkg / "manifest.json").read_text())
    for which in ("dense", "deployed"):
        assert "qwk" in manifest["metrics"][which] and "grade_mae_ci" in manifest["metrics"][which]
    gates = manifest["metrics"]["gates"]
    assert gates["qwk_tolerance_pts"] == 100 and gates["qwk_drop_ci_pts"][0] <= gates["qwk_drop_pts"]
    val = manifest["selection"]["val"]  # the val rule bounds the QWK drop too
    assert "QWK" in manifest["selection"]["rule"] and val["qwk_tolerance_pts"] == 100
    assert val["ordinal"]["qwk_drop_ci_pts"][0] <= val["ordinal"]["qwk_drop_pts"] <= val["ordinal"]["qwk_drop_ci_pts"][1]
    assert manifest["dataset"]["description"]["source"] == "beside the data: tinygrades.DESCRIPTION.md"
    card = (pkg / "MODEL_CARD.md").read_text()
    assert DESCRIPTION in card and "| qwk (30) |" in card and "| grade_mae (30) |" in card and "QWK drop" in card
    assert not [w for w in CHEST_WORDS if w in card.lower()]


def _report(qwk_drop: float) -> dict:
    drop = {"n": 30, "accuracy_drop_pts": 0.0, "accuracy_drop_ci_pts": [0.0, 0.0], "sensitivity_drop_pts": {},
            "sensitivity_drop_ci_pts": {}, "support": {}}
    od = {"qwk_drop_pts": qwk_drop, "qwk_drop_ci_pts": [qwk_drop - 1, qwk_drop + 1], "grade_mae_increase": 0.1,
          "grade_mae_increase_ci": [0.0, 0.2]}
    return {"drop": drop, "ordinal_drop": od}


def test_qwk_gate_passes_and_fails_on_its_tolerance():
    from types import SimpleNamespace

    cfg = SimpleNamespace(tolerance=1.0, sens_tolerance=2.0, qwk_tolerance=2.0)
    gates = clinical_gates(cfg, _report(1.5))
    assert gates["qwk_drop_pts"] == 1.5 and gates["qwk_tolerance_pts"] == 2.0
    with pytest.raises(GateError, match=r"QWK drop 3.00 pts .*allowed 2.0"):
        clinical_gates(cfg, _report(3.0))
    assert "qwk_drop_pts" not in clinical_gates(cfg, {"drop": _report(0)["drop"]})  # not graded: no QWK gate


def test_description_sources(tmp_path):
    from types import SimpleNamespace

    folder = tmp_path / "xrays"
    folder.mkdir()
    ds = SimpleNamespace(source=str(folder), name="xrays")
    assert find_description(folder, "xrays") is None
    none = dataset_description(ds)
    assert none["source"] is None and none["text"] == NONE_GIVEN
    (folder / "DESCRIPTION.md").write_text("Knee radiographs from two sites.\n")
    assert dataset_description(ds)["text"] == "Knee radiographs from two sites."
    given = tmp_path / "card.md"
    given.write_text("Fundus photographs, graded 0-4.")
    assert dataset_description(ds, given)["source"] == "--data-description"
    medmnist = dataset_description(SimpleNamespace(source=str(tmp_path / "breastmnist_64.npz"), name="breastmnist_64"))
    assert "ultrasound" in medmnist["text"] and not [w for w in CHEST_WORDS if w in medmnist["text"].lower()]
    for bad, needle in (("", "is empty"), ("x" * 30_000, "at most"), (b"\xff\xfe", "not UTF-8")):
        path = tmp_path / "bad.md"
        path.write_bytes(bad.encode() if isinstance(bad, str) else bad)
        with pytest.raises(ConfigError, match=needle):
            dataset_description(ds, path)
    with pytest.raises(ConfigError, match="unreadable"):
        dataset_description(ds, tmp_path / "missing.md")


def test_bad_data_description_stops_deploy_before_any_work(graded, tmp_path, capsys):
    code, _, err = run_cli(["deploy", "--checkpoint", graded["ckpt"], "--data", graded["npz"], "--out",
                            tmp_path / "dist", "--cache", tmp_path / "cache", "--data-description",
                            tmp_path / "nope.md"], capsys)
    assert code == 2 and "data description" in err and "Traceback" not in err
    assert not (tmp_path / "dist").exists() or not any((tmp_path / "dist").iterdir())


def test_val_rule_with_a_qwk_bound():
    from toolchain.lossless import judge
    from toolchain.ordinal import with_qwk_bound

    y = np.repeat([0, 1, 2], 20)
    dense = np.eye(3)[y]
    shifted = np.eye(3)[np.where(np.arange(60) % 4 == 0, 2 - y, y)]  # a quarter of the grades mirrored
    verdict = judge(y, dense, shifted, ["g0", "g1", "g2"], tolerance=100, sens_tolerance=100)
    assert verdict["passes"]
    strict = with_qwk_bound(verdict, y, dense, shifted, qwk_tolerance=1.0)
    assert not strict["passes"] and "QWK drop up to" in strict["failed"][-1] and strict["ordinal"]["qwk_drop_pts"] > 1
    assert with_qwk_bound(verdict, y, dense, shifted, qwk_tolerance=100.0)["passes"]
    assert with_qwk_bound(verdict, y, dense, dense, qwk_tolerance=0.0)["passes"]  # nothing changed: no drop


def test_added_stage_fields_keep_earlier_keys():
    from devices.deploy.report import FinalReport

    base = dict(checkpoint="c", data="d", pruned="p", deployed="q", tolerance=1.0, sens_tolerance=2.0, seed=0)
    assert "ordinal" not in FinalReport(**base).key()  # the key every earlier test-report was cached under
    assert FinalReport(**base, ordinal=True).key()["ordinal"] is True
