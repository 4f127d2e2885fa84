"""Every criterion that reads activations reads a conv unit at the same point: its BatchNorm's output
(``toolchain.units``: removal zeroes the filter *and* the BN's weight and bias, so what leaves the network is
the BN output channel, shift included).

The net is conv(1x1) -> BN (eval) -> ReLU -> global mean -> linear, on inputs in [0, 1), explaining class 0
(weights 1 on every channel). Three channels:

* 0: large filter (3), BN identity: its BN output is ``3x``;
* 1: small filter (0.1), BN shift 5: its BN output is ``0.1x + 5``, dominant after BN, negligible before;
* 2: dead, BN weight and shift 0: its BN output is exactly 0.

Only the BN *shift* separates the read points: a per-channel BN scale passes through activation x gradient
and through proportional relevance unchanged, so a scale-dominant channel would rank the same either way.
With every BN output >= 0 the net is linear in each channel's pooled BN output ``p_c``, so each criterion has
a closed form at the BN output (``EXPECTED``, derived from the criterion's docstring and code):

* taylor: sum_n |a x g| over positions = sum_n |p_nc w_c|;
* lrp (epsilon at the linear layer, BN merged into the conv, relevance kept through ReLU and the mean):
  relevance starts at the logit z_n = sum_c p_nc w_c, so the same sum_n |p_nc w_c|;
* dlb (relevance 1 at the class, split in proportion to contributions, bias-free linear):
  sum_n p_nc w_c / z_n;
* ig (conductance along the image path from the zero image): sum_n |(p_nc - p_c(0)) w_c|. IG attributes a
  change from the baseline, so the constant shift gets nothing, and through an eval-mode BN (an elementwise
  affine map) conductance is the same before and after it: IG cannot read "before BN" differently, and its
  case only pins its value.

Torch-Pruning's peers (``tp_peers``) score the parameters of a dependency group (conv filter, BN weight and
bias, the next layer's input weights), not a tensor at a read point; data-free criteria (magnitude, random)
read no activation. Neither is held to a read point here.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from toolchain.importance import get_criterion, registered
from toolchain.importance.tp_peers import TorchPruningPeer
from toolchain.units import find_unit_layers

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

FILTER, SHIFT = (3.0, 0.1, 1.0), (0.0, 5.0, 0.0)
BIG, SHIFTED, DEAD = 0, 1, 2


def _net() -> nn.Sequential:
    net = nn.Sequential(nn.Conv2d(1, 3, 1, bias=False), nn.BatchNorm2d(3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(3, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor(FILTER).view(3, 1, 1, 1))
        net[1].running_mean.zero_()
        net[1].running_var.fill_(1.0)
        net[1].weight.copy_(torch.tensor([1.0, 1.0, 0.0]))  # channel 2: BN weight 0 ...
        net[1].bias.copy_(torch.tensor(SHIFT))  # ... and shift 0: dead
        net[5].weight.copy_(torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]]))
        net[5].bias.zero_()
    return net.eval()


def _pooled(net: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """``p_nc``: the spatial mean of each channel's ReLU(BN output)."""
    with torch.no_grad():
        return net[:4](x).flatten(1)


def _contributions(net, x):
    return _pooled(net, x) * net[5].weight[0]  # p_nc w_c for class 0


EXPECTED = {
    "taylor": lambda net, x: _contributions(net, x).abs().sum(0),
    "lrp": lambda net, x: _contributions(net, x).abs().sum(0),
    "dlb": lambda net, x: (_contributions(net, x) / _contributions(net, x).sum(1, keepdim=True)).sum(0),
    "ig": lambda net, x: ((_pooled(net, x) - _pooled(net, torch.zeros_like(x[:1]))) * net[5].weight[0]).abs().sum(0),
}
READERS = sorted(n for n, cls in registered().items() if cls.needs_data and not issubclass(cls, TorchPruningPeer))


def _case():
    torch.manual_seed(0)
    net, x = _net(), torch.rand(4, 1, 6, 6)
    return net, x, torch.zeros(4, dtype=torch.long), find_unit_layers(net, example=x)


def test_every_activation_reading_criterion_has_a_derived_read_point_value():
    """A criterion added to the registry that reads activations must get its closed form in EXPECTED."""
    assert set(READERS) == set(EXPECTED)


def test_the_conv_unit_is_read_at_its_batchnorm():
    *_, layers = _case()
    assert [(ly.name, ly.hook) for ly in layers] == [("0", "1")]


@pytest.mark.parametrize("name", READERS)
def test_criterion_reads_the_batchnorm_output(name):
    net, x, y, layers = _case()
    got = get_criterion(name)(net, x, y, layers)["0"]
    expected = EXPECTED[name](net, x)
    torch.testing.assert_close(got, expected.float(), rtol=1e-3, atol=1e-5)
    # the dead channel (BN output exactly 0) scores 0, the lowest of all
    assert got[DEAD] == pytest.approx(0.0, abs=1e-6) and int(got.argmin()) == DEAD
    if name != "ig":  # the BN shift is part of the unit: the shifted channel leads, as only after BN it does
        assert int(got.argmax()) == SHIFTED


def test_a_read_before_batchnorm_ranks_the_other_way():
    """The premise of the ranking check above: at the conv's own output (Taylor with its hook moved there) the
    shifted channel is negligible and the large filter leads, so a criterion reading before BN fails it."""
    net, x, y, layers = _case()
    before = [dataclasses.replace(ly, hook=ly.name) for ly in layers]
    got = get_criterion("taylor")(net, x, y, before)["0"]
    assert int(got.argmax()) == BIG and got[SHIFTED] < 0.05 * got[BIG]
