"""`medprune deploy --macs-budget/--speedup`: pruned to the budget, recovered by distillation, judged on val,
and the manifest records the budget, its measured cost and the recovery recipe."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from tests.devices._deploy_tiny import deploy_args, tiny_setup
from toolchain.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_deploy_to_a_macs_budget_records_budget_and_recovery(tmp_path_factory):
    tiny = tiny_setup(tmp_path_factory)
    root = tmp_path_factory.mktemp("deploy_budget")
    argv = deploy_args(tiny, root / "dist", root / "cache", "--macs-budget", "0.5", "--recover-epochs", "1",
                       "--granularity", "group", "--tolerance", "50", "--sens-tolerance", "100")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit) as exc:
        main([*argv, "--json"])
    assert exc.value.code == 0
    summary = json.loads(buf.getvalue())
    manifest = json.loads((Path(summary["package"]) / "manifest.json").read_text())
    pruning = manifest["pruning"]
    assert pruning["budget"] == {"kind": "macs", "value": 0.5}
    assert pruning["recovery"]["recipe"]["epochs"] == 1 and pruning["compare"]["macs"]["ratio"] >= 2.0
    sel = manifest["selection"]
    assert sel["mode"] == "budget" and sel["budget"]["met"] and sel["split"] == "val"
    assert "stages" in summary and "recover" in summary["stages"] and "budget" in summary["stages"]
    # dense, pruned-before-recovery and recovered metrics on test, each with intervals and n
    metrics, n = manifest["metrics"], manifest["metrics"]["n"]
    for which in ("dense", "pruned_before_recovery", "pruned"):
        assert len(metrics[which]["accuracy_ci"]) == 2 and metrics[which]["n"] == n
    assert metrics["val_before_recovery"]["accuracy"] is not None
    rec = manifest["recovery"]
    assert rec["budget"] == {"kind": "macs", "value": 0.5, "met": True}
    assert rec["measured"]["reduction"] >= 2.0 and rec["measured"]["label"] == "counted"
    # the one recovery recipe, with the --recover-epochs override
    assert rec["recipe"] == {**pruning["recovery"]["recipe"], "epochs": 1} and rec["recipe"]["ce_weight"] == 0.0


def test_deploy_refuses_two_budgets(tmp_path_factory, capsys):
    tiny = tiny_setup(tmp_path_factory)
    root = tmp_path_factory.mktemp("deploy_budget_err")
    with pytest.raises(SystemExit) as exc:
        main(deploy_args(tiny, root / "dist", root / "cache", "--macs-budget", "0.5", "--speedup", "2"))
    assert exc.value.code == 2 and "one budget" in capsys.readouterr().err
