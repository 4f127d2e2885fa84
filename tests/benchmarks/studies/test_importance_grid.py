"""importance_grid refuses to search the lossless ratio on the test split it reports on."""

from __future__ import annotations

import pytest

from toolchain.errors import ConfigError


def test_search_split_test_is_refused_before_anything_is_read(tmp_path, monkeypatch):
    from benchmarks.studies import importance_grid

    monkeypatch.setattr(importance_grid, "baseline_checkpoints", lambda *a: pytest.fail("read checkpoints"))
    with pytest.raises(ConfigError, match="--search-split test"):
        importance_grid.main(["--search-split", "test", "--out", str(tmp_path / "imp")])
    assert not list(tmp_path.iterdir())  # nothing written
