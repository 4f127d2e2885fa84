"""INT8 per recovered cell (``--runtimes-per-cell``): tiny dense and pruned models, tiny data, a fake run."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from benchmarks.studies._recovery_quant import measure_cells
from benchmarks.studies._recovery_quant_cells import INT8, cell_speedups, markdown, overview, summary
from benchmarks.studies._recovery_quant_record import merge, setup, slim, split
from benchmarks.studies._recovery_runtimes import DenseReference
from tests.export._tiny import SIZE, tiny_data, trained
from toolchain.errors import MedpruneError

SHAPE = (1, SIZE, SIZE)


def _cell(crit: str, target: float, key: str | None, kd: bool = True) -> dict:
    probs = {"none/val": [[1.0, 0.0]], "none/test": [[1.0, 0.0]]}
    if kd:
        probs |= {"kd/val": [[1.0, 0.0]], "kd/test": [[1.0, 0.0]]}
    return {"criterion": crit, "target_macs_div": target, "macs": {"ratio": target + 0.1}, "speedup_ort": 1.5,
            "probs": probs, **({"recovery": {"key": key}} if key else {})}


RUN = {"dataset": "tiny", "model": "vgg", "checkpoint_sha256": "a" * 64,
       "cells": {"lrp/2": _cell("lrp", 2, "k-lrp"), "taylor/2": _cell("taylor", 2, "k-taylor"),
                 "random/3": _cell("random", 3, "k-gone"),  # recovered, but its checkpoint is not in the cache
                 "tp-magnitude/2": _cell("tp-magnitude", 2, None, kd=False)}}  # never recovered: not a KD cell


class Opener:
    """The dense reference, counted; its dense INT8 (ORT) predictions are made all wrong, so a drop against
    them cannot be mistaken for a drop against the dense FP32 model."""

    def __init__(self):
        self.opened = 0

    def __call__(self):
        self.opened += 1
        dense = trained("vgg", False)
        xtr, _, x, y = tiny_data()
        ref = DenseReference(dense, SHAPE, xtr[:16], x, y, class_names=["normal", "pneumonia"])
        ref.opened["logits"]["ort_int8"] = (np.eye(2)[1 - y] * 10.0).astype(np.float32)
        self.logits, self.y = dict(ref.opened["logits"]), y  # kept: the reference's sessions close after use
        return ref


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    root = tmp_path_factory.mktemp("quant-cells")
    # a copy: the dense object itself would be measured as the quantization-only row
    models = {"k-lrp": trained("vgg", True), "k-taylor": copy.deepcopy(trained("vgg", False))}
    opener, logs = Opener(), []
    load = lambda cell: models.get(cell["recovery"]["key"])  # noqa: E731
    first = measure_cells(RUN, opener, cache_root=root, repeats=3, log=logs.append, load_model=load)
    again = measure_cells(RUN, opener, cache_root=root, repeats=3, log=logs.append, load_model=load)
    return first, again, opener, logs, root


def test_every_cached_kd_cell_gets_the_columns(measured):
    first, _, opener, logs, _ = measured
    assert set(first["cells"]) == {"lrp/2", "taylor/2"}  # the KD cells whose recovered model exists
    assert set(first["missing"]) == {"random/3"} and "no recovered checkpoint" in first["missing"]["random/3"]
    for key, rec in first["cells"].items():
        assert not rec["cached"] and rec["state"] == "kd" and rec["criterion"] == key.split("/")[0]
        assert set(rec["runtime"]["columns"]) == {"ort_fp32", "ort_int8", "ov_fp32", "ov_int8"}
        assert rec["runtime"]["n_test"] == 32 and rec["macs_ratio"] == pytest.approx(2.1)
    assert opener.opened == 1  # the dense model exported once for all cells
    assert sum("INT8 cell" in line and "measured" in line for line in logs) == 2  # a progress line per cell


def test_second_call_reads_the_cache_without_exporting(measured, tmp_path):
    first, again, opener, logs, root = measured
    assert opener.opened == 1 and all(rec["cached"] for rec in again["cells"].values())
    for key in first["cells"]:
        assert again["cells"][key]["runtime"] == first["cells"][key]["runtime"]
    assert any("2 of 3 recovered cells cached" in line for line in logs)
    # cached only: nothing measured, nothing exported, and the uncached cells say so
    cached = measure_cells(RUN, opener, cache_root=tmp_path, repeats=3, measure=False)
    assert cached["cells"] == {} and set(cached["missing"]) == {"lrp/2", "taylor/2", "random/3"}
    assert opener.opened == 1
    assert list(root.glob("*.tmp")) == []  # written whole or not at all


def test_speedups_are_ratios_of_the_recorded_latencies(measured):
    first, *_ = measured
    for rec in first["cells"].values():
        cols, speed = rec["runtime"]["columns"], cell_speedups(rec)
        assert set(speed) == set(INT8)
        for col, (_, fp32) in INT8.items():
            mine = cols[col]["latency_ms"]["median_ms"]
            assert speed[col]["vs_dense_int8"] == pytest.approx(cols[col]["dense_latency_ms"]["median_ms"] / mine)
            # the report keeps the recorded speedup to 4 significant digits (``_recovery_quant_record``)
            assert speed[col]["vs_dense_int8"] == pytest.approx(cols[col]["speedup"]["vs_dense_same_runtime"], rel=1e-3)
            assert speed[col]["vs_dense_fp32"] == pytest.approx(cols[fp32]["dense_latency_ms"]["median_ms"] / mine)
            assert speed[col]["dense_int8_only"] == pytest.approx(
                cols[fp32]["dense_latency_ms"]["median_ms"] / cols[col]["dense_latency_ms"]["median_ms"])
    s = summary(first)
    assert first["summary"] == s and set(s["ort_int8"]["by_target"]) == {"2"}
    two = sorted(cell_speedups(r)["ort_int8"]["vs_dense_int8"] for r in first["cells"].values())
    assert s["ort_int8"]["by_target"]["2"] == {"median": pytest.approx(sum(two) / 2), "min": two[0], "max": two[1],
                                               "n": 2}


def test_drops_vs_dense_int8_are_against_the_dense_int8_predictions(measured):
    first, _, opener, *_ = measured
    y = opener.y
    for rec in first["cells"].values():
        cols = rec["runtime"]["columns"]
        # ORT: the dense INT8 predictions were made all wrong, so the model can only gain on them
        acc = cols["ort_int8"]["test"]["accuracy"]
        same = cols["ort_int8"]["vs_dense_same_runtime"]
        assert same["accuracy_drop_pts"] == pytest.approx(100.0 * (0.0 - acc))
        assert cols["ort_int8"]["vs_dense_fp32"]["accuracy_drop_pts"] != pytest.approx(same["accuracy_drop_pts"])
        # OpenVINO: the dense OpenVINO INT8 model's own predictions
        dense_acc = float((opener.logits["ov_int8"].argmax(1) == y).mean())
        ov = cols["ov_int8"]
        assert ov["vs_dense_same_runtime"]["accuracy_drop_pts"] == pytest.approx(
            100.0 * (dense_acc - ov["test"]["accuracy"]))
        lo, hi = ov["vs_dense_same_runtime"]["accuracy_drop_ci_pts"]
        assert lo <= ov["vs_dense_same_runtime"]["accuracy_drop_pts"] <= hi
        assert ov["test"]["n"] == len(y)  # the drops are paired over the same test images


def test_markdown_shows_every_cell_the_sentence_and_what_is_missing(measured):
    first, *_ = measured
    lines = markdown(first)
    text = "\n".join(lines)
    rows = [line for line in lines if line.startswith("| lrp") or line.startswith("| taylor")]
    assert len(rows) == 2 and "What pruning adds on top of INT8" in text and "n = 32 test images" in text
    med = first["summary"]["ov_int8"]["by_target"]["2"]["median"]
    assert f"OpenVINO ×{med:.2f} at MACs ÷2 (2 criteria" in text
    lrp = cell_speedups(first["cells"]["lrp/2"])
    assert f"| {lrp['ort_int8']['vs_dense_int8']:.2f} | {lrp['ort_int8']['vs_dense_fp32']:.2f} |" in rows[0]
    assert "random/3 (no recovered checkpoint in the cache)" in text
    assert markdown(None) == []


def test_bad_input_is_a_medprune_error(tmp_path):
    with pytest.raises(MedpruneError, match="repeats"):
        measure_cells(RUN, Opener(), cache_root=tmp_path, repeats=1)
    with pytest.raises(MedpruneError, match="sha256"):
        measure_cells({"cells": {}}, Opener(), cache_root=tmp_path)


def test_recovery_md_shows_the_section_of_a_pair_that_has_it(measured):
    from benchmarks.studies import _recovery_report as rep
    from tests.benchmarks.studies.recovery_fixtures import fake_cell, fake_run

    first, *_ = measured
    doc = rep.build([fake_run([fake_cell("lrp", 3.0, 2.0, 0)])], {"criteria": ["lrp"], "macs": [3.0], "threads": 1},
                    "cmd", "now")
    assert "INT8 per criterion" not in rep.markdown(doc)
    next(iter(doc["models"].values()))["quant_cells"] = first
    assert "\n".join(markdown(first)) in rep.markdown(doc)


def test_markdown_of_a_pair_with_no_measured_cell_is_one_line_saying_so():
    lines = markdown({"state": "kd", "cells": {}, "missing": {"lrp/2": "not cached", "dlb/2": "not cached"}})
    assert len([ln for ln in lines if ln]) == 1
    assert "not measured for this pair (2 recovered cells not cached" in lines[0]
    assert "n = ?" not in lines[0]


# ---- what the report keeps: slim records, the cross-pair table, recovery_int8.json ------------------------
CELL_BYTES = 2500  # a slim per-cell record (compact JSON); the measured record is ~8 KB, ~2.4 KB slim for real cells


def _full(root) -> dict:
    """The measured (cached) records of the fixture's cells, everything ``DenseReference.columns`` gave."""
    import json

    records = [json.loads(p.read_text()) for p in sorted(root.glob("quantcell-*.json"))]
    return {f"{r['criterion']}/{r['target']:g}": {**r, "cached": False} for r in records}


def _size(obj) -> int:
    import json

    return len(json.dumps(obj, separators=(",", ":")))


def test_the_report_keeps_slim_records_that_render_the_same_tables(measured):
    first, _, _, _, root = measured
    full = _full(root)
    assert set(full) == set(first["cells"])
    for key, rec in full.items():
        assert first["cells"][key] == slim(rec)
        assert "'sensitivity_drop_ci_pts'" in str(rec) and "'sensitivity_drop_ci_pts'" not in str(slim(rec))  # per class
        assert _size(rec) >= CELL_BYTES > _size(slim(rec))  # the bound fails on the measured (old) record
    as_measured = {**first, "cells": full}
    assert summary(as_measured) == first["summary"]
    assert markdown(as_measured) == markdown(first) and len(markdown(first)) > 5
    # the pair's shared setup is kept once: versions, column labels (runtime / precision)
    assert first["setup"]["columns"]["ov_int8"] == {"runtime": "openvino", "format": "openvino", "precision": "int8"}
    assert first["setup"]["versions"] == next(iter(full.values()))["runtime"]["versions"]


def test_printed_numbers_keep_the_digits_their_format_needs(measured):
    first, _, _, _, root = measured
    key, rec = next(iter(_full(root).items()))
    col = rec["runtime"]["columns"]["ort_int8"]
    # 4 significant digits would print 6.25 as "6.2", the measured value prints "6.3"
    col["vs_dense_fp32"]["accuracy_drop_pts"] = 6.250000000000001
    col["vs_dense_fp32"]["worst_sensitivity_drop_pts"] = 12.3456789
    short = slim(rec)["runtime"]["columns"]["ort_int8"]["vs_dense_fp32"]
    assert f"{short['accuracy_drop_pts']:.1f}" == "6.3" and short["worst_sensitivity_drop_pts"] == 12.35
    qc = {**first, "cells": {key: rec}}
    assert markdown({**qc, "cells": {key: slim(rec)}}) == markdown(qc)
    with pytest.raises(ValueError, match="runtime.columns"):
        slim({"criterion": "lrp"})


def test_setup_says_when_cells_were_measured_differently(measured):
    _, _, _, _, root = measured
    a, b = copy.deepcopy(list(_full(root).values()))
    b["runtime"]["versions"] = {**b["runtime"]["versions"], "openvino": "0.0"}
    s = setup([a, b])
    assert s["input_shape"] == list(SHAPE) and s["versions"] == {"differs": [a["runtime"]["versions"],
                                                                             b["runtime"]["versions"]]}


def test_overview_has_a_row_per_pair_from_its_summary(measured):
    first, *_ = measured
    models = {"tiny:vgg": {"dataset": "tiny", "model": "vgg", "quant_cells": first},
              "tiny:resnet": {"dataset": "tiny", "model": "resnet",
                              "quant_cells": {"cells": {}, "missing": {"lrp/2": "not cached"}}},
              "tiny:vit": {"dataset": "tiny", "model": "vit"}}
    lines = overview(models)
    rows = [ln for ln in lines if ln.startswith("| tiny")]
    assert len(rows) == 3 and lines[0].startswith("## INT8 per recovered cell")
    s = first["summary"]
    ort, ov = s["ort_int8"]["by_target"]["2"], s["ov_int8"]["by_target"]["2"]
    assert rows[0].startswith("| tiny | vgg | 2 of 3 | ")
    assert f"÷2 ×{ort['median']:.2f} (2) | ÷2 ×{ov['median']:.2f} (2) | ×{s['ort_int8']['dense_int8_only']['median']:.2f}" \
        in rows[0]
    assert "not measured (1 recovered cells not cached)" in rows[1] and "not measured (`--runtimes-per-cell`" in rows[2]
    assert all(ln.count("|") == lines[4].count("|") for ln in rows)  # as many cells as the header
    assert overview({"tiny:vit": models["tiny:vit"]}) == []


def test_the_per_cell_section_is_written_to_its_own_file(measured, tmp_path):
    import json

    from benchmarks.studies import _recovery_report as rep
    from tests.benchmarks.studies.recovery_fixtures import fake_cell, fake_run

    first, *_ = measured
    run = fake_run([fake_cell("lrp", 3.0, 2.0, 0)])
    doc = rep.build([run], {"criteria": ["lrp"], "macs": [3.0], "threads": 1}, "cmd", "now")
    next(iter(doc["models"].values()))["quant_cells"] = first
    rep.write(doc, [run], tmp_path)
    saved = json.loads((tmp_path / "recovery.json").read_text())
    int8 = json.loads((tmp_path / "recovery_int8.json").read_text())
    (m,) = saved["models"].values()
    assert "quant_cells" not in m and m["quant_cells_ref"] == {"file": "recovery_int8.json", "cells": 2, "missing": 1,
                                                               "summary": first["summary"]}
    assert int8["command"] == saved["command"] and int8["models"]["tiny:vgg19"]["checkpoint_sha256"] == "0" * 64
    text = (tmp_path / "recovery.md").read_text()
    assert "## INT8 per recovered cell: all pairs" in text and "\n".join(markdown(first)) in text
    assert rep.markdown(merge(saved, int8)) == rep.markdown(doc)  # the two files render recovery.md again
    with pytest.raises(ValueError, match="another run"):
        merge(saved, {**int8, "started": "later"})
    assert split(saved, "recovery_int8.json") == (saved, None)  # nothing to move: one file, as before
