"""torchvision models through medprune's unit discovery, LRP and removal (tiny 32 px inputs).

What works: ResNet (explicit residual sums, relevance conserved) and VGG(-BN) through every stage;
torchvision ViT weights once converted to timm's ViT. What does not: a natively built torchvision
ViT (``nn.MultiheadAttention`` and ``MLPBlock`` are not unit layers), which is refused by name.
"""

from __future__ import annotations

import pytest
import torch

from toolchain.errors import ModelError
from toolchain.importance import get_criterion
from toolchain.importance.lrp import LRPExplainer
from toolchain.models import build_model, load_checkpoint, save_checkpoint
from toolchain.units import find_unit_layers

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _model(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(arch, 2, 1, 32)
    gen = torch.Generator().manual_seed(1)
    for mod in model.modules():  # non-trivial BatchNorm statistics, so a forgotten merge would show
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.1, 0.1, generator=gen)
            mod.running_var.uniform_(0.5, 2, generator=gen)
    return model.eval()


# torchvision's VGG classifier alone is a 25088x4096 linear layer (~1 min each on 2 busy cores): slow
@pytest.mark.parametrize("arch, first, n_layers", [
    ("torchvision:resnet50", "conv1", 53),
    pytest.param("torchvision:vgg19", "features.0", 16, marks=pytest.mark.slow),
    pytest.param("torchvision:vgg19_bn", "features.0", 16, marks=pytest.mark.slow)])
def test_units_lrp_removal_and_reload(arch, first, n_layers, tmp_path):
    from toolchain.removal import remove_units

    model = _model(arch)
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    layers = find_unit_layers(model)
    assert len(layers) == n_layers and layers[0].name == first and {ly.kind for ly in layers} == {"conv"}
    scores = get_criterion("lrp")(model, x, torch.tensor([0, 1]), layers)
    assert all(torch.isfinite(scores[ly.name]).all() and scores[ly.name].shape == (ly.size,) for ly in layers)
    gen = torch.Generator().manual_seed(2)
    keep = {ly.name: torch.rand(ly.size, generator=gen) > 0.3 for ly in layers}
    pruned, report = remove_units(model, keep, x)
    assert report["parity_max_abs"] <= 1e-4 and report["params_after"] < report["params_before"]
    # the sidecar alone rebuilds the architecture
    weights = save_checkpoint(tmp_path / "m.safetensors", model, {})
    reloaded, meta = load_checkpoint(weights)
    assert meta["arch"] == arch
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), model(x))


def test_torchvision_resnet_relevance_is_conserved():
    model = _model("torchvision:resnet50")
    with torch.no_grad():
        model.fc.bias.zero_()
        for mod in model.modules():  # bias-free merged convs: relevance can only be conserved
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.zero_()
                mod.bias.zero_()
    x = torch.randn(2, 1, 32, 32)
    with LRPExplainer(model, x[:1], composite="epsilon") as ex:
        assert sum(n.endswith("canonizer_sum") or type(m).__name__ == "Sum" for n, m in ex.model.named_modules()) >= 16
        units, input_rel, logits = ex.relevance(x, None, find_unit_layers(model), absolute=False)
    target = logits.max(1).values
    # without explicit residual sums each block would pass its full relevance to both branches
    torch.testing.assert_close(units["conv1"].sum(1), target, rtol=1e-2, atol=1e-4)


def test_native_torchvision_vit_has_no_units_but_its_timm_conversion_does(tmp_path):
    from toolchain.models.import_weights import import_model

    native = build_model("torchvision:vit_b_16", 2, 3, 32)
    with pytest.raises(ModelError, match="no prunable units"):
        find_unit_layers(native)  # conv_proj is the residual stream, not units
    torch.save(native.state_dict(), tmp_path / "vit.pt")
    model, report = import_model("torchvision:vit_b_16", tmp_path / "vit.pt", 2, 3, 32)
    assert report["conversion_max_abs"] <= 1e-4
    kinds = {ly.kind for ly in find_unit_layers(model)}
    assert kinds == {"mlp", "head"}
    assert type(model).__module__.startswith("timm.")
