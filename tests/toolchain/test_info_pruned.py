"""`medprune info` on a pruned checkpoint shows params/MACs/size/latency next to the dense architecture."""

import json

import torch

from toolchain.cli import main
from toolchain.importance import get_criterion
from toolchain.masking import build_masks
from toolchain.models import build_model
from toolchain.removal import remove_units, save_pruned
from toolchain.units import find_unit_layers


def test_info_compares_pruned_with_dense(tmp_path, capsys):
    model = build_model("test_vit", 2, in_chans=1, img_size=16).eval()
    layers = find_unit_layers(model)
    scores = get_criterion("magnitude")(model, None, None, layers)
    masks = build_masks(scores, layers, 0.5)
    x = torch.randn(2, 1, 16, 16)
    pruned, report = remove_units(model, masks, x)
    meta = dict(model.medprune_spec, class_names=["a", "b"])
    path = save_pruned(tmp_path / "pruned.safetensors", pruned, meta, report, {"criterion": "magnitude", "ratio": 0.5})
    out_json = tmp_path / "info.json"
    try:
        main(["info", "--checkpoint", str(path), "--no-layers", "--json", str(out_json)])
    except SystemExit as exc:
        assert exc.code == 0
    assert "pruned vs dense" in capsys.readouterr().out
    cmp = json.loads(out_json.read_text())["pruned_vs_dense"]
    assert cmp["params"]["pruned"] < cmp["params"]["dense"]
    assert cmp["macs"]["ratio"] > 1.0 and set(cmp["latency"]) == {"batch1", "batch32"}
