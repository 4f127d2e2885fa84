"""A conv whose kernel covers its input takes a matrix-product input gradient inside IG, with torch's values."""

from __future__ import annotations

import contextlib

import torch

from tests.conftest import tiny_model
from toolchain.importance import get_criterion
from toolchain.importance import ig as ig_module
from toolchain.importance._whole_input_conv import _MatmulBackward, matmul_backward
from toolchain.units import find_unit_layers


def _input_grad(conv, x, g):
    xi = x.clone().requires_grad_(True)
    out = conv(xi)
    return out, out.grad_fn, torch.autograd.grad(out, xi, g)[0]


def test_matmul_backward_is_torchs_and_only_where_the_kernel_covers_the_input():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6, 5, 3).requires_grad_(False)
    x, g = torch.randn(4, 6, 3, 3), torch.randn(4, 5, 1, 1)
    out, _, expected = _input_grad(conv, x, g)
    with matmul_backward(conv):
        got_out, node, got = _input_grad(conv, x, g)
        assert node.name().endswith("_MatmulBackwardBackward")
        larger = conv(torch.randn(2, 6, 5, 5).requires_grad_(True))  # a 3x3 output: torch's own convolution
        assert "Convolution" in larger.grad_fn.name()
    assert torch.equal(got_out, out)  # the module's own forward
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6 * float(expected.abs().max()))
    assert "forward" not in conv.__dict__  # restored


def test_padded_grouped_or_trainable_convs_are_left_alone():
    convs = [torch.nn.Conv2d(4, 4, 3, padding=1).requires_grad_(False),
             torch.nn.Conv2d(4, 4, 3, groups=2).requires_grad_(False),
             torch.nn.Conv2d(4, 4, 3)]
    with matmul_backward(torch.nn.Sequential(*convs)):
        assert not any("forward" in c.__dict__ for c in convs)


def test_ig_scores_with_the_matmul_backward_are_the_convolution_backwards(monkeypatch):
    """Tiny VGG's ConvMlp runs fc1 (7x7) on its 4x4 map pooled up to 7x7: the patched backward is taken, and
    the unit scores match those of torch's backward to float rounding (1e-6 of each layer's largest score)."""
    model = tiny_model("vgg")
    layers = find_unit_layers(model)
    torch.manual_seed(4)
    x, targets = torch.randn(3, 1, 16, 16), torch.tensor([0, 1, 1])
    calls = []
    backward = _MatmulBackward.backward
    monkeypatch.setattr(_MatmulBackward, "backward", staticmethod(lambda ctx, g: calls.append(1) or backward(ctx, g)))
    crit = get_criterion("ig", n_steps=4, method="riemann_right", internal_batch_size=7)
    fast = crit(model, x, targets, layers)
    assert calls  # once per chunk of steps
    monkeypatch.setattr(ig_module, "matmul_backward", lambda m: contextlib.nullcontext(m))
    plain = crit(model, x, targets, layers)
    for ly in layers:
        scale = float(plain[ly.name].abs().max())
        assert scale > 0, ly.name
        torch.testing.assert_close(fast[ly.name], plain[ly.name], rtol=0, atol=1e-6 * scale, msg=ly.name)
