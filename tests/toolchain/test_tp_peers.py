"""Torch-Pruning's Hessian (OBD) peer accumulates every reference image's squared gradient, as TP's docs
describe (TP 1.6.1's own ``accumulate_grad`` keeps only the last one)."""

from __future__ import annotations

import torch
from torch import nn

from tests.conftest import tiny_model


def test_group_hessian_sums_per_sample_squared_gradients():
    from toolchain.importance.tp_peers import _GroupHessian

    torch.manual_seed(0)
    lin, imp = nn.Linear(3, 2), _GroupHessian()
    imp.zero_grad()
    squares = []
    for x in torch.randn(4, 3):
        lin.zero_grad()
        lin(x[None]).sum().backward()
        squares.append(lin.weight.grad.clone() ** 2)
        imp.accumulate_grad(lin)
    assert imp._counter[lin.weight] == 4
    assert torch.allclose(imp._accu_grad[lin.weight], sum(squares))


def test_tp_hessian_reads_every_reference_image():
    from toolchain.importance import get_criterion
    from toolchain.units import find_unit_layers

    torch.manual_seed(0)
    model = tiny_model("vgg")
    layers = find_unit_layers(model)
    x, y = torch.randn(6, 1, 16, 16), torch.arange(6) % 2
    crit = get_criterion("tp-hessian")
    a = crit(model, x, y, layers)
    x2 = x.clone()
    x2[0] = torch.randn(1, 16, 16)  # only the first image differs: the last-sample-only bug would not see it
    b = crit(model, x2, y, layers)
    assert any(not torch.allclose(a[k], b[k]) for k in a)
