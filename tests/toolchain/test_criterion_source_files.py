"""A criterion's code version holds its own code (module, base, the helpers it imports), not every
criterion the registry package reaches: an edit to one criterion leaves the others' versions alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.toolchain._source_edits import edit_sources
from toolchain import pipeline
from toolchain.importance import get_criterion
from toolchain.pipeline import code_version, criterion_source_files

IMPORTANCE = Path(pipeline.__file__).parent / "importance"


def _names(criterion: str) -> set[str]:
    return {f.name for f in criterion_source_files(get_criterion(criterion)) if f.parent == IMPORTANCE}


def _version(criterion: str) -> str:
    return code_version(*criterion_source_files(get_criterion(criterion)))


@pytest.fixture
def edit(monkeypatch):
    """``edit("ig.py")``: that criterion-package file reads as edited from now on."""
    edit_file = edit_sources(monkeypatch)
    return lambda name: edit_file(f"importance/{name}")


def test_each_criterion_holds_its_own_module_and_helpers_only():
    assert {"ig.py", "_eval_batchnorm.py", "_hooks.py", "base.py", "__init__.py"} <= _names("ig")
    assert {"lrp.py", "_lrp_rules.py", "_lrp_canonizers.py", "_lrp_vit.py", "base.py"} <= _names("lrp")
    assert {"dlb.py", "_dlb_mode.py", "_dlb_rules.py"} <= _names("dlb")
    for name, others in {"ig": {"lrp.py", "_lrp_rules.py", "taylor.py", "dlb.py"},
                         "lrp": {"ig.py", "_eval_batchnorm.py", "taylor.py", "dlb.py", "_dlb_rules.py"},
                         "taylor": {"lrp.py", "_lrp_rules.py", "ig.py", "tp_peers.py"},
                         "tp-l1": {"lrp.py", "_lrp_canonizers.py", "ig.py"}}.items():
        assert not _names(name) & others, name
    assert len({_version(c) for c in ("lrp", "ig", "taylor", "dlb", "magnitude")}) == 5


def test_an_edit_changes_exactly_the_criteria_that_use_the_file(edit):
    before = {c: _version(c) for c in ("ig", "lrp", "taylor", "magnitude")}
    edit("ig.py")
    after = {c: _version(c) for c in before}
    assert after["ig"] != before["ig"] and all(after[c] == before[c] for c in ("lrp", "taylor", "magnitude"))
    edit("_lrp_rules.py")  # lrp's private helper
    again = {c: _version(c) for c in before}
    assert again["lrp"] != after["lrp"] and all(again[c] == after[c] for c in ("ig", "taylor", "magnitude"))
    edit("_hooks.py")  # shared by ig, lrp and taylor, not imported by magnitude
    hooks = {c: _version(c) for c in before}
    assert all(hooks[c] != again[c] for c in ("ig", "lrp", "taylor")) and hooks["magnitude"] == again["magnitude"]
    edit("base.py")
    assert all(_version(c) != hooks[c] for c in before)


def test_a_criterion_module_imported_by_one_in_use_counts(monkeypatch):
    real = pipeline._imports
    monkeypatch.setattr(pipeline, "_imports", lambda name, file: real(name, file) + (
        ["toolchain.importance.lrp"] if file.name == "dlb.py" else []))
    assert {"lrp.py", "_lrp_rules.py", "_lrp_canonizers.py"} <= _names("dlb")
    assert "lrp.py" not in _names("taylor")


def test_objs_reaching_another_criterion_through_other_packages_do_not_add_it():
    from toolchain.recovery import recover_cached

    files = {f.name for f in criterion_source_files(get_criterion("magnitude"), recover_cached)
             if f.parent == IMPORTANCE}
    assert "_hooks.py" in files  # recovery imports it by name
    assert not files & {"lrp.py", "ig.py", "taylor.py"}
    lrp_cls = type(get_criterion("lrp"))
    assert "lrp.py" in {f.name for f in criterion_source_files(get_criterion("magnitude"), lrp_cls)}


def test_only_criteria_are_accepted():
    with pytest.raises(TypeError, match="Criterion"):
        criterion_source_files(pipeline.code_version)
