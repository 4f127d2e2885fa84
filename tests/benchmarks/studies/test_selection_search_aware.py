"""benchmarks.studies._selection_search_aware: the post-hoc search-aware choice over a selection-split pool, from
cached val probabilities checked against the committed 95 % bounds, with the committed test figures only."""

from __future__ import annotations

import json

import pytest

from benchmarks.studies import _selection_search_aware as sa
from tests.toolchain.test_lossless_search_aware import _pair
from toolchain.lossless import judge

NAMES = ["a", "b"]
GATES = (3.0, 6.0)  # points: the synthetic pools have 300 val images (150 per class)
SHA, FP = "ab" * 32, "cd" * 32
# MACs ÷ -> discordant val images: ÷6 passes at 95 % but not at k = 5, ÷5 fails both, ÷4 and below pass both
POOL = {6.0: 16, 5.0: 40, 4.0: 4, 3.0: 0, 2.0: 0}


def _row(target: float, discordant: int) -> dict:
    y, dense, pruned = _pair(discordant, 150)
    v = judge(y, dense, pruned, NAMES, tolerance=GATES[0], sens_tolerance=GATES[1])  # what the report committed
    return {"criterion": "lrp", "target_macs_div": target, "state": "kd", "macs_ratio": target + 0.1,
            "speedup_ort": target / 2, "macs": int(1000 / target),
            "val": {"accuracy_drop_ci_pts": v["accuracy_drop_ci_pts"],
                    "sensitivity_drop_ci_pts": v["sensitivity_drop_ci_pts"], "passes_bound": v["passes"],
                    "balanced_accuracy": 0.9},
            "test": {"accuracy_drop_pts": {"value": 0.5 * target, "ci": [0.0, target]},
                     "worst_sensitivity_drop_pts": {"value": 0.2, "ci": [0.0, 1.0]}, "n": 123}}


def _cache(root, rows, corrupt: float | None = None, drop: float | None = None) -> None:
    y, dense, _ = _pair(0, 150)
    (root / f"dense-{SHA[:16]}-{FP[:12]}.json").write_text(json.dumps(
        {"dense": {"val": dense.tolist()}, "labels": {"val": y.tolist()}}))
    for r in rows:
        t = r["target_macs_div"]
        if t == drop:
            continue
        _, _, pruned = _pair(POOL[t] + (2 if t == corrupt else 0), 150)
        cell = {"speedup_ort": r["speedup_ort"], "macs": {"pruned": r["macs"]}, "probs": {"kd/val": pruned.tolist()}}
        (root / f"toy-tiny-lrp-{t:g}-0123456789ab.json").write_text(json.dumps(cell))


def _doc(rows) -> dict:
    prereg = {"criterion": "lrp", "target": 6.0, "macs_ratio": 6.1, "speedup_ort": 3.0, "holds_on_test": False}
    return {"models": {"toy:tiny": {"headline": {"state": "kd", "speedup_lossless": prereg}, "rows": rows,
                                    "checkpoint_sha256": SHA, "dataset_fingerprint": FP, "dataset": "toy",
                                    "model": "tiny", "class_names": NAMES}}}


@pytest.fixture(scope="module")
def rows():
    return [_row(t, d) for t, d in POOL.items()]


def test_search_aware_choice_skips_the_lucky_candidate_and_reports_committed_test_figures(rows, tmp_path):
    _cache(tmp_path, rows)
    assert rows[0]["val"]["passes_bound"]  # the pre-registered rule's choice
    rec = sa.post_hoc(_doc(rows), root=tmp_path, gates=GATES)["toy:tiny"]
    assert rec["k"] == 5 and rec["confidence"] == pytest.approx(0.99) and rec["undetermined"] is None
    chosen = rec["chosen"]
    assert chosen["target_macs_div"] == 4.0 and chosen["val"]["passes"] and chosen["val"]["n_boot"] == 5 * 2000
    assert chosen["test"]["accuracy_drop_pts"] == rows[2]["test"]["accuracy_drop_pts"]  # the committed row, as is
    assert chosen["test"]["source"] == "committed report row" and chosen["test"]["n"] == 123
    assert [s["target_macs_div"] for s in rec["skipped"]] == [6.0, 5.0]
    assert rec["skipped"][0]["passes_95"] and rec["skipped"][0]["val"]["accuracy_upper_pts"] > GATES[0]
    assert rec["pre_registered"]["target"] == 6.0
    md = "\n".join(sa.markdown({"toy:tiny": rec}))
    assert sa.POST_HOC in md and "k = 5" in md and "passed at 95 %" in md


@pytest.mark.parametrize(("corrupt", "drop", "why"), [(6.0, None, "not the report's"), (None, 6.0, "missing")])
def test_a_cell_that_is_not_the_reports_leaves_the_choice_undetermined(rows, tmp_path, corrupt, drop, why):
    _cache(tmp_path, rows, corrupt=corrupt, drop=drop)
    rec = sa.post_hoc(_doc(rows), root=tmp_path, gates=GATES)["toy:tiny"]
    assert rec["chosen"] is None and why in rec["undetermined"]
    assert "undetermined" in "\n".join(sa.markdown({"toy:tiny": rec}))


def test_long_arm_pool_is_pooled_over_both_arms_at_its_counted_levels(rows):
    design = {"headline": {"state": "kd", "speedup_lossless": None}, "rows": rows[:2]}
    long = {"headline": {"state": "kd"}, "rows": rows[2:],
            "arms": {"levels": [4.0, 3.0], "speedup_lossless": {"criterion": "lrp"}}}
    pool, prereg = sa.pool(long, design)
    assert [(r["arm"], r["target_macs_div"]) for r in pool] == [("2-epoch", 6.0), ("2-epoch", 5.0), ("long", 4.0),
                                                              ("long", 3.0)]
    assert prereg == {"criterion": "lrp"}
    long["arms"]["levels"] = []  # no complete long stage: the 2-epoch arm's pool and choice stand
    assert [r["target_macs_div"] for r in sa.pool(long, design)[0]] == [6.0, 5.0]


def test_study_writes_both_parts_and_refuses_an_unknown_pair(rows, tmp_path, monkeypatch):
    from benchmarks.studies import recovery_search_aware as study
    from toolchain.errors import ConfigError

    cache = tmp_path / "cache"
    cache.mkdir()
    _cache(cache, rows)
    monkeypatch.setattr(sa, "_cache_root", lambda: cache)
    design, long = _doc(rows[:2]), _doc(rows[2:])
    long["models"]["toy:tiny"]["arms"] = {"levels": [4.0, 3.0, 2.0], "speedup_lossless": None}
    paths = {"design": tmp_path / "d.json", "long": tmp_path / "l.json"}
    for name, doc in (("design", design), ("long", long)):
        paths[name].write_text(json.dumps(doc))
    argv = ["--design", str(paths["design"]), "--long", str(paths["long"]), "--out", str(tmp_path / "out")]
    assert study.main(argv) == 0
    doc = json.loads((tmp_path / "out" / "recovery_search_aware.json").read_text())
    design_part, pooled = doc["parts"].values()
    assert design_part["toy:tiny"]["k"] == 2 and pooled["toy:tiny"]["k"] == 5
    assert pooled["toy:tiny"]["chosen"]["arm"] == "long" and doc["status"] == sa.POST_HOC
    assert sa.POST_HOC in (tmp_path / "out" / "recovery_search_aware.md").read_text()
    with pytest.raises(ConfigError, match="not in the reports"):
        study.main([*argv, "--pair", "toy:other"])
