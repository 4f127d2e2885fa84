"""IG's hook-fed conductance and eval-BatchNorm backward give the scores of the dense form they replaced.

The reference below is the previous implementation in its plainest form: every step of every image in one
batch, the gradient at every unit layer's tensor from one ``torch.autograd.grad`` call (torch's own
BatchNorm backward), then ``sum_i (a_i - a_{i-1}) * g_i`` per layer.
"""

from __future__ import annotations

import pytest
import torch

from tests.conftest import tiny_model
from toolchain.importance import get_criterion
from toolchain.importance._eval_batchnorm import affine_backward
from toolchain.importance._hooks import capture, frozen_params
from toolchain.units import find_unit_layers, reduce_to_units


def dense_unit_scores(model, x, targets, layers, n_steps):
    """Right-Riemann conductance at every layer from all steps at once (zero baseline), as unit scores."""
    n = len(x)
    alphas = torch.arange(0, n_steps + 1, dtype=x.dtype).view(-1, 1, 1, 1, 1) / n_steps
    path = (alphas * x).reshape(-1, *x.shape[1:]).requires_grad_(True)  # step 0 is the baseline
    with frozen_params(model), capture(model, layers, copy=True) as acts:
        logits = model(path)
        picked = logits[n:].gather(1, targets.repeat(n_steps).unsqueeze(1)).sum()
        grads = torch.autograd.grad(picked, [acts[ly.name] for ly in layers])
    scores = {}
    for ly, g in zip(layers, grads, strict=True):
        a = acts[ly.name].detach().reshape(n_steps + 1, n, *acts[ly.name].shape[1:])
        term = ((a[1:] - a[:-1]) * g.reshape(a.shape)[1:]).sum(0)
        scores[ly.name] = reduce_to_units(term.abs().sum(0, keepdim=True), ly, absolute=False)[0]
    return scores


def _resnet_with_real_batchnorms():
    model = tiny_model("resnet")
    torch.manual_seed(7)
    for m in model.modules():  # timm zero-initialises bn3's weight: give every BN a non-trivial affine map
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.2)
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.mark.parametrize("internal_batch_size", [256, 3])
def test_hooked_scores_equal_the_dense_form(internal_batch_size):
    """float32, so the two may differ by rounding only: the same products and sums in the same order, except
    that the BatchNorm backward multiplies by ``weight * invstd`` in its own kernel. Tolerance: 1e-5 of each
    layer's largest score (a few float32 ulps carried through the layers), far below the gaps that rank units.
    ``internal_batch_size=3`` (one step of 2 images, plus the baseline in the first chunk) crosses chunk
    borders, where each layer's last activation is carried to the next chunk."""
    model = _resnet_with_real_batchnorms()
    layers = find_unit_layers(model)
    torch.manual_seed(3)
    x = torch.randn(2, 1, 16, 16)
    targets = torch.tensor([1, 0])
    ref = dense_unit_scores(model, x, targets, layers, n_steps=4)
    ours = get_criterion("ig", n_steps=4, method="riemann_right", internal_batch_size=internal_batch_size)(
        model, x, targets, layers)
    for ly in layers:
        scale = float(ref[ly.name].abs().max())
        assert scale > 0, ly.name
        torch.testing.assert_close(ours[ly.name], ref[ly.name], rtol=1e-5, atol=1e-5 * scale, msg=ly.name)


def test_eval_batchnorm_backward_is_torchs():
    """The one-multiply backward gives torch's input gradient; train-mode BatchNorms are left alone."""
    model = _resnet_with_real_batchnorms()
    x = torch.randn(3, 1, 16, 16)
    with frozen_params(model):
        xi = x.clone().requires_grad_(True)
        (expected,) = torch.autograd.grad(model(xi)[:, 1].sum(), xi)
        with affine_backward(model):
            assert all("forward" in m.__dict__ for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
            xi = x.clone().requires_grad_(True)
            (got,) = torch.autograd.grad(model(xi)[:, 1].sum(), xi)
    assert not any("forward" in m.__dict__ for m in model.modules())  # restored
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6 * float(expected.abs().max()))
    model.train()
    with frozen_params(model), affine_backward(model):
        assert not any("forward" in m.__dict__ for m in model.modules())


def _scores(model, x, targets, **options):
    layers = find_unit_layers(model)
    return get_criterion("ig", n_steps=4, method="riemann_right", **options)(model, x, targets, layers)


@pytest.mark.parametrize("family", ["vgg", "resnet", "vit"])
@pytest.mark.parametrize("options", [{}, {"internal_batch_size": 5, "baseline": "mean"}, {"internal_batch_size": 7}])
def test_pieces_do_not_change_a_bit(monkeypatch, family, options):
    """Differences kept in pieces of one image (``_PIECE_BYTES`` tiny) give the very scores of one piece per layer:
    the same element-wise differences and products, each image's steps summed by the same reduction. Crosses
    chunk borders (``internal_batch_size``) and per-image baselines."""
    from toolchain.importance import ig

    model = _resnet_with_real_batchnorms() if family == "resnet" else tiny_model(family)
    torch.manual_seed(5)
    x, targets = torch.randn(3, 1, 16, 16), torch.tensor([0, 1, 1])
    monkeypatch.setattr(ig, "_PIECE_BYTES", 1 << 40)
    whole = _scores(model, x, targets, **options)
    monkeypatch.setattr(ig, "_PIECE_BYTES", 1)
    assert len(ig._pieces(torch.empty(2, 3, 4))) == 3  # one image a piece
    pieces = _scores(model, x, targets, **options)
    for name, s in whole.items():
        assert torch.equal(pieces[name], s), name


@pytest.mark.parametrize("family", ["vgg", "resnet"])
def test_first_unit_layer_enters_the_graph_without_a_copy(monkeypatch, family):
    """The first unit layers' outputs go into the graph in place (``_Enter``), not as a copied leaf, and the
    scores are those of the copied leaf to the bit; the model's in-place ReLU after them still works."""
    from toolchain.importance import ig

    model = _resnet_with_real_batchnorms() if family == "resnet" else tiny_model(family)
    torch.manual_seed(6)
    x, targets = torch.randn(2, 1, 16, 16), torch.tensor([1, 0])
    entered = []
    forward = ig._Enter.forward
    monkeypatch.setattr(ig._Enter, "forward", staticmethod(lambda ctx, t, anchor: entered.append(t) or forward(ctx, t, anchor)))
    in_place = _scores(model, x, targets)
    assert len(entered) == 1  # the first unit layer only; the later ones already hang from it
    monkeypatch.setattr(ig, "_own", lambda out, inputs: False)
    copied = _scores(model, x, targets)
    for name, s in copied.items():
        assert torch.equal(in_place[name], s), name
