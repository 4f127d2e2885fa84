"""The stage runner caches by key, resumes after a failure and never leaves a partial stage."""

import pytest

from toolchain.pipeline import Pipeline, digest


def test_stage_caches_by_key(tmp_path):
    calls = []

    def work(d):
        calls.append(1)
        (d / "out.txt").write_text("x")
        return {"value": 1}

    first = Pipeline(tmp_path).stage("a", {"k": 1}, work)
    again = Pipeline(tmp_path).stage("a", {"k": 1}, work)
    other = Pipeline(tmp_path).stage("a", {"k": 2}, work)
    assert not first.cached and again.cached and not other.cached
    assert again.data == {"value": 1} and (again.path / "out.txt").read_text() == "x"
    assert len(calls) == 2


def test_failed_stage_leaves_nothing_and_resumes(tmp_path):
    pipe = Pipeline(tmp_path)
    pipe.stage("first", {}, lambda d: {"ok": True})

    def boom(d):
        (d / "half.txt").write_text("partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pipe.stage("second", {}, boom)
    stages = sorted(p.name for p in (tmp_path / "stages").iterdir())
    assert len(stages) == 1 and stages[0].startswith("first-")
    resumed = Pipeline(tmp_path)
    assert resumed.stage("first", {}, lambda d: {"ok": False}).data == {"ok": True}


def test_digest_is_order_independent():
    assert digest({"a": 1, "b": [1, 2]}) == digest({"b": [1, 2], "a": 1})
    assert digest({"a": 1}) != digest({"a": 2})
