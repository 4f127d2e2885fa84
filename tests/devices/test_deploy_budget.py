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


def _deploy_half_macs(tmp_path_factory, name: str) -> tuple[dict, dict]:
    """``(summary, manifest)`` of a tiny deploy to half the dense MACs, 1 recovery epoch, loose gates."""
    tiny = tiny_setup(tmp_path_factory)
    root = tmp_path_factory.mktemp(name)
    argv = deploy_args(tiny, root / "dist", root / "cache", "--macs-budget", "0.5", "--recover-epochs", "1",
                       "--granularity", "group", "--tolerance", "50", "--sens-tolerance", "100")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit) as exc:
        main([*argv, "--json"])
    assert exc.value.code == 0
    summary = json.loads(buf.getvalue())
    return summary, json.loads((Path(summary["package"]) / "manifest.json").read_text())


def test_deploy_to_a_macs_budget_records_budget_and_recovery(tmp_path_factory):
    summary, manifest = _deploy_half_macs(tmp_path_factory, "deploy_budget")
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
    assert rec["budget"] == {"kind": "macs", "value": 0.5, "met": True, "passes_at_budget": True}
    assert rec["measured"]["reduction"] >= 2.0 and rec["measured"]["label"] == "counted"
    # the one recovery recipe, with the --recover-epochs override
    assert rec["recipe"] == {**pruning["recovery"]["recipe"], "epochs": 1} and rec["recipe"]["ce_weight"] == 0.0


def test_deploy_refuses_two_budgets(tmp_path_factory, capsys):
    tiny = tiny_setup(tmp_path_factory)
    root = tmp_path_factory.mktemp("deploy_budget_err")
    with pytest.raises(SystemExit) as exc:
        main(deploy_args(tiny, root / "dist", root / "cache", "--macs-budget", "0.5", "--speedup", "2"))
    assert exc.value.code == 2 and "one budget" in capsys.readouterr().err


def test_budget_model_failing_on_val_backs_off_to_the_best_passing(tmp_path_factory, monkeypatch):
    """The budget's recovered model fails deploy's rule on val (forced): the ratio backs off, the first
    passing recovered model is packaged and labelled; the budget is recorded as not met."""
    import devices.deploy.recover as recover

    calls = []

    def judge(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(out)
        return out if len(calls) > 1 else {**out, "passes": False, "failed": ["forced failure"]}

    real = recover.judge
    monkeypatch.setattr(recover, "judge", judge)
    _, manifest = _deploy_half_macs(tmp_path_factory, "deploy_backoff")
    rec, sel = manifest["recovery"], manifest["selection"]
    first, second = rec["attempts"]
    assert not first["passes"] and second["passes"] and second["ratio"] == round(first["ratio"] * 0.75, 2)
    assert rec["budget"]["met"] is False and rec["budget"]["passes_at_budget"] is False
    assert sel["ratio"] == second["ratio"] == manifest["pruning"]["ratio"]
    assert rec["measured"]["reduction"] == pytest.approx(second["cost"]["ratio"])
    assert second["cost"]["ratio"] < first["cost"]["ratio"]
    assert any("packaged the best budget passing on val" in w for w in manifest["warnings"])
