"""Device profiles load, validate and carry a source note for every published number."""

from __future__ import annotations

import copy
import json

import pytest

from devices.profiles import DeviceProfile, load_profile, profile_names, profiles_dir
from toolchain.errors import ConfigError

EXPECTED = {"cpu", "x86-edge", "jetson-orin-nano", "jetson-agx-orin"}


def test_all_profiles_load():
    assert EXPECTED <= set(profile_names())
    for name in EXPECTED:
        p = load_profile(name)
        assert isinstance(p, DeviceProfile) and p.name == name
        assert p.runtime in ("onnxruntime", "openvino", "tensorrt")
        assert 1 in p.batch_sizes and p.memory_budget_mb > 0 and p.resolved_threads() >= 1
        for fig in [*p.peak_compute.values(), p.memory_bandwidth, p.launch_overhead_us]:
            assert fig.source.strip()


def test_published_numbers():
    nano, agx = load_profile("jetson-orin-nano"), load_profile("jetson-agx-orin")
    assert nano.memory_bandwidth.value == 68 and nano.peak_compute["int8"].value == 20000
    assert agx.memory_bandwidth.value == 204.8 and "275" in agx.peak_compute["int8"].source
    assert not nano.is_local and load_profile("cpu").is_local
    assert load_profile("cpu").peak_gflops() is None  # measured at run time


def test_unknown_target_lists_known():
    with pytest.raises(ConfigError) as exc:
        load_profile("raspberry-pi")
    msg = str(exc.value)
    assert "raspberry-pi" in msg and all(n in msg for n in EXPECTED)


def test_validation_rejects_bad_profiles():
    base = json.loads((profiles_dir() / "jetson-orin-nano.json").read_text())
    for mutate, match in [
        (lambda d: d.update(runtime="tflite"), "runtime"),
        (lambda d: d.update(precision="fp8"), "precision"),
        (lambda d: d.update(batch_sizes=[8]), "batch_sizes"),
        (lambda d: d["memory_bandwidth"].pop("source"), "source"),
        (lambda d: d["peak_compute"].pop("fp16"), "its precision"),
        (lambda d: d.pop("threads"), "threads"),
    ]:
        d = copy.deepcopy(base)
        mutate(d)
        with pytest.raises(ConfigError, match=match):
            DeviceProfile.from_dict(d)
    assert DeviceProfile.from_dict(base).to_dict()["memory_bandwidth"]["value"] == 68
