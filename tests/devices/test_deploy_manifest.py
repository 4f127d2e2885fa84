"""The manifest's input profile (what predict.py's input warnings compare against) is never missing."""

from __future__ import annotations

from types import SimpleNamespace

from devices.deploy.manifest import input_profile_for
from tests.conftest import write_tiny_npz
from toolchain.data import load_dataset


def test_profile_from_the_checkpoint_else_from_the_deploy_data(tmp_path):
    ds = load_dataset(write_tiny_npz(tmp_path / "tinymnist.npz"), cache=False)
    recorded = {"image_size": [16, 16], "channels": 1, "load_size": None, "image_mean_p01": 0.1,
                "image_mean_p50": 0.2, "image_mean_p99": 0.3, "n": 1}
    assert input_profile_for(SimpleNamespace(meta={"input_profile": recorded}, ds=ds)) == recorded
    measured = input_profile_for(SimpleNamespace(meta={}, ds=ds))  # e.g. imported without --data
    assert measured["channels"] == 1 and measured["image_size"] == [16, 16] and measured["n"] == 24
    assert 0.0 <= measured["image_mean_p01"] <= measured["image_mean_p50"] <= measured["image_mean_p99"] <= 1.0
