"""README results table vs benchmarks/results/headline.json vs the results files it cites."""

from __future__ import annotations

import json

import pytest

from benchmarks.headline import (
    END,
    START,
    HeadlineError,
    check_entry,
    load,
    lookup,
    problems,
    render,
    with_table,
)
from toolchain.intervals import clopper_pearson


def test_readme_agrees_with_headline_json_and_its_sources():
    assert problems() == []


def _project(tmp_path, entries: dict, readme_table: str | None = None):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "run.json").write_text(json.dumps(
        {"runs": [{"key": "a", "test": {"accuracy": 0.75, "n": 8}}, {"key": "b", "test": {"accuracy": 0.5, "n": 8}}],
         "findings": ["mean ECE 0.09 → 0.05 after scaling"]}))
    headline = tmp_path / "headline.json"
    headline.write_text(json.dumps(entries))
    readme = tmp_path / "README.md"
    table = render(load(headline)) if readme_table is None else readme_table
    readme.write_text(f"# x\n\n{START}\n{table}{END}\n\nmore\n")
    return headline, readme


def _acc(key="a", value=0.75):
    return {"value": value, "unit": "proportion", "source": "results/run.json", "command": "medprune study run",
            "path": "runs/*/test/accuracy", "where": {"key": key}, "n": 8,
            "ci": list(clopper_pearson(round(value * 8), 8)), "ci_method": "clopper-pearson"}


def test_synthetic_project_passes_then_each_disagreement_is_caught(tmp_path):
    entries = {"baseline/a/accuracy": _acc(), "recovery/b/accuracy": _acc("b", 0.5),
               "calibration/ece": {"value": "0.09 → 0.05", "unit": "text", "source": "results/run.json",
                                   "command": "medprune study run"},
               "baseline/b/accuracy": _acc("b", 0.5)}
    headline, readme = _project(tmp_path, entries)
    assert problems(headline, readme, tmp_path) == []
    # groups by key prefix, in first-seen order: baseline rows together, then recovery, then calibration
    rows = [line.split("|")[1].strip() for line in render(entries).splitlines()[2:]]
    assert rows == ["**baseline**", "", "**recovery**", "**calibration**"]

    typed = {**entries, "baseline/a/accuracy": {**_acc(), "value": 0.76}}  # a typed-in number
    assert any("holds 0.75" in p for p in check_entry("baseline/a/accuracy", typed["baseline/a/accuracy"], tmp_path))
    wrong_ci = {**_acc(), "ci": [0.5, 0.9]}
    assert any("ci" in p for p in check_entry("k/x", wrong_ci, tmp_path))
    no_method = {k: v for k, v in _acc().items() if k != "ci_method"}
    assert any("ci_method" in p for p in check_entry("k/x", no_method, tmp_path))
    text = {"value": "0.09 → 0.04", "unit": "text", "source": "results/run.json", "command": "c"}
    assert any("verbatim" in p for p in check_entry("k/x", text, tmp_path))
    gone = {**_acc(), "source": "results/missing.json"}
    assert any("does not exist" in p for p in check_entry("k/x", gone, tmp_path))

    readme.write_text(readme.read_text().replace("0.750", "0.760"))  # README edited by hand
    assert any("differs" in p for p in problems(headline, readme, tmp_path))


def test_lookup_wildcards_filters_and_reductions():
    doc = {"rows": [{"m": "a", "x": 1.0, "sub": {"t": "cpu"}}, {"m": "a", "x": 3.0, "sub": {"t": "gpu"}},
                    {"m": "b", "x": 5.0}]}
    assert lookup(doc, "rows/*/x", {"m": "a"}, "max") == 3.0
    assert lookup(doc, "rows/*/x", {"m": "a", "sub.t": "gpu"}) == 3.0
    assert lookup(doc, "rows/*/x", reduce="mean") == 3.0
    assert lookup(doc, "rows/2/x") == 5.0
    with pytest.raises(HeadlineError, match="matches 2"):
        lookup(doc, "rows/*/x", {"m": "a"})
    with pytest.raises(HeadlineError, match="nothing"):
        lookup(doc, "rows/*/y")


def test_malformed_headline_and_readme_are_refused(tmp_path):
    bad = tmp_path / "h.json"
    bad.write_text(json.dumps({"nogroup": _acc()}))
    with pytest.raises(HeadlineError, match="group"):
        load(bad)
    bad.write_text(json.dumps({"g/x": {"value": 1, "unit": "", "source": "s"}}))
    with pytest.raises(HeadlineError, match="command"):
        load(bad)
    with pytest.raises(HeadlineError, match="one"):
        with_table("no markers here", "| t |\n")
