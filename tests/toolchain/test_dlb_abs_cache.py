"""DLB speed paths: |W| taken once per scoring run, and an all-zero magnitude total passes no relevance."""

from __future__ import annotations

import torch
from torch import nn

from tests.conftest import tiny_model
from toolchain.importance import get_criterion
from toolchain.importance.dlb import backtrace, prepare
from toolchain.units import find_unit_layers, reduce_to_units


def test_abs_of_each_parameter_is_taken_once_across_batches(monkeypatch):
    model = tiny_model("vit")
    layers = find_unit_layers(model)
    torch.manual_seed(5)
    x = torch.randn(3, 1, 16, 16)
    taken = []
    original = torch.Tensor.abs
    work = prepare(model)
    params = {p.data_ptr() for p in work.parameters()}

    def counting(t):
        if t.data_ptr() in params:  # a parameter, or a detached / reshaped view of one
            taken.append(t)
        return original(t)

    cache: dict = {}
    expected = backtrace(work, x[:1], None, capture=layers).relevance
    got = backtrace(work, x[:1], None, capture=layers, abs_cache=cache).relevance
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    weights = {id(p) for p, _ in cache.values()}
    assert weights and weights <= {id(p) for p in work.parameters()}
    monkeypatch.setattr(torch.Tensor, "abs", counting)
    backtrace(work, x[1:], None, capture=layers, abs_cache=cache)
    assert {id(p) for p, _ in cache.values()} == weights
    assert not taken  # no parameter's |W| again
    monkeypatch.undo()
    # the criterion shares one cache over its batches: the same scores as batch by batch without one
    scores = get_criterion("dlb", batch_size=1)(model, x, None, layers)
    for ly in layers:
        alone = sum(reduce_to_units(backtrace(work, x[i:i + 1], None, capture=layers).relevance[ly.name], ly).double()
                    for i in range(3))
        assert torch.equal(scores[ly.name], alone.sum(0).float()), ly.name


def test_a_zero_total_passes_no_relevance_and_no_nan():
    """An output whose every |x_i w_ij| is 0 (a zero weight row, or inputs where the weights are non-zero
    are 0): its relevance is dropped, nothing becomes NaN, and the other output's split is exact."""
    lin = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.0, 0.0, 5.0], [2.0, -1.0, 0.0]]))
    x = torch.tensor([[1.0, 3.0, 0.0]])  # output 0: |x3 * 5| = 0, total 0
    rel = backtrace(prepare(lin), x, output_relevance=torch.tensor([[7.0, 1.0]])).input_relevance
    assert not rel.isnan().any()
    torch.testing.assert_close(rel, torch.tensor([[2 / 5, 3 / 5, 0.0]]))
