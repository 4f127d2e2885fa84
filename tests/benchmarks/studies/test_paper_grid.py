"""Paper grid: one cell end to end, a 2-cell sweep through local Ray with resumption, claim verdicts."""

from __future__ import annotations

import json

import pytest

from benchmarks.studies.paper import cache as store  # noqa: E402
from benchmarks.studies.paper import checkpoints as ckpts  # noqa: E402
from benchmarks.studies.paper import (
    claims,  # noqa: E402
    sweep,  # noqa: E402
)
from benchmarks.studies.paper import config as cfg_mod  # noqa: E402
from benchmarks.studies.paper import report as rep  # noqa: E402
from tests.conftest import write_tiny_npz  # noqa: E402

TINY_RESNET = {"layers": [1, 1, 1, 1], "channels": [8, 16, 16, 32], "stem_width": 8}


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    """A tiny ResNet trained for one epoch by toolchain.train on a tiny npz (its own cache dir)."""
    import os

    from toolchain.train import TrainConfig, train

    root = tmp_path_factory.mktemp("paper_grid")
    npz = write_tiny_npz(root / "tinymnist.npz", n=(32, 12, 12))
    old = os.environ.get("MEDPRUNE_CACHE")
    os.environ["MEDPRUNE_CACHE"] = str(root / "cache")
    try:
        cfg = TrainConfig(model="resnet50", data=str(npz), img_size=16, epochs=1, batch_size=8, patience=0,
                          build_args=TINY_RESNET, quiet=True, device="cpu", augment=False)
        weights = train(cfg)
    finally:
        if old is None:
            os.environ.pop("MEDPRUNE_CACHE", None)
        else:
            os.environ["MEDPRUNE_CACHE"] = old
    return {"npz": str(npz), "checkpoint": str(weights), "root": root}


def _grid(tiny_ckpt, criteria, samplings) -> cfg_mod.Grid:
    sizes = cfg_mod.Sizes(n_per_class=2, pool_per_class=None, fidelity_images=4, figure_images=2,
                     lossless_resolution=0.05, lossless_coarse_step=0.25)
    return cfg_mod.Grid(datasets=[tiny_ckpt["npz"]], models=["resnet50"], criteria=criteria, samplings=samplings,
                   ratios=[0.25, 0.5], sizes=sizes,
                   checkpoints={f"{tiny_ckpt['npz']}:resnet50": tiny_ckpt["checkpoint"]})


def test_cell_task_direct(tiny_ckpt):
    from benchmarks.studies.paper.cell import cell_task, dense_task, reference_task

    grid = _grid(tiny_ckpt, ["lrp"], ["random"])
    info = ckpts.checkpoint_info(tiny_ckpt["checkpoint"], "given")
    _, dspec = store.dense_spec(tiny_ckpt["npz"], info, grid)
    dense = dense_task(dspec)
    assert dense["test"]["n"] == 12 and 0 <= dense["val"]["accuracy"] <= 1
    rkey, rspec = store.reference_spec(tiny_ckpt["npz"], info, "random", grid)
    ref = reference_task(rspec)
    assert ref["per_class"] == [2, 2]
    _, cspec = store.cell_spec(tiny_ckpt["npz"], "resnet50", "lrp", "random", info, grid, rkey.id, "d")
    out = cell_task({**cspec, "dense": dense, "reference_indices": ref["indices"]})
    assert set(out["ratios"]) == {"0.25", "0.5"}
    for m in out["ratios"].values():
        assert m["n"] == 12 and set(m["per_class"]) == {"0", "1"} or len(m["per_class"]) == 2
    assert 0.0 <= out["lossless"]["ratio"] < 1 and out["lossless"]["search"]["search_split"] == "val"
    fid = out["fidelity"]["0.25"]
    assert fid["n"] == 4 and -1 <= fid["spearman_mean"] <= 1 and 0 <= fid["iou_mean"] <= 1
    assert out["_heatmaps"]["dense"].shape == (2, 16, 16) and out["_heatmaps"]["images"].shape[0] == 2


def test_sweep_through_ray_resumes_from_cache(tiny_ckpt, tmp_path):
    import ray

    grid = _grid(tiny_ckpt, ["magnitude", "lrp"], ["random"])
    cache = tmp_path / "cells"
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        first = sweep.run_grid(grid, cache_root=cache, command="test")
        assert first["counts"] == {"computed": 2, "cached": 0, "failed": 0}, first["failures"]
        assert all(c["result"] for c in first["cells"])
        again = sweep.run_grid(_grid(tiny_ckpt, ["magnitude", "lrp"], ["random"]), cache_root=cache, command="test")
    finally:
        ray.shutdown()
    assert again["counts"] == {"computed": 0, "cached": 2, "failed": 0}
    assert [c["result"] for c in again["cells"]] == [c["result"] for c in first["cells"]]
    assert len(again["runs"]) == 2
    report = sweep.write_results(again, tmp_path / "out")
    text = report.read_text()
    assert "The paper's claims" in text and "lossless" in text
    data = json.loads((tmp_path / "out" / "paper_grid.json").read_text())
    assert data["schema"] == cfg_mod.SCHEMA and len(data["cells"]) == 2
    assert list((tmp_path / "out").glob("*heatmaps.png"))


def test_cell_keys_track_config_and_checkpoint(tiny_ckpt):
    grid = _grid(tiny_ckpt, ["lrp"], ["random"])
    info = ckpts.checkpoint_info(tiny_ckpt["checkpoint"], "given")
    k1, _ = store.cell_spec("d", "m", "lrp", "random", info, grid, "r", "d")
    grid.sizes.fidelity_images = 8
    k2, _ = store.cell_spec("d", "m", "lrp", "random", info, grid, "r", "d")
    k3, _ = store.cell_spec("d", "m", "lrp", "random", {**info, "sha256": "0" * 64}, grid, "r", "d")
    assert len({k1, k2, k3}) == 3


def test_run_log_per_grid_and_per_dataset(tmp_path):
    cache = store.Cache(tmp_path)
    one = cfg_mod.Grid(datasets=["pneumoniamnist"])
    sweep._record_run(cache, one, 12.0, {"computed": 2, "cached": 0, "failed": 0, "interrupted": True}, "a")
    sweep._record_run(cache, one, 30.0, {"computed": 1, "cached": 2, "failed": 0}, "a")
    assert [r["wall_s"] for r in sweep.read_runs(cache, one)] == [12.0, 30.0]
    both = cfg_mod.Grid(datasets=["pneumoniamnist", "breastmnist"])
    assert sweep.read_runs(cache, both) == []
    by = sweep.runs_by_dataset(cache, both)
    assert len(by["pneumoniamnist"]) == 2 and by["breastmnist"] == []


def test_train_configs_reuse_baselines(tmp_path, monkeypatch):
    runs = [{"key": "vgg19:breastmnist", "model": "vgg19", "data": "breastmnist_64", "checkpoint": "/nowhere",
             "train_config": {"model": "vgg19", "data": "breastmnist_64", "epochs": 40, "lr": 1e-4,
                              "device": "auto"}}]
    (tmp_path / "baselines.json").write_text(json.dumps({"runs": runs}))
    monkeypatch.setattr(ckpts, "RESULTS", tmp_path)
    assert any(e["model"] == "vit_b16" for e in ckpts._baseline_runs())  # benchmarks.studies.baselines.RUNS
    monkeypatch.setattr(ckpts, "_baseline_runs", lambda: [])
    grid = cfg_mod.Grid(datasets=["breastmnist", "chest_xray_224"], models=["vgg19", "resnet50"])
    cfg, source = ckpts.train_config_for("breastmnist", "vgg19", grid)
    assert (cfg.data, cfg.epochs, cfg.lr, source) == ("breastmnist_64", 40, 1e-4, "baselines.json")
    cfg, source = ckpts.train_config_for("chest_xray_224", "vgg19", grid)  # same model, other dataset
    assert (cfg.data, cfg.load_size, cfg.epochs, cfg.train_subset) == ("chest_xray_224", 64, 40, 2000)
    assert "hyperparameters" in source
    cfg, source = ckpts.train_config_for("chest_xray_224", "resnet50", grid)
    assert source == "TrainConfig defaults" and cfg.train_subset == 2000
    assert ckpts._baseline_checkpoint("breastmnist", "vgg19") is None  # recorded path does not exist


# ---------------------------------------------------------------- claims from synthetic results


def _synthetic(lossless: dict, acc_shift: dict, dense_acc=0.8, low_gain=0.0, samp_bonus=None,
               samp_acc=None) -> dict:
    """Results with lossless[model][criterion] + samp_bonus[sampling] and
    accuracy = dense - ratio*0.2 + acc_shift[criterion] + samp_acc[sampling] (+ low_gain at ratios <= 0.3)."""
    samp_bonus = samp_bonus or {"confidence": 0.0, "random": 0.0, "clustering": 0.0}
    samp_acc = samp_bonus if samp_acc is None else samp_acc
    cells, models = [], {}
    for model, per_crit in lossless.items():
        models.setdefault("pneumoniamnist", {})[model] = {"dense": {"test": {"accuracy": dense_acc, "n": 100}}}
        for crit, ll in per_crit.items():
            for samp, bonus in samp_bonus.items():
                ratios = {f"{r:g}": {"accuracy": dense_acc - r * 0.2 + acc_shift.get(crit, 0) + samp_acc[samp]
                                     + (low_gain if r <= 0.3 else 0), "balanced_accuracy": 0.7, "auc": 0.9}
                          for r in (0.15, 0.3, 0.5, 0.7)}
                cells.append({"dataset": "pneumoniamnist", "model": model, "criterion": crit, "sampling": samp,
                              "data_free": crit in ("magnitude", "random"), "key": f"{model}{crit}{samp}",
                              "result": {"ratios": ratios, "lossless": {"ratio": min(0.95, ll + bonus),
                                                                        "test": {"accuracy": dense_acc}},
                                         "fidelity": {"0.15": {"spearman_mean": 0.9, "spearman_std": 0.05,
                                                               "iou_mean": 0.7, "iou_std": 0.1}}}})
    return {"grid": {"datasets": ["pneumoniamnist"], "ratios": [0.15, 0.3, 0.5, 0.7],
                     "samplings": list(samp_bonus)}, "sizes": {"fidelity_images": 16, "top_fraction": 0.1},
            "models": models, "cells": cells, "counts": {}, "runs": [], "wall_s": 1.0}


def _verdicts(results) -> dict[int, str]:
    return {c.number: c.verdict for c in claims.judge_claims(results)}


def test_claims_confirmed_when_results_match_the_paper():
    lossless = {"vgg19": {"lrp": 0.5, "dlb": 0.45, "ig": 0.4, "random": 0.1},
                "resnet50": {"lrp": 0.3, "dlb": 0.25, "ig": 0.2, "random": 0.05},
                "vit_b16": {"lrp": 0.75, "dlb": 0.7, "ig": 0.65, "random": 0.2}}
    res = _synthetic(lossless, {"lrp": 0.05, "dlb": 0.03, "ig": 0.02, "random": -0.1}, low_gain=0.05,
                     samp_bonus={"confidence": 0.0, "random": -0.01, "clustering": 0.02})
    assert _verdicts(res) == {i: claims.CONFIRMED for i in range(1, 7)}


def test_claims_refuted_when_results_contradict_the_paper():
    lossless = {"vgg19": {"lrp": 0.1, "dlb": 0.3, "ig": 0.2, "random": 0.6},
                "resnet50": {"lrp": 0.9, "dlb": 0.8, "ig": 0.8, "random": 0.7},
                "vit_b16": {"lrp": 0.05, "dlb": 0.1, "ig": 0.1, "random": 0.3}}
    res = _synthetic(lossless, {"lrp": -0.1, "dlb": 0.0, "ig": 0.0, "random": 0.05}, low_gain=-0.05,
                     samp_bonus={"confidence": 0.02, "random": 0.0, "clustering": -0.02})
    assert _verdicts(res) == {i: claims.REFUTED for i in range(1, 7)}


def test_claims_partial_and_untested():
    # VGG in range for one sampling only; LRP first by accuracy but not by lossless; tiny low-ratio gain
    lossless = {"vgg19": {"lrp": 0.3, "dlb": 0.6, "ig": 0.2}, "resnet50": {"lrp": 0.3, "dlb": 0.2, "ig": 0.1}}
    res = _synthetic(lossless, {"lrp": 0.02, "dlb": 0.0, "ig": 0.0}, low_gain=0.015,
                     samp_bonus={"confidence": 0.0, "random": 0.05, "clustering": 0.2},
                     samp_acc={"confidence": 0.0, "random": 0.0, "clustering": 0.0})
    v = _verdicts(res)
    assert v[1] == claims.UNTESTED  # no ViT in the grid
    assert v[2] == claims.PARTIAL  # mean 0.38, only clustering (0.5) inside 45-55 %
    assert v[4] == claims.PARTIAL
    assert v[5] == claims.PARTIAL  # clustering first by lossless, all samplings tie on accuracy
    assert v[6] == claims.PARTIAL  # +0.5 points < one image of 100


def test_report_renders_synthetic_results(tmp_path):
    lossless = {"vgg19": {"lrp": 0.5, "magnitude": 0.2}, "vit_b16": {"lrp": 0.7, "magnitude": 0.3}}
    res = _synthetic(lossless, {"lrp": 0.02})
    res["command"] = "medprune study paper_grid --models vgg19,vit_b16"
    path = rep.write_report(res, tmp_path)
    text = path.read_text()
    assert "medprune study paper_grid --models vgg19,vit_b16" in text
    assert "| vit_b16 | lrp |" in text and "0.90 ± 0.05" in text
    assert (tmp_path / "paper_grid_pneumoniamnist_accuracy.png").exists()


def test_report_cites_a_corner_biased_model_from_relevance_flow(tmp_path):
    res = _synthetic({"resnet50": {"lrp": 0.5}}, {"lrp": 0.0})
    res["command"] = "medprune study paper_grid"
    flow = {"runs": [
        {"dataset": "pneumoniamnist", "model": "resnet50",
         "methods": {"lrp:epsilon_plus_flat": {"corner_share_mean": 0.55}, "grad_x_input": {"corner_share_mean": 0.09}}},
        {"dataset": "pneumoniamnist", "model": "vgg19",
         "methods": {"lrp:epsilon_plus_flat": {"corner_share_mean": 0.05}, "grad_x_input": {"corner_share_mean": 0.04}}},
    ]}
    text = rep.write_report(res, tmp_path).read_text()
    assert "top-left 1/16" not in text  # no diagnostic next to the report: no caveat
    (tmp_path / "relevance_flow.json").write_text(json.dumps(flow))
    text = rep.write_report(res, tmp_path).read_text()
    assert "pneumoniamnist/resnet50: its dense LRP heatmaps put 55 % of |relevance| in the top-left 1/16" in text
    assert "pneumoniamnist/vgg19: its dense" not in text


def test_report_flags_a_checkpoint_whose_best_epoch_was_the_first(tmp_path):
    res = _synthetic({"vit_b16": {"lrp": 0.5}}, {"lrp": 0.0})
    res["command"] = "medprune study paper_grid"
    res["models"]["pneumoniamnist"]["vit_b16"]["checkpoint"] = "/ck/vit.safetensors"
    runs = [{"checkpoint": "/ck/vit.safetensors", "best_epoch": 1, "epochs_run": 5, "test": {"accuracy": 0.81}},
            {"checkpoint": "/ck/other.safetensors", "best_epoch": 1, "epochs_run": 5, "test": {"accuracy": 0.5}}]
    (tmp_path / "baselines.json").write_text(json.dumps({"runs": runs}))
    text = rep.write_report(res, tmp_path).read_text()
    assert "pneumoniamnist/vit_b16: the checkpoint's best validation epoch was its first (early stop after 5" in text
    assert text.count("best validation epoch was its first") == 1


def test_cell_keys_change_when_the_cell_code_changes(tiny_ckpt, monkeypatch):
    grid = _grid(tiny_ckpt, ["lrp"], ["random"])
    info = ckpts.checkpoint_info(tiny_ckpt["checkpoint"], "given")
    before, _ = store.cell_spec("d", "m", "lrp", "random", info, grid, "r", "d")
    import toolchain.pipeline

    monkeypatch.setattr(toolchain.pipeline, "code_version", lambda *objs, **kw: "edited criterion")
    after, _ = store.cell_spec("d", "m", "lrp", "random", info, grid, "r", "d")
    assert before != after and before.id != after.id


def test_heatmaps_of_recorded_folders_and_of_results_from_the_old_layout(tmp_path):
    import numpy as np

    maps = {"dense": np.ones((1, 2, 2), np.float32)}
    (tmp_path / "stages" / "cell-0123").mkdir(parents=True)
    np.savez_compressed(tmp_path / "stages" / "cell-0123" / "heatmaps.npz", **maps)
    (tmp_path / "cells").mkdir()
    np.savez_compressed(tmp_path / "cells" / f"{'a' * 64}.npz", **maps)
    load = store.heatmap_loader({"cache_root": str(tmp_path)})
    assert np.array_equal(load({"key": "x", "folder": "stages/cell-0123"})["dense"], maps["dense"])
    assert np.array_equal(load({"key": "a" * 64})["dense"], maps["dense"])  # written before the pipeline layout
    assert load({"key": "b" * 64}) is None and load({"key": "x", "folder": "stages/cell-gone"}) is None
