"""Canonical forms of timm CNNs for LRP, and the zennit composites medprune offers.

LRP rules are defined on linear layers, ReLUs, pools and explicit sums. timm CNNs hide three things
from zennit: BatchNorms after convs (merged into the conv here), residual additions written as
``x += shortcut`` (made an explicit ``Sum`` module so the Norm rule can split relevance between the
branches instead of copying it to both), and the functional upsampling in VGG's ``ConvMlp`` head
(made an ``AdaptiveAvgPool2d`` module so the Norm rule keeps relevance conserved through it).

Everything here is applied to a deep copy of the caller's model (see ``lrp.py``).
"""

from __future__ import annotations

import torch
from torch import nn
from zennit.canonizers import AttributeCanonizer, Canonizer, NamedMergeBatchNorm
from zennit.composites import (
    EpsilonAlpha2Beta1,
    EpsilonGammaBox,
    EpsilonPlusFlat,
    LayerMapComposite,
    layer_map_base,
)
from zennit.core import BasicHook, Composite, Stabilizer
from zennit.layer import Sum
from zennit.rules import ClampMod, Epsilon, Norm, ZPlus
from zennit.types import BatchNorm, Convolution
from zennit.types import Linear as LinearType

from ._lrp_rules import PAIR_SUM

COMPOSITES = ("epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1", "epsilon")


def find_conv_bn_pairs(
    model: nn.Module, example: torch.Tensor
) -> tuple[list[tuple[tuple[str], str]], torch.Tensor]:
    """``([((linear_name,), bn_name)], logits)`` for every BatchNorm whose input is exactly a conv/linear output.

    Found by running ``example`` and matching tensor identities, so it works for any module layout
    (timm registers ``downsample`` after ``conv3``/``bn3``, which defeats order-based matching).
    The logits of that forward pass come back too, so callers need not run another one.
    """
    produced: dict[int, str] = {}
    alive: list[torch.Tensor] = []  # keep outputs alive so their ids cannot be reused mid-trace
    pairs: list[tuple[tuple[str], str]] = []
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, LinearType):

            def out_hook(_m, _inp, out, name=name):
                if isinstance(out, torch.Tensor):
                    produced[id(out)] = name
                    alive.append(out)

            handles.append(module.register_forward_hook(out_hook))
        elif isinstance(module, BatchNorm) and module.affine and module.track_running_stats:

            def in_hook(_m, inp, name=name):
                src = produced.get(id(inp[0]))
                if src is not None and all(bn != name for _, bn in pairs):
                    pairs.append(((src,), name))

            handles.append(module.register_forward_pre_hook(in_hook))
    try:
        with torch.no_grad():
            logits = model(example)
    finally:
        for h in handles:
            h.remove()
    return pairs, logits


# px a side of the crop the wiring is traced on: which BatchNorm reads which conv does not depend on the
# image size, but a trace at 224 px costs a full one-image forward pass (~a quarter of ResNet50's frozen
# forward+backward on the 2 images res224 scores)
TRACE_SIDE = 32


def trace_conv_bn_pairs(
    model: nn.Module, example: torch.Tensor
) -> tuple[list[tuple[tuple[str], str]], torch.Tensor, torch.Tensor]:
    """``(pairs, logits, probe)``: :func:`find_conv_bn_pairs` on ``probe``, the top-left ``TRACE_SIDE`` px of
    ``example`` (images larger than that), else on ``example`` itself.

    A model that refuses the crop (a head sized for its input, an input-size assert) is traced on
    ``example``. The logits are ``probe``'s: check the canonized model on ``probe``.
    """
    probe = example[..., :TRACE_SIDE, :TRACE_SIDE] if example.dim() == 4 else example
    if probe.shape != example.shape:
        try:
            return (*find_conv_bn_pairs(model, probe), probe)
        except (RuntimeError, ValueError, AssertionError):  # too small for this model: trace the full size
            pass
    return (*find_conv_bn_pairs(model, example), example)


class TracedMergeBatchNorm(NamedMergeBatchNorm):
    """Merge each BatchNorm into the conv that feeds it (pairs from :func:`find_conv_bn_pairs`).

    zennit's merge leaves the BatchNorm computing ``x / sqrt(1 + eps)``; eps is zeroed too (and
    restored on ``remove``) so the merged model reproduces the original logits exactly.
    """

    def __init__(self, name_map):
        super().__init__(name_map)
        self.saved_eps = None

    def register(self, linears, batch_norm):
        super().register(linears, batch_norm)
        self.saved_eps = batch_norm.eps
        batch_norm.eps = 0.0

    def remove(self):
        super().remove()
        self.batch_norm.eps = self.saved_eps


def _residual_sum(self, x, shortcut, act):
    """The tail timm's Bottleneck and BasicBlock share, with the addition as an explicit Sum module."""
    if self.se is not None:
        x = self.se(x)
    if self.drop_path is not None:
        x = self.drop_path(x)
    if self.downsample is not None:
        shortcut = self.downsample(shortcut)
    return act(explicit_sum(self.canonizer_sum, shortcut, x))


def explicit_sum(module: Sum, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a + b`` through ``module`` (a zennit ``Sum``), so a rule on it splits relevance between a and b.

    Under ``_lrp_rules`` the module offers the pair form (no stacked copy); zennit's hooks need the stack.
    """
    pair = getattr(module, PAIR_SUM, None)
    return pair(a, b) if pair is not None else module(torch.stack([a, b], dim=-1))


def _timm_bottleneck_forward(self, x):
    shortcut = x
    x = self.act1(self.bn1(self.conv1(x)))
    x = self.aa(self.act2(self.drop_block(self.bn2(self.conv2(x)))))
    return _residual_sum(self, self.bn3(self.conv3(x)), shortcut, self.act3)


def _timm_basicblock_forward(self, x):
    shortcut = x
    x = self.aa(self.act1(self.drop_block(self.bn1(self.conv1(x)))))
    return _residual_sum(self, self.bn2(self.conv2(x)), shortcut, self.act2)


def _timm_convmlp_forward(self, x):
    k = self.input_kernel_size
    if x.shape[-2] < k or x.shape[-1] < k:
        self.canonizer_pool.output_size = (max(k, x.shape[-2]), max(k, x.shape[-1]))
        x = self.canonizer_pool(x)
    return self.act2(self.fc2(self.drop(self.act1(self.fc1(x)))))


def _timm_attribute_map(name: str, module: nn.Module) -> dict | None:
    from timm.models.resnet import BasicBlock, Bottleneck
    from timm.models.vgg import ConvMlp

    if type(module) is Bottleneck:
        return {"forward": _timm_bottleneck_forward.__get__(module), "canonizer_sum": Sum()}
    if type(module) is BasicBlock:
        return {"forward": _timm_basicblock_forward.__get__(module), "canonizer_sum": Sum()}
    if type(module) is ConvMlp:
        return {"forward": _timm_convmlp_forward.__get__(module), "canonizer_pool": nn.AdaptiveAvgPool2d(1)}
    return None


class TimmCanonizer(AttributeCanonizer):
    """Explicit residual sums for timm ResNet blocks and a pooling module for timm VGG's ConvMlp."""

    def __init__(self):
        super().__init__(_timm_attribute_map)

    def copy(self):
        return TimmCanonizer()


def canonizers_for(conv_bn_pairs: list[tuple[tuple[str], str]]) -> list[Canonizer]:
    """The canonizers medprune applies to a CNN before attaching LRP rules (BN merge first).

    ``conv_bn_pairs`` come from :func:`find_conv_bn_pairs` on the same model.
    """
    from zennit.torchvision import ResNetBasicBlockCanonizer, ResNetBottleneckCanonizer

    # zennit's own residual-sum canonizers for torchvision ResNets (``medprune import torchvision:resnet50``)
    return [TracedMergeBatchNorm(conv_bn_pairs), TimmCanonizer(), ResNetBottleneckCanonizer(),
            ResNetBasicBlockCanonizer()]


class NonNegativeZPlus(ZPlus):
    """zennit's ZPlus, skipping its negative-input term when the layer input is non-negative.

    zennit's ZPlus runs two modified forward/backward passes per layer (positive inputs with
    positive weights, negative inputs with negative weights). Behind a ReLU or max-pool the input
    has no negative part, so the second term is exactly zero: dropping it halves the work of the
    rule and leaves the relevance unchanged.
    """

    def __init__(self, stabilizer=1e-6, zero_params=None):
        super().__init__(stabilizer=stabilizer, zero_params=zero_params)
        self.stabilizer, self.zero_params = stabilizer, zero_params
        stabilize = Stabilizer.ensure(stabilizer)
        self.positive_only = (
            [lambda input: input],
            [ClampMod(min=0.0, zero_params=zero_params)],
            [lambda output: output],
            lambda out_grad, outputs: [out_grad / stabilize(outputs[0])],
            lambda inputs, gradients: inputs[0] * gradients[0],
        )

    def backward(self, module, grad_input, grad_output):
        if self.stored_tensors["input"][0].min() < 0:
            return super().backward(module, grad_input, grad_output)
        full = (self.input_modifiers, self.param_modifiers, self.output_modifiers, self.gradient_mapper,
                self.reducer)
        (self.input_modifiers, self.param_modifiers, self.output_modifiers, self.gradient_mapper,
         self.reducer) = self.positive_only
        try:
            return BasicHook.backward(self, module, grad_input, grad_output)
        finally:
            (self.input_modifiers, self.param_modifiers, self.output_modifiers, self.gradient_mapper,
             self.reducer) = full

    def copy(self):
        return NonNegativeZPlus(self.stabilizer, self.zero_params)


def _mean_pool_types() -> tuple[type, ...]:
    # timm's "fast" global pools are x.mean(): without a rule the gradient would divide relevance by H*W
    from timm.layers.adaptive_avgmax_pool import FastAdaptiveAvgPool

    return (FastAdaptiveAvgPool,)


def make_composite(
    composite: str,
    *,
    epsilon: float = 1e-6,
    gamma: float = 0.25,
    stabilizer: float = 1e-6,
    low: torch.Tensor | float = 0.0,
    high: torch.Tensor | float = 1.0,
    canonizers: list[Canonizer] | None = None,
) -> Composite:
    """A zennit composite by medprune name (see ``COMPOSITES``); ``low``/``high`` bound the input (ZBox)."""
    extra = [(_mean_pool_types(), Norm(stabilizer=stabilizer))]
    if composite == "epsilon_plus_flat":
        extra.append((Convolution, NonNegativeZPlus(stabilizer=stabilizer)))  # first match wins over ZPlus
        return EpsilonPlusFlat(epsilon=epsilon, stabilizer=stabilizer, layer_map=extra, canonizers=canonizers)
    if composite == "epsilon_gamma_box":
        return EpsilonGammaBox(
            low=low, high=high, epsilon=epsilon, gamma=gamma, stabilizer=stabilizer, layer_map=extra,
            canonizers=canonizers,
        )
    if composite == "epsilon_alpha2_beta1":
        return EpsilonAlpha2Beta1(epsilon=epsilon, stabilizer=stabilizer, layer_map=extra, canonizers=canonizers)
    if composite == "epsilon":
        layer_map = extra + layer_map_base(stabilizer) + [
            (Convolution, Epsilon(epsilon=epsilon)),
            (nn.Linear, Epsilon(epsilon=epsilon)),
        ]
        return LayerMapComposite(layer_map=layer_map, canonizers=canonizers)
    raise ValueError(f"unknown composite {composite!r}")

