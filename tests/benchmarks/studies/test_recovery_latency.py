"""Recovery report at equal measured latency: pairing by measured speedup, the dominance verdicts with the Holm
correction (and the unadjusted rule beside it), the Pareto front, and the val drops bootstrapped once per row."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.studies import _recovery_latency as lat
from benchmarks.studies import _recovery_report as rep
from benchmarks.studies import _recovery_verdicts as ver
from tests.benchmarks.studies.recovery_fixtures import Y
from tests.benchmarks.studies.recovery_fixtures import fake_cell as _cell
from tests.benchmarks.studies.recovery_fixtures import fake_run as _run


def test_neighbours_are_the_nearest_peer_cells_not_faster_and_not_slower():
    peer = [2.5, 4.0, 3.2]
    assert lat.neighbours(3.0, peer) == (0, 2)
    assert lat.neighbours(2.0, peer) == (None, 0)
    assert lat.neighbours(5.0, peer) == (1, None)
    assert lat.neighbours(3.2, peer) == (2, 2)  # an equally fast peer cell is on both sides


def test_verdict_needs_dominance_and_says_tie_when_the_peer_curve_is_not_monotone():
    above, below, zero = {"ci_pts": [1.0, 3.0]}, {"ci_pts": [-3.0, -1.0]}, {"ci_pts": [-1.0, 1.0]}
    assert lat.verdict(above, zero) == "win" and lat.verdict(None, below) == "lose"
    assert lat.verdict(above, below) == "tie" and lat.verdict(zero, zero) == "tie"
    assert lat.verdict(None, None) == "n/a" and lat.verdict(above, None) == "win"


def test_cells_are_paired_by_measured_speedup_not_by_macs_target():
    # lrp ÷5 measured x5.3; the peer's ÷5 cell is x6.2 (faster) and its ÷3 cell x5.0 (slower)
    cells = [_cell("lrp", 5, 5.3, 0), _cell("tp-taylor", 5, 6.2, 0), _cell("tp-taylor", 3, 5.0, 30),
             _cell("random", 5, 4.0, 0), _cell("random", 8, 7.0, 40)]
    rows = rep.summarise_run(_run(cells))["rows"]
    by_peer = {e["peer"]: e for e in lat.table(_run(cells), rows, "kd", n_boot=200)}
    tp = by_peer["tp-taylor"]
    assert tp["vs_not_faster"]["peer_target"] == 3 and tp["vs_not_slower"]["peer_target"] == 5
    assert tp["vs_not_faster"]["diff_pts"] == pytest.approx(15.0)  # 30 of 200 images
    assert tp["vs_not_faster"]["ci_pts"][0] > 0 and tp["verdict"] == "win"
    rnd = by_peer["random"]  # random's x4.0 cell is as accurate and slower, its x7.0 cell less accurate
    assert rnd["vs_not_faster"]["diff_pts"] == pytest.approx(0.0) and rnd["verdict"] == "tie"


def test_a_faster_and_more_accurate_peer_cell_dominates():
    cells = [_cell("taylor", 3, 3.0, 20), _cell("tp-magnitude", 3, 3.4, 0)]
    [e] = lat.table(_run(cells), rep.summarise_run(_run(cells))["rows"], "kd", n_boot=200)
    assert e["vs_not_faster"] is None and e["vs_not_slower"]["peer_speedup"] == 3.4 and e["verdict"] == "lose"
    text = "\n".join(lat.markdown([e], "KD"))
    assert "| lose | lose |" in text and "n=200" in text
    assert "Tally at equal measured latency (m = 1): medprune taylor: Holm win 0 tie 0 lose 1 (unadjusted win 0 " \
           "tie 0 lose 1)" in text


def test_holm_turns_a_marginal_unadjusted_win_into_a_tie_and_keeps_a_clear_one():
    """lrp x3.0 against four peers' slower cells (x2.9): 30 of 200 images better than random (survives), 4 better
    than tp-magnitude (the 95 % interval excludes 0, p ~ 0.035, but Holm multiplies it by 3 in a family of 4),
    as accurate as tp-taylor and tp-lamp (p = 1)."""
    cells = [_cell("lrp", 3, 3.0, 0), _cell("random", 3, 2.9, 30), _cell("tp-magnitude", 3, 2.9, 4),
             _cell("tp-taylor", 3, 2.9, 0), _cell("tp-lamp", 3, 2.9, 0)]
    run = _run(cells)
    entries = lat.table(run, rep.summarise_run(run)["rows"], "kd", n_boot=1000)
    by_peer = {e["peer"]: e for e in entries}
    sides = [e["vs_not_faster"] for e in entries]
    assert all(e["vs_not_slower"] is None for e in entries) and {s["family"] for s in sides} == {4}
    # one family: each side's Holm p is holm() over the table's p-values; B grows with it (>= 200 m)
    assert [s["p_holm"] for s in sides] == pytest.approx(ver.holm([s["p"] for s in sides]))
    assert {s["n_boot"] for s in sides} == {ver.n_boot_for(4, 1000)} and ver.n_boot_for(4, 1000) >= 200 * 4
    marginal = by_peer["tp-magnitude"]
    assert marginal["vs_not_faster"]["diff_pts"] == pytest.approx(2.0) and marginal["vs_not_faster"]["ci_pts"][0] > 0
    assert marginal["vs_not_faster"]["p"] < 0.05 <= marginal["vs_not_faster"]["p_holm"]
    assert (marginal["verdict_unadjusted"], marginal["verdict"]) == ("win", "tie")
    clear = by_peer["random"]
    assert clear["vs_not_faster"]["p_holm"] < 0.05 and (clear["verdict_unadjusted"], clear["verdict"]) == ("win", "win")
    assert {by_peer[p]["verdict"] for p in ("tp-taylor", "tp-lamp")} == {"tie"}
    text = "\n".join(lat.markdown(entries, "KD"))
    assert "| lrp | attribution | 3 | ×3.00 | tp-magnitude |" in text and "| tie | win |" in text
    assert "attribution: Holm win 1 tie 3 lose 0 (unadjusted win 2 tie 2 lose 0)" in text


def test_the_holm_verdict_of_each_side_decides_dominance():
    def side(diff, lo, hi, p_holm):
        return {"diff_pts": diff, "ci_pts": [lo, hi], "p_holm": p_holm}

    marginal_up, clear_down = side(2.0, 0.5, 4.0, 0.07), side(-5.0, -8.0, -2.0, 0.001)
    assert lat.verdict(marginal_up, None) == "win" and lat.verdict(marginal_up, None, adjusted=True) == "tie"
    # unadjusted both sides are significant (non-monotone peer curve: tie); corrected only the faster peer cell is
    assert lat.verdict(marginal_up, clear_down) == "tie" and lat.verdict(marginal_up, clear_down, adjusted=True) == "lose"


def test_pareto_front_keeps_the_undominated_points():
    pts = [(2.0, 0.90), (3.0, 0.89), (3.0, 0.85), (4.0, 0.80), (2.5, 0.88)]
    assert lat.pareto_front(pts) == [0, 1, 3]


def test_report_bootstraps_each_rows_val_drops_once(monkeypatch):
    """The operating-point table reuses the drops deploy's rule computed for the row (review leftover)."""
    import toolchain.lossless as lossless

    cells = [_cell("lrp", 3, 3.0, 0)]
    kd_val = cells[0]["probs"]["kd/val"]
    real, calls = lossless.drops, []

    def counting(y, p_dense, p_pruned, *a, **k):
        calls.append(len(y) == len(Y) and np.array_equal(np.asarray(p_pruned), kd_val))
        return real(y, p_dense, p_pruned, *a, **k)

    monkeypatch.setattr(lossless, "drops", counting)
    doc = rep.build([_run(cells)], {"criteria": ["lrp"], "macs": [3.0], "threads": 1}, "cmd", "now")
    m = doc["models"]["tiny:vgg19"]
    assert len(m["operating_point"]) == 1 and m["equal_latency"] == []
    # val and test share the images here, so the operating point's test call matches too: 1 (rule) + 1 (test)
    assert sum(calls) == 2
    assert m["operating_point"][0]["val"]["sensitivity_drop_ci_pts"] == m["rows"][0]["val"]["sensitivity_drop_ci_pts"]


def test_report_writes_the_pareto_figure_and_the_equal_latency_table(tmp_path):
    cells = [_cell("lrp", 3, 3.0, 0), _cell("tp-taylor", 3, 3.4, 10)]
    run = _run(cells)
    doc = rep.build([run], {"criteria": ["lrp", "tp-taylor"], "macs": [3.0], "threads": 1}, "cmd", "now")
    rep.write(doc, [run], tmp_path)
    text = (tmp_path / "recovery.md").read_text()
    assert "Equal measured latency (KD" in text and "Holm–Bonferroni over the m = 1 distinct" in text
    assert "attribution: Holm win 0 tie 1 lose 0 (unadjusted win 0 tie 1 lose 0)" in text
    assert (tmp_path / "recovery.png").read_bytes()[:4] == b"\x89PNG"
