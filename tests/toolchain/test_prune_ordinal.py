"""`medprune prune --find-lossless` on graded classes: the search also bounds the QWK drop (deploy's rule by default)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import write_tiny_npz
from tests.toolchain._byom_data import run_cli
from toolchain.ordinal import qwk_point_check
from toolchain.prune_eval import RatioEvaluator

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _metrics(accuracy: float, qwk: float | None, mae: float) -> dict:
    per_class = {g: {"sensitivity": accuracy} for g in ("g0", "g1", "g2")}
    return {"accuracy": accuracy, "per_class": per_class, "qwk": qwk, "grade_mae": mae}


def test_qwk_check_fails_a_ratio_that_keeps_accuracy():
    """Same accuracy and sensitivities, but the errors moved two grades: only the QWK bound catches it."""
    dense, pruned = _metrics(0.8, 0.90, 0.2), _metrics(0.8, 0.84, 0.4)
    ev = RatioEvaluator(ctx=None, scores={}, layers=[], qwk_tolerance=2.0)
    ev._cache.update({(0.0, "val"): dense, (0.3, "val"): pruned})  # metrics() reads its per-(ratio, split) cache
    verdict = ev.passes(0.3, "val", 1.0, 2.0)
    assert not verdict["passes"] and verdict["qwk_drop_pts"] == pytest.approx(6.0)
    assert verdict["grade_mae_increase"] == pytest.approx(0.2) and verdict["qwk_tolerance_pts"] == 2.0
    ev.qwk_tolerance = 10.0
    assert ev.passes(0.3, "val", 1.0, 2.0)["passes"]
    ev.qwk_tolerance = None  # not graded: accuracy and sensitivity only, no QWK fields
    plain = ev.passes(0.3, "val", 1.0, 2.0)
    assert plain["passes"] and "qwk_drop_pts" not in plain


def test_undefined_qwk_adds_no_condition():
    q = qwk_point_check(_metrics(0.8, None, 0.2), _metrics(0.8, None, 0.2), 0.0)
    assert q["qwk_passes"] and q["qwk_drop_pts"] is None and q["grade_mae_increase"] == 0.0


@pytest.fixture(scope="module")
def graded_ckpt(tmp_path_factory):
    from toolchain.train import TrainConfig, train

    root = tmp_path_factory.mktemp("prune_graded")
    npz = write_tiny_npz(root / "grades.npz", n=(60, 30, 30), classes=3)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDPRUNE_CACHE", str(root / "cache"))
        return train(TrainConfig(model="test_resnet", data=str(npz), img_size=16, epochs=3, batch_size=16, lr=3e-3,
                                 augment=False, patience=0, device="cpu", quiet=True, ordinal=True))


def _lossless(ckpt, tmp_path, capsys, qwk_tolerance: float, rule: str = "bound") -> dict:
    out = tmp_path / f"q{qwk_tolerance}-{rule}.json"
    # accuracy/sensitivity tolerances wide open: only the QWK bound can stop the search
    code, _, err = run_cli(["prune", "-c", ckpt, "--criterion", "magnitude", "--ratios", "0.3", "--find-lossless",
                            "--tolerance", "100", "--sens-tolerance", "100", "--qwk-tolerance", qwk_tolerance,
                            "--lossless-rule", rule, "--split", "val", "--json", out, "-q"], capsys)
    assert code == 0, err
    return json.loads(out.read_text())["lossless"]


@pytest.mark.parametrize("rule", ["bound", "point"])
def test_find_lossless_bounds_the_qwk_drop_on_val(graded_ckpt, tmp_path, capsys, cli_env, rule):
    """bound (default, deploy's): the upper 95 % bound of the QWK drop; point: the point drop."""
    loose = _lossless(graded_ckpt, tmp_path, capsys, 1000.0, rule)
    strict = _lossless(graded_ckpt, tmp_path, capsys, 0.0, rule)
    assert loose["qwk_tolerance_pts"] == 1000.0 and strict["qwk_tolerance_pts"] == 0.0
    assert loose["search_split"] == strict["search_split"] == "val"
    assert loose["ratio"] == pytest.approx(0.99)  # nothing else bounds it
    assert strict["ratio"] < loose["ratio"]  # a model with almost every unit masked loses QWK on val
    assert "QWK drop" in strict["rule"]
    for t in strict["trace"]:
        if rule == "point":
            assert "qwk_drop_pts" in t and "grade_mae_increase" in t
            assert t["passes"] == (t["qwk_drop_pts"] is None or t["qwk_drop_pts"] <= 1e-9)
        else:
            od = t["ordinal"]
            assert "qwk_drop_pts" in od and "grade_mae_increase" in od and t["n"] == 30
            assert t["passes"] == (od["qwk_drop_ci_pts"] is None or od["qwk_drop_ci_pts"][1] <= 1e-9)
    assert any(not t["passes"] for t in strict["trace"])


def test_negative_qwk_tolerance_is_one_line(graded_ckpt, capsys, cli_env):
    code, _, err = run_cli(["prune", "-c", graded_ckpt, "--find-lossless", "--qwk-tolerance", "-1"], capsys)
    assert code == 2 and "--qwk-tolerance" in err and "Traceback" not in err
