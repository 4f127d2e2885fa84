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


def _deploy_half_macs(tmp_path_factory, name: str, *extra: str, root: Path | None = None,
                      code: int = 0) -> tuple[dict, dict, str]:
    """``(summary, manifest, stderr)`` of a tiny deploy to half the dense MACs, 1 recovery epoch, loose gates."""
    tiny = tiny_setup(tmp_path_factory)
    root = root or tmp_path_factory.mktemp(name)
    argv = deploy_args(tiny, root / "dist", root / "cache", "--macs-budget", "0.5", "--recover-epochs", "1",
                       "--granularity", "group", "--tolerance", "50", "--sens-tolerance", "100", *extra)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exc:
        main([*argv, "--json"])
    assert exc.value.code == code, err.getvalue()[-2000:]
    if code:
        return {}, {}, err.getvalue()
    summary = json.loads(out.getvalue())
    return summary, json.loads((Path(summary["package"]) / "manifest.json").read_text()), err.getvalue()


def test_deploy_to_a_macs_budget_records_budget_and_recovery(tmp_path_factory):
    summary, manifest, _ = _deploy_half_macs(tmp_path_factory, "deploy_budget")
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


def _failing_first(monkeypatch, n: int):
    """deploy's val rule, forced to fail on its first ``n`` verdicts (the rest are the real ones)."""
    import devices.deploy.recover as recover

    real, calls = recover.judge, []

    def judge(*args, **kwargs):
        calls.append(real(*args, **kwargs))
        return calls[-1] if len(calls) > n else {**calls[-1], "passes": False, "failed": ["forced failure"]}

    monkeypatch.setattr(recover, "judge", judge)


def test_recovery_recipe_is_chosen_on_val_among_the_candidates(tmp_path_factory, monkeypatch):
    _failing_first(monkeypatch, 1)  # pure distillation fails at the budget; the next candidate passes
    _, manifest, _ = _deploy_half_macs(tmp_path_factory, "deploy_recipe_choice")
    rec, sel = manifest["recovery"], manifest["selection"]
    assert [(a["recipe"], a["passes"]) for a in rec["attempts"]] == [("kd", False), ("kd+ce+augment", True)]
    assert sel["recovery_recipe"] == "kd+ce+augment" and rec["budget"]["met"] is True
    assert rec["recipe"]["ce_weight"] == 1.0 and rec["recipe"]["augment"] is True
    assert any("recovery recipe chosen on val: kd+ce+augment" in w and w.endswith("kd: forced failure)")
               for w in manifest["warnings"])


def test_budget_failing_on_val_stops_before_test_unless_asked_to_ship_the_best_passing(tmp_path_factory,
                                                                                        monkeypatch):
    """Both recipes fail at the budget: exit 3 before test is read (deploy seals it: a read would raise),
    naming the best budget passing on val; --ship-best-passing packages that one, labelled."""
    _failing_first(monkeypatch, 2)
    root = tmp_path_factory.mktemp("deploy_backoff")
    _, _, err = _deploy_half_macs(tmp_path_factory, "", root=root, code=3)
    assert "not met on val" in err and "best passing on val" in err and "Test not read, no package" in err
    assert not any((root / "dist").glob("*"))
    # the same run, asked to ship the best passing budget (every verdict above is cached: none is recomputed)
    _, manifest, _ = _deploy_half_macs(tmp_path_factory, "", "--ship-best-passing", root=root)
    rec, sel = manifest["recovery"], manifest["selection"]
    budget_ratio = rec["attempts"][0]["ratio"]
    assert [(a["recipe"], a["passes"]) for a in rec["attempts"]] == [("kd", False), ("kd+ce+augment", False),
                                                                   ("kd", True)]
    assert sel["ratio"] == rec["attempts"][2]["ratio"] == round(budget_ratio * 0.75, 2) == manifest["pruning"]["ratio"]
    assert rec["budget"]["met"] is False and rec["budget"]["passes_at_budget"] is False
    assert rec["measured"]["reduction"] == pytest.approx(rec["attempts"][2]["cost"]["ratio"])
    assert rec["attempts"][2]["cost"]["ratio"] < rec["attempts"][0]["cost"]["ratio"]
    assert any("packaged the best budget passing on val" in w for w in manifest["warnings"])


def test_budget_no_ratio_passing_on_val_is_refused(tmp_path_factory, monkeypatch):
    _failing_first(monkeypatch, 100)
    _, _, err = _deploy_half_macs(tmp_path_factory, "deploy_none_pass", code=3)
    assert "not met on val" in err and "no smaller budget tried passes either" in err
