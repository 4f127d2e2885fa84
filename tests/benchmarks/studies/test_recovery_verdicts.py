"""Recovery verdicts: bootstrap p from the interval's own draws, Holm over one state's table, taylor tallied
apart from attribution, both tallies rendered (also in the selection design's preface)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.studies import _recovery_report as rep
from benchmarks.studies import _recovery_verdicts as vrd
from benchmarks.studies import _selection_report as sel
from tests.benchmarks.studies.recovery_fixtures import Y, pred
from tests.benchmarks.studies.recovery_fixtures import fake_cell as _cell
from tests.benchmarks.studies.recovery_fixtures import fake_run as _run


def test_bootstrap_p_is_two_sided_and_floored_at_one_over_b_plus_one():
    assert vrd.bootstrap_p([1.0, 2.0, 3.0, -1.0]) == pytest.approx(0.5)  # 2 * min(1/4, 3/4)
    assert vrd.bootstrap_p([0.5] * 9) == pytest.approx(0.1)  # no replicate <= 0: floored at 1/(9+1)
    assert vrd.bootstrap_p([0.0] * 5) == 1.0  # both tails hold every replicate: capped at 1
    with pytest.raises(ValueError):
        vrd.bootstrap_p([np.nan])


def test_holm_multiplies_the_ith_smallest_by_m_minus_i_and_keeps_the_input_order():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> monotone 0.02, 0.03, 0.06, 0.06
    assert vrd.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert vrd.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # 0.5 x 2 capped at 1; 0.9 x 1 raised to keep order
    assert vrd.holm([]) == []
    with pytest.raises(ValueError):
        vrd.holm([0.2, 1.5])


def test_taylor_is_its_own_group_and_attribution_is_read_from_the_claims_constant():
    from benchmarks.studies.paper.claims import ATTRIBUTION

    assert vrd.GROUPS["attribution"] == tuple(ATTRIBUTION) and "taylor" not in vrd.GROUPS["attribution"]
    assert vrd.group_of("taylor") == "medprune taylor" and vrd.group_of("lrp") == "attribution"
    assert vrd.group_of("tp-taylor") is None  # a peer


def _verdicts(peers: list[str], wrong: int) -> list[dict]:
    """lrp and taylor exact on all 200 images, each peer misclassifying ``wrong`` class-1 images."""
    cells = [_cell("lrp", 3, 3.0, 0), _cell("taylor", 3, 3.0, 0)] + [_cell(p, 3, 3.0, wrong) for p in peers]
    return rep.summarise_run(_run(cells))["verdicts"]


def test_an_effect_significant_alone_is_a_tie_after_holm_over_the_states_table():
    # 5 of 160 class-1 images: P(none drawn) ~ e^-5, so p ~ 0.013: below 0.05 alone or x2, not x10
    alone = _verdicts(["random"], 5)
    assert [v["verdict"] for v in alone] == ["win", "win"] and all(v["family"] == 2 for v in alone)
    crowd = _verdicts(["random", "tp-hessian", "tp-lamp", "tp-magnitude", "tp-taylor"], 5)
    assert len(crowd) == 10 and all(v["family"] == 10 for v in crowd)
    assert all(v["verdict_unadjusted"] == "win" and v["p"] < 0.05 for v in crowd)  # each interval excludes 0
    assert all(v["verdict"] == "tie" and v["p_holm"] >= 0.05 for v in crowd)  # none survives the correction
    assert all(v["n_boot"] >= vrd.n_boot_for(10, rep.N_BOOT) for v in crowd)
    # a large effect survives: the floor 1/(B+1) times m stays far below alpha
    strong = _verdicts(["random", "tp-hessian", "tp-lamp", "tp-magnitude", "tp-taylor"], 40)
    assert all(v["verdict"] == "win" and v["p_holm"] < 0.01 for v in strong)


def test_taylor_is_never_tallied_as_attribution_and_both_tallies_are_shown():
    verdicts = _verdicts(["random", "tp-taylor"], 40)
    assert {(v["criterion"], v["group"]) for v in verdicts} == {("lrp", "attribution"), ("taylor", "medprune taylor")}
    t = vrd.tally(verdicts, "kd")
    assert t["attribution"]["holm"] == {"win": 2} and t["medprune taylor"]["holm"] == {"win": 2}
    text = "\n".join(vrd.markdown(verdicts, rep.STATES))
    assert ("Tally, recovery KD (m = 4): attribution: Holm win 2 tie 0 lose 0 (unadjusted win 2 tie 0 lose 0); "
            "medprune taylor: Holm win 2 tie 0 lose 0 (unadjusted win 2 tie 0 lose 0)") in text
    assert "Holm–Bonferroni" in text and "| taylor | medprune taylor | random |" in text


def test_p_and_interval_come_from_the_same_draws_as_paired_bootstrap_diff():
    from toolchain.intervals import stratified_counts
    from toolchain.metrics import paired_bootstrap_diff

    pa, pb = pred(3), pred(9)
    pb[:4] = np.eye(2)[[1, 1, 1, 1]]  # class-0 errors too, so both strata move
    d = vrd.paired_test(Y, list(stratified_counts(Y, 600, seed=0)), pa, pb)
    ref = paired_bootstrap_diff(Y, pa, pb, "accuracy", n_boot=600, seed=0)
    assert d["ci"] == pytest.approx(ref["ci"]) and d["diff"] == pytest.approx(ref["diff"]) and d["n_boot"] == 600


def test_selection_preface_tallies_old_documents_without_holm_as_not_available():
    old = [{"criterion": "lrp", "peer": "random", "state": "kd", "verdict": "win"},
           {"criterion": "taylor", "peer": "random", "state": "kd", "verdict": "lose"}]
    text = sel._verdicts({"verdicts": sel._tally(old, "kd")})
    assert text == ("attribution: Holm n/a (assembled before the correction) (unadjusted win 1 tie 0 lose 0); "
                    "medprune taylor: Holm n/a (assembled before the correction) (unadjusted win 0 tie 0 lose 1)")
    assert sel._verdicts({"verdicts": {}}) == "none"
