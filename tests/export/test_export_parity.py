"""Export of tiny dense and pruned models of all three families through ONNX Runtime and OpenVINO."""

from __future__ import annotations

import numpy as np
import pytest

from export.exporter import export_model
from export.metadata import read_metadata
from export.verify import TOLERANCES, gate, runner_for
from tests.export._tiny import meta_for, tiny_data, trained

CASES = [(f, p) for f in ("vgg", "resnet", "vit") for p in (False, True)]


@pytest.mark.parametrize("family,pruned", CASES, ids=[f"{f}-{'pruned' if p else 'dense'}" for f, p in CASES])
def test_fp32_parity_both_runtimes(tmp_path, family, pruned):
    model = trained(family, pruned)
    _, _, x, y = tiny_data()
    meta = meta_for(model, family)
    onnx_res = export_model(model, meta, tmp_path, "onnx", "fp32", name=family, eval_x=x, eval_y=y,
                            source_sha256="ab" * 32)
    v = onnx_res.verification
    assert v["passed"] and v["max_abs_logit"] <= TOLERANCES["fp32"]["max_abs_logit"]
    assert v["top1_agreement"] == 1.0
    ov_res = export_model(model, meta, tmp_path, "openvino", "fp32", name=family, eval_x=x, eval_y=y,
                          base_onnx=onnx_res.path)
    assert ov_res.verification["passed"] and ov_res.verification["max_abs_logit"] <= 1e-4
    assert {p.name for p in tmp_path.iterdir()} == {
        f"{family}_onnx_fp32.onnx", f"{family}_onnx_fp32.verify.json",
        f"{family}_openvino_fp32.xml", f"{family}_openvino_fp32.bin", f"{family}_openvino_fp32.verify.json"}

    # dynamic batch axis: any batch size runs
    for path in (onnx_res.path, ov_res.path):
        run = runner_for(path, "fp32")
        assert run(x[:1]).shape == (1, 2) and run(x[:5]).shape == (5, 2)

    for path, fmt in ((onnx_res.path, "onnx"), (ov_res.path, "openvino")):
        md = read_metadata(path)
        assert md["class_names"] == ["normal", "pneumonia"]
        assert md["preprocess"]["mean"] == [0.4] and md["input_size"] == [1, 16, 16]
        assert md["medprune_version"] and md["format"] == fmt and md["precision"] == "fp32"
        assert md["pruning_recipe"] == {"criterion": "hand"}
    assert read_metadata(onnx_res.path)["source_sha256"] == "ab" * 32
    assert read_metadata(ov_res.path)["runtime"] == {"INFERENCE_PRECISION_HINT": "f32"}


REDUCED = [("vgg", True), ("resnet", False), ("vit", True)]


@pytest.mark.parametrize("family,pruned", REDUCED, ids=[f"{f}-{'pruned' if p else 'dense'}" for f, p in REDUCED])
def test_fp16_and_int8_meet_tolerances(tmp_path, family, pruned):
    model = trained(family, pruned)
    xtr, _, x, y = tiny_data()
    meta = meta_for(model, family)
    base = export_model(model, meta, tmp_path / "base", "onnx", "fp32", name=family).path
    for fmt in ("onnx", "openvino"):
        for precision in ("fp16", "int8"):
            res = export_model(model, meta, tmp_path, fmt, precision, name=family, eval_x=x, eval_y=y,
                               calib_x=xtr, base_onnx=base)
            v = res.verification
            assert v["passed"], (fmt, precision, v["failures"])
            assert "max_abs_prob" in v and "top1_agreement" in v
            assert read_metadata(res.path)["precision"] == precision
            assert res.path.exists()


def test_failed_parity_leaves_no_file(tmp_path):
    from toolchain.errors import GateError

    model = trained("vit", False)
    _, _, x, y = tiny_data()
    strict = {**TOLERANCES, "fp32": {"max_abs_logit": -1.0}}  # impossible: forces the gate to fail
    out = tmp_path / "out"
    with pytest.raises(GateError, match="parity failed"):
        export_model(model, meta_for(model, "vit"), out, "onnx", "fp32", name="m", eval_x=x, eval_y=y,
                     tolerances=strict)
    assert list(out.iterdir()) == []  # not the model, not the report, not the staging directory


def test_gate_rules():
    ok = {"finite": True, "max_abs_logit": 5e-5, "top1_agreement": 1.0, "accuracy_drop": 0.0}
    assert gate("fp32", ok) == []
    assert gate("fp32", {**ok, "max_abs_logit": 2e-4})
    assert gate("fp16", {**ok, "top1_agreement": 0.99})
    assert gate("int8", {**ok, "accuracy_drop": 0.01}) == []
    assert gate("int8", {**ok, "accuracy_drop": 0.02})
    assert gate("fp32", {**ok, "finite": False})


def test_request_errors(tmp_path):
    from toolchain.errors import ConfigError

    model = trained("vit", True)
    meta = meta_for(model, "vit")
    with pytest.raises(ConfigError, match="supported formats are onnx, openvino"):
        export_model(model, meta, tmp_path, "tflite", "fp32")
    with pytest.raises(ConfigError, match="supported are fp32, fp16, int8"):
        export_model(model, meta, tmp_path, "onnx", "int4")
    with pytest.raises(ConfigError, match="calibration"):
        export_model(model, meta, tmp_path, "openvino", "int8", calib_x=np.zeros((0, 1, 16, 16), np.float32))
    assert list(tmp_path.iterdir()) == []


def test_calibration_subset_is_seeded():
    from export.quantize import calibration_indices

    a, b = calibration_indices(1000, 256, seed=0), calibration_indices(1000, 256, seed=0)
    assert (a == b).all() and len(set(a.tolist())) == 256
    assert not (a == calibration_indices(1000, 256, seed=1)).all()
    assert len(calibration_indices(10, 256)) == 10


def test_metadata_values_are_json_strings(tmp_path):
    import json

    import onnx

    model = trained("vit", True)
    res = export_model(model, meta_for(model, "vit"), tmp_path, "onnx", "fp32", name="m")
    props = {p.key: p.value for p in onnx.load(str(res.path)).metadata_props}
    for key in ("class_names", "preprocess", "input_size", "medprune_version", "pruning_recipe", "source_sha256"):
        json.loads(props[key])
    assert onnx.load(str(res.path)).opset_import[0].version >= 17
    assert res.verification is None and json.loads((tmp_path / "m_onnx_fp32.verify.json").read_text())["verification"] is None
