"""deploy_runs: rows whose checkpoint is gone are kept, marked stale with date and protocol, and shown
apart; budget runs show the measured speedup, test accuracy before/after recovery and the recipe."""

from __future__ import annotations

from benchmarks.studies import deploy_runs as dr


def _metrics(acc: float, n: int = 624) -> dict:
    return {"accuracy": acc, "accuracy_ci": [acc - 0.02, acc + 0.02], "n": n, "ece": 0.02}


def _summary(**extra) -> dict:
    return {"dense": _metrics(0.93), "pruned": _metrics(0.92), "deployed": _metrics(0.92), "ratio": 0.4,
            "name": "pkg", "gates": {"accuracy_drop_pts": 1.0, "accuracy_drop_ci_pts": [0.0, 2.0],
                                     "sensitivity_drop_pts": {"a": 0.5}}, **extra}


def test_stale_rows_keep_date_and_protocol_and_are_shown_apart():
    old = {"recipe": {"model": "vgg19", "target": "cpu", "ratio": "auto"}, "command": "medprune deploy x",
           "rc": 0, "wall_s": 3.0, "summary": _summary()}
    row = dr.stale_row(old["recipe"], [old])
    assert row["stale"]["protocol"] == dr.OLD_PROTOCOL and row["stale"]["measured"]
    assert dr.stale_row({"model": "nope"}, [old]) is None
    again = dr.stale_row(old["recipe"], [{**row, "stale": {"measured": "2026-11-27", "protocol": "p"}}])
    assert again["stale"] == {"measured": "2026-11-27", "protocol": "p"}  # a kept mark is not rewritten
    text = dr.markdown([again])
    current, stale = text.split("## Stale rows")
    assert "| vgg19 |" not in current and "| vgg19 | cpu | 0.40 |" in stale and "2026-11-27 |" in stale


def test_budget_row_shows_speedup_and_accuracy_before_and_after_recovery():
    recovery = {"budget": {"kind": "speedup", "value": 3.0, "met": True},
                "measured": {"quantity": "batch-1 latency, median ms", "dense": 6.0, "pruned": 2.0, "speedup": 3.0,
                             "label": "measured: onnxruntime CPU batch 1, this machine"},
                "recipe": {"epochs": 2, "ce_weight": 0.0}, "val_rule": {"passes": False, "failed": ["acc"]}}
    row = {"recipe": {"model": "resnet50", "target": "cpu", "speedup": "3"}, "command": "medprune deploy y",
           "rc": 0, "wall_s": 9.0, "measured": "2026-11-29",
           "summary": _summary(recovery=recovery, pruned_before_recovery=_metrics(0.60))}
    text = dr.markdown([row])
    assert "## Stale rows" not in text and "| resnet50 | cpu | 0.40 (speedup 3) |" in text
    assert "×3.00" in text and "pruned 60.0 [58.0, 62.0] → recovered 92.0 [90.0, 94.0]" in text
    assert "fails (acc)" in text and '"ce_weight": 0.0' in text


def test_previous_row_ignores_notes_and_takes_todays_recipe():
    old = {"recipe": {"model": "resnet50", "target": "cpu", "speedup": "3"}, "rc": 0}
    today = {**old["recipe"], "note": "second read"}
    assert dr.previous_row(today, [old])["recipe"] == today
    assert dr.previous_row({**today, "speedup": "2"}, [old]) is None
