"""DL-Backtrace: the rule on hand-computed numbers, conservation per layer type, and scores on every family."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.conftest import tiny_model
from toolchain.errors import ConfigError, ModelError
from toolchain.importance import get_criterion
from toolchain.importance._dlb_rules import dlb_weights
from toolchain.importance.dlb import backtrace, prepare
from toolchain.units import find_unit_layers, get_module


def _relevance_in(model: nn.Module, x: torch.Tensor, rel_out: torch.Tensor) -> torch.Tensor:
    return backtrace(prepare(model), x, output_relevance=rel_out).input_relevance


def _assert_conserved(model: nn.Module, x: torch.Tensor) -> None:
    work = prepare(model)
    with torch.no_grad():
        out = work(x)
    rel_out = torch.rand_like(out)
    rel_in = backtrace(work, x, output_relevance=rel_out).input_relevance
    torch.testing.assert_close(rel_in.sum(), rel_out.sum(), rtol=1e-4, atol=1e-5)


# --- the rule on a hand-computed 2-input unit: x = (1, 2), w = (3, -1) -> c = (3, -2), P = 3, N = 2 -------------


def test_weights_with_positive_bias():
    wp, wn = dlb_weights(torch.tensor(3.0), torch.tensor(2.0), 0.5)
    # w+ = (P+b+)/(P+N+b+ +b-) * P/(P+b+) = 3.5/5.5 * 3/3.5;  w- = (N+b-)/(...) * N/(N+b-) = 2/5.5 * 2/2
    torch.testing.assert_close(wp, torch.tensor(3 / 5.5))
    torch.testing.assert_close(wn, torch.tensor(2 / 5.5))


def test_weights_with_negative_bias():
    # b = -4: w+ = 3/9, w- = (2+4)/9 * 2/6; no ReLU gate (the reference never applies one, see _dlb_rules)
    wp, wn = dlb_weights(torch.tensor(3.0), torch.tensor(2.0), -4.0)
    torch.testing.assert_close(wp, torch.tensor(3 / 9))
    torch.testing.assert_close(wn, torch.tensor(6 / 9 * 2 / 6))


def _two_input_linear(bias: float) -> nn.Linear:
    lin = nn.Linear(2, 1)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[3.0, -1.0]]))
        lin.bias.fill_(bias)
    return lin


def test_linear_two_inputs_hand_computed():
    rel = _relevance_in(_two_input_linear(0.5), torch.tensor([[1.0, 2.0]]), torch.ones(1, 1))
    # R1 = c1/P * R * w+ = 3/3 * 3/5.5;  R2 = c2/N * R * w- * (-1) = (-2)/2 * 2/5.5 * (-1)
    torch.testing.assert_close(rel, torch.tensor([[3 / 5.5, 2 / 5.5]]))


def test_linear_relu_hand_computed_as_the_reference():
    # an inactive unit (z = 3 - 2 - 4 < 0) given relevance 1: the ReLU passes it, the linear rule splits it
    # R1 = 3/3 * 3/9 = 1/3, R2 = 2/2 * (6/9 * 2/6) = 2/9, as the reference code computes it
    model = nn.Sequential(_two_input_linear(-4.0), nn.ReLU())
    rel = _relevance_in(model, torch.tensor([[1.0, 2.0]]), torch.ones(1, 1))
    torch.testing.assert_close(rel, torch.tensor([[1 / 3, 2 / 9]]))


# --- conservation (zero biases) -----------------------------------------------------------------------------


def test_conservation_conv():
    torch.manual_seed(0)
    _assert_conserved(nn.Conv2d(3, 5, 3, padding=1, bias=False), torch.randn(2, 3, 6, 6))


def test_conservation_linear():
    torch.manual_seed(0)
    _assert_conserved(nn.Linear(7, 4, bias=False), torch.randn(3, 7))


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.branch = nn.Conv2d(4, 4, 3, padding=1, bias=False)

    def forward(self, x):
        y = self.branch(x)
        y += x  # in-place, as timm's ResNet blocks do
        return y


def test_conservation_residual_add_and_split():
    torch.manual_seed(0)
    model, x = _Residual(), torch.randn(2, 4, 5, 5)
    _assert_conserved(model, x)
    # the in-place add really happened (it is computed out of place and rebound)
    bt = backtrace(prepare(model), x, output_relevance=torch.ones(2, 4, 5, 5))
    with torch.no_grad():
        torch.testing.assert_close(bt.logits, model(x))
    # the reference splits a sum equally between its terms: check it on a plain element-wise sum
    x = torch.tensor([[1.0, -3.0]])

    class Add(nn.Module):
        def forward(self, t):
            return t[:, :1] + t[:, 1:]

    rel = _relevance_in(Add(), x, torch.ones(1, 1))
    torch.testing.assert_close(rel, torch.tensor([[0.5, 0.5]]))


def test_conservation_conv_relu_conv_with_pooling():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 6, 3, padding=1, bias=False),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 4, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3, bias=False),
    )
    _assert_conserved(model, torch.randn(2, 2, 8, 8))


class _SelfAttention(nn.Module):
    def __init__(self, dim: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, n, c))


def test_conservation_attention():
    torch.manual_seed(0)
    _assert_conserved(_SelfAttention(), torch.randn(2, 5, 8))


def test_batchnorm_passes_relevance_unchanged():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 4, 3, bias=True), nn.BatchNorm2d(4)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(-1, 2)
        bn.bias.uniform_(-1, 1)
    x = torch.randn(2, 3, 6, 6)
    rel_out = torch.rand(2, 4, 4, 4)
    a = _relevance_in(nn.Sequential(conv, bn).eval(), x, rel_out)
    b = _relevance_in(conv, x, rel_out)
    torch.testing.assert_close(a, b)


def test_unfused_attention_is_run_fused():
    model = tiny_model("vit")
    for block in model.blocks:
        block.attn.fused_attn = False
    x = torch.randn(2, 1, 16, 16)
    layers = find_unit_layers(model)
    work = prepare(model)
    assert all(block.attn.fused_attn for block in work.blocks)
    assert not any(block.attn.fused_attn for block in model.blocks)  # the caller's model is untouched
    bt = backtrace(work, x, capture=layers)
    assert torch.isfinite(bt.input_relevance).all() and bt.input_relevance.abs().sum() > 0


def test_activation_rule_runs_on_a_real_timm_model():
    """Every ReLU of a timm ResNet is met by the activation rule, and relevance at an inactive unit is 0.

    That zero is why a ReLU gate (the paper's "inactive unit gives positive contributions nothing")
    cannot change DL-Backtrace on ReLU networks: the layer after an inactive unit hands it nothing.
    """
    import timm

    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=2, in_chans=1).eval()
    x = torch.randn(2, 1, 32, 32)
    relus = []
    handles = [m.register_forward_hook(lambda *_: relus.append(1)) for m in model.modules() if isinstance(m, nn.ReLU)]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    layers = [ly for ly in find_unit_layers(model) if ly.name.endswith("conv1")]  # each feeds a ReLU via its BN
    bt = backtrace(prepare(model), x, capture=layers)
    assert bt.activations == len(relus) > 0
    for ly in layers:
        pre = {}
        h = get_module(model, ly.hook).register_forward_hook(lambda _m, _i, o, pre=pre: pre.setdefault("a", o))
        with torch.no_grad():
            model(x)
        h.remove()
        inactive = pre["a"] <= 0
        assert inactive.any() and (bt.relevance[ly.name][~inactive] != 0).any(), ly.name
        assert torch.count_nonzero(bt.relevance[ly.name][inactive]) == 0, ly.name


def test_unsupported_op_on_the_relevance_path_is_reported():
    class Gated(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            return self.fc(x * torch.sigmoid(x))

    with pytest.raises(ModelError, match="no DL-Backtrace rule"):
        backtrace(prepare(Gated()), torch.randn(2, 3))


# --- the criterion ------------------------------------------------------------------------------------------


def _snapshot(model: nn.Module) -> tuple:
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [p.requires_grad for p in model.parameters()],
        [m.training for m in model.modules()],
        [getattr(m, "inplace", None) for m in model.modules()],
    )


def _assert_scores(model: nn.Module, x: torch.Tensor, **options) -> dict[str, torch.Tensor]:
    layers = find_unit_layers(model)
    before = _snapshot(model)
    with torch.no_grad():
        reference = model(x)
    scores = get_criterion("dlb", **options)(model, x, None, layers)
    for layer in layers:
        s = scores[layer.name]
        assert s.shape == (layer.size,) and torch.isfinite(s).all() and (s >= 0).all(), layer.name
    assert sum(float(s.sum()) for s in scores.values()) > 0
    after = _snapshot(model)
    assert after[1:] == before[1:]
    for k, v in before[0].items():
        assert torch.equal(after[0][k], v), k
    with torch.no_grad():
        assert torch.equal(model(x), reference)
    return scores


def test_tiny_models(tiny_family):
    model = tiny_model(tiny_family)
    if tiny_family == "resnet":  # timm zero-inits the last BN of each block; give the branches signal
        torch.manual_seed(1)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                nn.init.uniform_(m.weight, 0.5, 1.5)
    x = torch.randn(3, 1, 16, 16)
    scores = _assert_scores(model, x, batch_size=2)
    if tiny_family == "resnet":
        assert all(float(s.sum()) > 0 for s in scores.values())
    # the forward pass under DL-Backtrace is the model's own
    bt = backtrace(prepare(model), x)
    with torch.no_grad():
        torch.testing.assert_close(bt.logits, model(x))


def test_targets_override_and_logit_start():
    model = tiny_model("vgg")
    x = torch.randn(2, 1, 16, 16)
    layers = find_unit_layers(model)
    with torch.no_grad():
        pred = model(x).argmax(1)
    default = get_criterion("dlb")(model, x, None, layers)
    with torch.no_grad():  # callers may score under no_grad
        same = get_criterion("dlb")(model, x, pred, layers)
    other = get_criterion("dlb")(model, x, 1 - pred, layers)
    name = layers[0].name
    torch.testing.assert_close(default[name], same[name])
    assert not torch.allclose(default[name], other[name])
    logit = get_criterion("dlb", start="logit")(model, x, None, layers)
    assert torch.isfinite(logit[name]).all()


def test_bad_options():
    with pytest.raises(ConfigError):
        get_criterion("dlb", start="softmax")
    with pytest.raises(ConfigError):
        get_criterion("dlb", alpha=1)
    with pytest.raises(ConfigError):
        get_criterion("dlb").attribute(tiny_model("vgg"), None, None, find_unit_layers(tiny_model("vgg")))


@pytest.mark.slow
@pytest.mark.parametrize(
    "arch,kwargs",
    [
        ("vgg19", {}),
        ("resnet50", {}),
        ("vit_base_patch16_224", {"img_size": 32, "patch_size": 8}),
    ],
)
def test_real_size_models(arch, kwargs):
    import timm  # a dependency of medprune: missing is a failure, not a skip

    torch.manual_seed(0)
    model = timm.create_model(arch, num_classes=2, in_chans=1, **kwargs).eval()
    _assert_scores(model, torch.randn(1, 1, 32, 32))
