"""Layer-wise Relevance Propagation scores per unit ("Pruning by Explaining Revisited", Hatefi et al. 2024).

Relevance starts at the target class logit (the predicted class when no target is given) and is
propagated to every unit; a unit's score is its |relevance| summed over positions (spatial or
tokens) and over the unit's channels, then over the reference samples.

* CNNs (VGG, ResNet, other timm CNNs): zennit's rules on a canonized copy (BatchNorms merged into
  their convs, explicit residual sums, see ``_lrp_canonizers``). The default composite
  ``epsilon_plus_flat`` runs as lean autograd rules (``_lrp_rules``: the same relevance as zennit's
  hooks, without the discarded ordinary backward); the other composites use zennit's hooks. A conv
  unit is read at its BatchNorm's output (``units``); the merged BatchNorm passes relevance unchanged.
* ViTs (timm VisionTransformer): AttnLRP/CP-LRP by patched forwards (``_lrp_vit``); relevance at a
  tensor is activation x gradient. MLP units are read at ``fc1``'s output, heads at ``proj``'s
  input. The ``composite`` option does not apply to ViTs (linear layers use the z-rule).

The criterion prepares the caller's model in place and restores it exactly when it returns
(``LRPExplainer(copy=False)``), and asks for no input relevance: the backward pass stops at the
first unit layer.
"""

from __future__ import annotations

import copy as _copy
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError, ModelError
from ..units import UnitLayer, get_module, reduce_to_units
from . import _lrp_rules
from ._hooks import batches, model_device
from ._lrp_canonizers import COMPOSITES, canonizers_for, make_composite, trace_conv_bn_pairs
from ._lrp_vit import has_attention, patch
from .base import Criterion, register


class LRPExplainer:
    """``model`` prepared for LRP; use as a context manager (``with LRPExplainer(...)``).

    ``example`` (one or a few inputs) is used to trace which BatchNorm reads which conv, and to
    check that merging them left the logits unchanged: images larger than ``TRACE_SIDE`` px are
    traced and checked on a crop of that size when the model takes it (``trace_conv_bn_pairs``),
    others at the first ``relevance`` call, on the batch's logits. ``low``/``high``
    bound the input values for the ZBox rule of ``epsilon_gamma_box``. ``zennit_hooks=True`` runs
    ``epsilon_plus_flat`` through zennit's hooks instead of ``_lrp_rules`` (what the fast rules are
    tested against).

    ``copy=True`` (default) prepares a deep copy. ``copy=False`` prepares ``model`` itself and undoes
    every change on ``close`` (BatchNorm merges, canonized blocks, patched forwards, grad/in-place
    flags, train mode), saving the copy.
    """

    def __init__(
        self,
        model: nn.Module,
        example: torch.Tensor,
        *,
        composite: str = "epsilon_plus_flat",
        epsilon: float = 1e-6,
        gamma: float = 0.25,
        stabilizer: float = 1e-6,
        low: float | torch.Tensor | None = None,
        high: float | torch.Tensor | None = None,
        zennit_hooks: bool = False,
        copy: bool = True,
    ):
        if composite not in COMPOSITES:
            raise ConfigError(f"lrp: unknown composite {composite!r}; choose from {', '.join(COMPOSITES)}")
        self.device = model_device(model)
        example = example.to(self.device)
        self.transformer = has_attention(model)
        self.composite = None
        self._undo: list = []  # callables that restore the caller's model, run in reverse by close()
        net = _copy.deepcopy(model) if copy else model
        probe = example  # what the canonized model's logits are checked on
        try:
            self._prepare(net)
            if self.transformer:
                with torch.no_grad():
                    reference = net(example)
                self._undo.append(patch(net))
            else:
                # merging BatchNorms is what can go wrong (a conv output that also feeds another
                # layer); a model without any skips the tracing pass and the logit check
                has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
                pairs, reference, probe = trace_conv_bn_pairs(net, example) if has_bn else ([], None, example)
                for canonizer in canonizers_for(pairs):
                    instances = canonizer.apply(net)
                    self._undo += [inst.remove for inst in instances]
                for p in net.parameters():  # zennit's BatchNorm merge adds bias parameters to bias-free convs
                    p.requires_grad_(False)  # (gone again on remove): no bias gradients either
                if composite == "epsilon_plus_flat" and not zennit_hooks and _lrp_rules.supports(net):
                    self._undo.append(_lrp_rules.attach(net, epsilon=epsilon, stabilizer=stabilizer))
                else:
                    self.composite = make_composite(
                        composite,
                        epsilon=epsilon,
                        gamma=gamma,
                        stabilizer=stabilizer,
                        low=example.min().detach() if low is None else torch.as_tensor(low),
                        high=example.max().detach() if high is None else torch.as_tensor(high),
                    )
                    self.composite.register(net)
            self.model = net
            self._model_name = type(model).__name__
            # checked against the first batch that starts with ``example`` (no extra forward pass), else by a
            # forward pass of its own: now for a trace's small crop, in the first ``relevance`` call otherwise
            self._unchecked: tuple[torch.Tensor, torch.Tensor] | None = None if reference is None else (probe, reference)
            if reference is not None and probe is not example:
                self._check_logits()
        except BaseException:
            self.close()
            raise

    def _prepare(self, net: nn.Module) -> None:
        """Eval mode, frozen parameters, no in-place activations (hooks need the tensors the forward made)."""
        training = [m for m in net.modules() if m.training]  # restored module by module, as it was
        if training:
            net.eval()
            self._undo.append(lambda: [setattr(m, "training", True) for m in training])
        flags = [(p, p.requires_grad) for p in net.parameters()]
        for p, _ in flags:
            p.requires_grad_(False)
        self._undo.append(lambda: [p.requires_grad_(f) for p, f in flags])
        inplace = [m for m in net.modules() if getattr(m, "inplace", False) is True]
        for m in inplace:
            m.inplace = False
        self._undo.append(lambda: [setattr(m, "inplace", True) for m in inplace])

    def _check_logits(self, x: torch.Tensor | None = None, logits: torch.Tensor | None = None) -> None:
        """Canonized vs original logits on the traced input: ``logits`` of a batch ``x`` that starts with it, or
        a pass of its own."""
        example, reference = self._unchecked
        self._unchecked = None
        n = len(example)
        if x is not None and len(x) >= n and torch.equal(x[:n], example):
            canonical = logits[:n].detach()
        else:
            with torch.no_grad():
                canonical = self.model(example)
        diff = (canonical - reference).abs().max().item()
        if not diff <= 1e-3 * max(1.0, reference.abs().max().item()):
            raise ModelError(
                f"lrp: canonizing {self._model_name} for LRP changed its logits (max diff {diff:.3g}); "
                "a BatchNorm-merged conv output probably feeds another layer too"
            )

    def close(self) -> None:
        if self.composite is not None:
            self.composite.remove()
            self.composite = None
        while self._undo:
            self._undo.pop()()

    def __enter__(self) -> LRPExplainer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def relevance(
        self,
        x: torch.Tensor,
        targets: torch.Tensor | None = None,
        layers: Sequence[UnitLayer] = (),
        *,
        absolute: bool = True,
        input_relevance: bool = True,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None, torch.Tensor]:
        """One batch: ``(unit relevance {layer: (N, size)}, input relevance (N, C, H, W), logits)``.

        The output relevance of sample ``i`` is its target logit, so with conservative rules each
        layer's signed relevance (``absolute=False``) sums to about that logit.
        ``input_relevance=False``: the input relevance is None and the backward pass stops at the
        unit layers' tensors (the layers before the first unit layer are not propagated through).
        """
        x = x.to(self.device).detach()
        if input_relevance:
            x.requires_grad_(True)
        units: dict[str, torch.Tensor] = {}
        starts: list[torch.Tensor] = []  # unit tensors made graph leaves (no input gradient wanted)
        handles = [self._capture(layer, units, absolute, None if input_relevance else starts) for layer in layers]
        try:
            with torch.enable_grad():
                logits = self.model(x)
                if self._unchecked is not None:
                    self._check_logits(x.detach(), logits)
                if targets is None:
                    tgt = logits.argmax(1)
                else:
                    tgt = torch.as_tensor(targets, dtype=torch.long, device=logits.device).reshape(-1)
                onehot = torch.zeros_like(logits).scatter_(1, tgt.unsqueeze(1), 1.0)
                # zennit propagates relevance itself; the patched ViT propagates a gradient (R = a * g)
                seed = onehot if self.transformer else onehot * logits.detach()
                wrt = [x] if input_relevance else starts
                grads = torch.autograd.grad(logits, wrt, grad_outputs=seed, allow_unused=True) if wrt else [None]
        finally:
            for h in handles:
                h.remove()
        missing = [layer.name for layer in layers if layer.name not in units]
        if missing:
            raise ModelError(f"lrp: no relevance reached {', '.join(missing[:3])}")
        input_rel = None
        if input_relevance:
            input_rel = (grads[0] * x.detach() if self.transformer else grads[0]).detach()
        units = {layer.name: units[layer.name] for layer in layers}  # hooks fire in backward order
        return units, input_rel, logits.detach()

    def _capture(self, layer: UnitLayer, sink: dict[str, torch.Tensor], absolute: bool,
                 starts: list[torch.Tensor] | None):
        """Hook that reduces the relevance reaching ``layer``'s tensor into ``sink``.

        ``starts`` given: a tensor outside the graph (the input needs no gradient) becomes a leaf
        that requires one, and is appended, so the backward pass starts the graph there.
        """
        module = get_module(self.model, layer.hook)

        def on_tensor(t: torch.Tensor) -> None:
            if not isinstance(t, torch.Tensor):
                return
            if not t.requires_grad:
                if starts is None or not t.is_floating_point():
                    return
                starts.append(t.requires_grad_(True))
            act = t.detach() if self.transformer else None

            def on_grad(g: torch.Tensor) -> None:
                rel = g * act if act is not None else g
                per_sample = reduce_to_units(rel.detach(), layer, absolute=absolute)
                sink[layer.name] = sink[layer.name] + per_sample if layer.name in sink else per_sample

            t.register_hook(on_grad)

        # prepended, so an input port sees the tensor before zennit wraps it: its gradient is then
        # the relevance that zennit's rule for this module hands down
        if layer.port == "output":
            return module.register_forward_hook(lambda _m, _i, out: on_tensor(out), prepend=True)
        return module.register_forward_pre_hook(lambda _m, inp: on_tensor(inp[0]), prepend=True)


@register
class LRP(Criterion):
    name = "lrp"

    def __init__(
        self,
        composite: str = "epsilon_plus_flat",
        epsilon: float = 1e-6,
        gamma: float = 0.25,
        stabilizer: float = 1e-6,
        batch_size: int = 64,
        **options,
    ):
        # one batched pass over the usual 20-40 reference images
        super().__init__(batch_size=batch_size, **options)
        if self.batch_size < 1:
            raise ConfigError(f"criterion 'lrp': batch_size must be >= 1, got {self.batch_size}")
        if composite not in COMPOSITES:
            raise ConfigError(f"criterion 'lrp': unknown composite {composite!r}; choose from {', '.join(COMPOSITES)}")
        for key, value in (("epsilon", epsilon), ("gamma", gamma), ("stabilizer", stabilizer)):
            if not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"criterion 'lrp': {key} must be a number >= 0, got {value!r}")
        self.composite = composite
        self.epsilon = float(epsilon)
        self.gamma = float(gamma)
        self.stabilizer = float(stabilizer)

    def explainer(self, model: nn.Module, inputs: torch.Tensor, copy: bool = True) -> LRPExplainer:
        return LRPExplainer(
            model,
            inputs[:1],
            copy=copy,
            composite=self.composite,
            epsilon=self.epsilon,
            gamma=self.gamma,
            stabilizer=self.stabilizer,
            low=inputs.min().detach(),
            high=inputs.max().detach(),
        )

    def attribute(
        self, model: nn.Module, inputs: torch.Tensor | None, targets, layers: Sequence[UnitLayer]
    ) -> dict[str, torch.Tensor]:
        if inputs is None or len(inputs) == 0:
            raise ConfigError("criterion 'lrp' needs reference images")
        totals = {layer.name: torch.zeros(layer.size, dtype=torch.float64) for layer in layers}
        if targets is not None:
            targets = torch.as_tensor(targets, dtype=torch.long).reshape(-1)
        # the model itself is canonized for the call and restored after it: no deep copy to pay for
        with self.explainer(model, inputs, copy=False) as ex:
            for sl in batches(len(inputs), self.batch_size):
                units, _, _ = ex.relevance(inputs[sl], None if targets is None else targets[sl], layers,
                                           input_relevance=False)
                for name, per_sample in units.items():
                    totals[name] += per_sample.sum(0).double().cpu()
        return {name: t.float() for name, t in totals.items()}

    def __repr__(self) -> str:
        return f"LRP(composite={self.composite!r}, epsilon={self.epsilon}, gamma={self.gamma})"
