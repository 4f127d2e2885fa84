"""The quant_only study on a tiny trained checkpoint: both runtimes x both precisions, report written whole."""

from __future__ import annotations

import json

import pytest

from benchmarks.studies.quant_only import main
from tests.conftest import write_tiny_npz


def test_quant_only_writes_json_and_markdown(tmp_path, monkeypatch):
    from toolchain.train import TrainConfig, train

    monkeypatch.setenv("MEDPRUNE_CACHE", str(tmp_path / "cache"))
    npz = write_tiny_npz(tmp_path / "tinymnist.npz", n=(32, 16, 16))
    # 32 px: at 16 px test_resnet's last average-pool kernel exceeds its 1x1 map, which OpenVINO refuses
    weights = train(TrainConfig(model="test_resnet", data=str(npz), img_size=32, epochs=1, batch_size=16,
                                augment=False, patience=0, device="cpu", quiet=True))
    out = tmp_path / "results"
    assert main(["--checkpoint", f"tiny={weights}", "--calib-size", "8", "--repeats", "2", "--out", str(out)]) == 0
    doc = json.loads((out / "quant_only.json").read_text())
    (run,) = doc["runs"]
    assert run["label"] == "tiny" and run["quantization_only"] and run["n_calib"] == 8
    assert run["n_test"] == 16  # the whole tiny test split
    assert set(run["columns"]) == {"ort_fp32", "ort_int8", "ov_fp32", "ov_int8"}
    assert run["columns"]["ort_fp32"]["vs_torch"]["max_abs_prob"] <= 1e-4
    md = (out / "quant_only.md").read_text()
    assert "quant_only --checkpoint tiny=" in md and md.count("| OpenVINO INT8 (NNCF) |") == 1


@pytest.mark.parametrize("argv,message", [
    (["--checkpoint", "no-label.safetensors"], "LABEL=PATH"),
    (["--checkpoint", "a=x.safetensors", "--repeats", "1"], "repeats"),
    (["--checkpoint", "a=does/not/exist.safetensors"], "not found"),
])
def test_bad_options_are_one_line_errors(tmp_path, argv, message):
    from toolchain.errors import MedpruneError

    with pytest.raises(MedpruneError, match=message):
        main([*argv, "--out", str(tmp_path)])
    assert not list(tmp_path.iterdir())
