"""Runtime columns of the recovery study on tiny trained models (conv and ViT), tiny data."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.studies._recovery_runtimes import COLUMNS, DenseReference, runtime_columns
from tests.export._tiny import SIZE, tiny_data, trained
from toolchain.errors import MedpruneError

SHAPE = (1, 1, SIZE, SIZE)


def _finite(x) -> bool:
    return x is not None and bool(np.isfinite(np.asarray(x, dtype=float)).all())


def _check_columns(out: dict, n_test: int, quant_only: bool) -> None:
    assert set(out["columns"]) == set(COLUMNS) == {"ort_fp32", "ort_int8", "ov_fp32", "ov_int8"}
    assert out["quantization_only"] is quant_only and out["n_test"] == n_test
    for name, col in out["columns"].items():
        lat, speed = col["latency_ms"], col["speedup"]
        assert lat["median_ms"] > 0 and lat["runs"] == out["repeats"], name
        assert set(speed) == {"vs_dense_ort_fp32", "vs_dense_same_runtime"} and all(_finite(v) for v in speed.values())
        if quant_only:  # the model's sessions are the dense ones: same timings
            assert speed["vs_dense_same_runtime"] == 1.0
        test, drop = col["test"], col["vs_dense_fp32"]
        assert test["n"] == n_test and test["accuracy_ci"][0] <= test["accuracy"] <= test["accuracy_ci"][1]
        lo, hi = drop["accuracy_drop_ci_pts"]
        assert lo <= drop["accuracy_drop_pts"] <= hi and drop["n"] == n_test
        assert drop["worst_sensitivity_drop_pts"] == max(drop["sensitivity_drop_pts"].values())
        assert drop["worst_class"] in drop["sensitivity_drop_pts"]
        agree = col["vs_torch"]
        assert agree["finite"] and _finite(agree["max_abs_prob"]), name
        if col["precision"] == "fp32":  # same function in another runtime
            assert agree["max_abs_prob"] <= 1e-4 and agree["max_abs_logit"] <= 1e-4, (name, agree)
            assert abs(drop["accuracy_drop_pts"]) < 1e-9
    ref = out["columns"]["ort_fp32"]
    assert ref["speedup"]["vs_dense_ort_fp32"] == pytest.approx(
        ref["dense_latency_ms"]["median_ms"] / ref["latency_ms"]["median_ms"])


@pytest.mark.parametrize("family", ["vgg", "vit"])
def test_pruned_model_all_columns(family):
    dense, pruned = trained(family, False), trained(family, True)
    xtr, _, x, y = tiny_data()
    logs: list[str] = []
    out = runtime_columns(dense, pruned, SHAPE, xtr[:16], x, y, repeats=3, class_names=["normal", "pneumonia"],
                          log=logs.append)
    _check_columns(out, len(y), quant_only=False)
    assert out["class_names"] == ["normal", "pneumonia"]
    assert any("timing 8 sessions" in line for line in logs)
    for col in out["columns"].values():  # the files timed and scored are the pruned model's, not the dense one's
        assert col["size_mb"] < col["dense_size_mb"]


def test_one_dense_reference_serves_several_models_and_leaves_no_files(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the exports are written
    dense, pruned = trained("resnet", False), trained("resnet", True)
    xtr, _, x, y = tiny_data()
    with DenseReference(dense, SHAPE[1:], xtr[:16], x, y) as ref:
        row = ref.columns(pruned, repeats=3)
        quant = ref.columns(dense, repeats=3)  # the "quantization only" row, from the same dense exports
    _check_columns(row, len(y), quant_only=False)
    _check_columns(quant, len(y), quant_only=True)
    assert quant["class_names"] == ["0", "1"]
    int8, fp32 = quant["columns"]["ort_int8"], quant["columns"]["ort_fp32"]
    assert int8["size_mb"] < fp32["size_mb"]  # quantized weights are stored as int8
    assert row["columns"]["ort_int8"]["dense_size_mb"] == int8["size_mb"]
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(MedpruneError, match="closed"):
        ref.columns(pruned)


def test_a_column_that_cannot_be_exported_holds_its_error(monkeypatch):
    import export.openvino
    from export.errors import ExportError

    def refuse(path):
        raise ExportError("OpenVINO cannot convert m.onnx: unsupported op")

    monkeypatch.setattr(export.openvino, "convert", refuse)
    dense = trained("vgg", False)
    xtr, _, x, y = tiny_data()
    out = runtime_columns(dense, dense, SHAPE, xtr[:8], x, y, repeats=2)
    cols = out["columns"]
    assert set(cols) == set(COLUMNS)
    assert "unsupported op" in cols["ov_fp32"]["error"] and "unsupported op" in cols["ov_int8"]["error"]
    assert cols["ort_int8"]["latency_ms"]["median_ms"] > 0 and "error" not in cols["ort_fp32"]


@pytest.mark.parametrize("change,message", [
    (dict(test_y=np.zeros(3, dtype=np.int64)), "labels"),
    (dict(calib=np.zeros((0, 1, SIZE, SIZE), np.float32)), "calib is empty"),
    (dict(calib=np.zeros((4, 3, SIZE, SIZE), np.float32)), "calib must be"),
    (dict(test_y=np.full(32, 5)), "0..1"),
    (dict(test_y=np.zeros(32) + 0.5), "integer"),
    (dict(example_shape=(1, 16, 8)), "H == W"),
    (dict(repeats=1), "repeats"),
])
def test_bad_input_is_a_medprune_error(change, message):
    dense = trained("resnet", False)
    xtr, _, x, y = tiny_data()
    args = dict(dense=dense, model=dense, example_shape=SHAPE, calib=xtr[:4], test_x=x, test_y=y, repeats=2)
    with pytest.raises(MedpruneError, match=message):
        runtime_columns(**{**args, **change})
