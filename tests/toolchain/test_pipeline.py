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


def _write_criterion_package(root, body: str):
    """A tiny importable package ``critpkg`` whose criterion module imports a helper module."""
    pkg = root / "critpkg"
    pkg.mkdir(exist_ok=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "helper.py").write_text("SCALE = 1\n")
    (pkg / "crit.py").write_text("from .helper import SCALE\n\n\nclass Crit:\n    def score(self, x):\n"
                                 f"        return {body} * SCALE\n")
    return pkg


def _fresh_import(name):
    import importlib
    import sys

    for mod in [m for m in sys.modules if m == "critpkg" or m.startswith("critpkg.")]:
        del sys.modules[mod]
    importlib.invalidate_caches()
    return importlib.import_module(name)


def test_code_version_changes_with_the_criterion_code(tmp_path, monkeypatch):
    from toolchain.pipeline import code_version, source_files

    monkeypatch.syspath_prepend(str(tmp_path))
    pkg = _write_criterion_package(tmp_path, "x")
    crit = _fresh_import("critpkg.crit").Crit()
    files = {p.name for p in source_files(crit)}
    assert {"crit.py", "helper.py", "__init__.py"} <= files  # its module and what that imports
    first = code_version(crit)
    assert code_version(type(crit)) == first == code_version(crit)  # stable; instance or class
    (pkg / "crit.py").write_text((pkg / "crit.py").read_text().replace("return x", "return 2 * x"))
    assert code_version(_fresh_import("critpkg.crit").Crit()) != first
    changed = code_version(crit)
    (pkg / "helper.py").write_text("SCALE = 3\n")  # a change in an imported module counts too
    assert code_version(crit) != changed


def test_stage_reruns_when_its_code_changes(tmp_path, monkeypatch):
    import toolchain.pipeline as pipeline

    calls = []

    def work(d):
        calls.append(1)
        return {"n": len(calls)}

    pipe = Pipeline(tmp_path)
    first = pipe.stage("importance", {"criterion": "lrp"}, work)
    assert Pipeline(tmp_path).stage("importance", {"criterion": "lrp"}, work).cached
    assert first.path == pipe.folder("importance", {"criterion": "lrp"}, work)
    assert (first.path / "key.json").read_text().count("code_version") == 1
    monkeypatch.setattr(pipeline, "code_version", lambda *objs, **kw: "edited")  # the criterion's code changed
    again = Pipeline(tmp_path).stage("importance", {"criterion": "lrp"}, work)
    assert not again.cached and again.data == {"n": 2} and again.path != first.path


def test_stage_code_covers_declared_dependencies(tmp_path, monkeypatch):
    from toolchain.pipeline import code_version

    monkeypatch.syspath_prepend(str(tmp_path))
    _write_criterion_package(tmp_path, "x")
    crit = _fresh_import("critpkg.crit").Crit()
    work = lambda d: {}  # noqa: E731
    key = Pipeline.full_key("s", {}, work, code=[crit])
    assert key["code_version"] == code_version(work, crit) != code_version(work)


def test_code_version_of_an_installed_library_hashes_its_module_only():
    import torch.nn.functional as F

    from toolchain.pipeline import source_files

    files = source_files(F.relu)
    assert any(f.name == "functional.py" for f in files) and len(files) < 10  # torch's imports are not walked
