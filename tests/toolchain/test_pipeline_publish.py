"""Pipeline.publish/lookup: a result computed elsewhere is filed exactly where stage() would have put it."""

from toolchain.pipeline import Pipeline


def work(folder):
    (folder / "extra.txt").write_text("made here")
    return {"n": 1}


def test_published_result_is_what_stage_finds(tmp_path):
    pipe = Pipeline(tmp_path)
    full = Pipeline.full_key("cell", {"criterion": "lrp"}, work)
    assert pipe.lookup("cell", full) is None
    stored = pipe.publish("cell", full, {"n": 1}, write=lambda d: (d / "extra.txt").write_text("made elsewhere"))
    found = pipe.lookup("cell", full)
    assert found.cached and found.data == {"n": 1} and found.path == stored.path
    assert stored.path == pipe.folder("cell", {"criterion": "lrp"}, work)  # one folder rule
    again = Pipeline(tmp_path).stage("cell", {"criterion": "lrp"}, work)  # stage() reuses it, runs nothing
    assert again.cached and (again.path / "extra.txt").read_text() == "made elsewhere"
    assert (again.path / "key.json").read_text().count("code_version") == 1
