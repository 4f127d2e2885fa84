"""The score cache: absent is a silent miss; a damaged entry is a miss the user is told about."""

import warnings

import pytest
import torch

from toolchain.prune_eval import load_scores, save_scores


def test_round_trip_and_silent_miss(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_scores(tmp_path / "scores-none") is None
    save_scores(tmp_path / "scores-a", {"layer": torch.arange(3.0)}, {"criterion": "magnitude"})
    scores, meta = load_scores(tmp_path / "scores-a")
    assert torch.equal(scores["layer"], torch.arange(3.0)) and meta == {"criterion": "magnitude"}


@pytest.mark.parametrize("damaged", [".json", ".safetensors"])
def test_damaged_entry_warns_and_misses(tmp_path, damaged):
    save_scores(tmp_path / "scores-a", {"layer": torch.arange(3.0)}, {"criterion": "magnitude"})
    (tmp_path / f"scores-a{damaged}").write_bytes(b"\x00not what was written")
    with pytest.warns(UserWarning, match="unreadable"):
        assert load_scores(tmp_path / "scores-a") is None
