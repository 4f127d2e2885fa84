"""Integrated Gradients at unit hooks (Sundararajan et al. 2017; captum ``LayerIntegratedGradients``).

For each unit layer, IG integrates the gradient of the target logit along the straight path from the
layer's activation on a baseline image to its activation on the real image (the layer's tensor is
replaced by the interpolation, so the path lives in that layer's space). Heads read the input of
``attn.proj`` (``attribute_to_layer_input``). Per sample |attribution| is summed over positions and
a unit's channels (``reduce_to_units``), then over samples — the same aggregation as LRP.

``path="input"`` (the default) is the one-pass form: the *image* is interpolated and every layer
accumulates ``sum_i g(x_i) * (a(x_i) - a(x_{i-1}))`` (layer conductance, Dhamdhere et al. 2018; like IG
it is complete when the layer is a cut of the network). The interpolation steps of all images go
through the model together, ``internal_batch_size`` images per forward pass as in captum, so scoring
every layer costs what one ``captum.attr.IntegratedGradients`` call on the input costs.

``path="layer"``: captum's ``LayerIntegratedGradients`` at each layer in turn (its multi-layer mode
replaces every hooked layer at once, which cuts the gradient path to earlier layers), i.e.
``layers x n_steps`` forward+backward passes per image.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from ..errors import ConfigError
from ..units import UnitLayer, get_module, reduce_to_units
from ._eval_batchnorm import affine_backward
from ._hooks import batches, frozen_params, model_device, no_inplace, resolve_targets
from ._whole_input_conv import matmul_backward
from .base import Criterion, register

METHODS = ("gausslegendre", "riemann_trapezoid", "riemann_middle", "riemann_left", "riemann_right")
PATHS = ("layer", "input")


def make_baseline(inputs: torch.Tensor, baseline: str | float) -> torch.Tensor:
    """``zero``: the all-zero (normalised) image; ``mean``: each image's per-channel mean; a number: constant."""
    if baseline == "zero":
        return torch.zeros_like(inputs)
    if baseline == "mean":
        return inputs.mean(dim=(2, 3), keepdim=True).expand_as(inputs).contiguous()
    return torch.full_like(inputs, float(baseline))


@register
class IntegratedGradients(Criterion):
    name = "ig"

    def __init__(
        self,
        n_steps: int = 32,
        baseline: str | float = "zero",
        method: str = "gausslegendre",
        path: str = "input",
        internal_batch_size: int = 256,
        **options,
    ):
        super().__init__(**options)
        if not isinstance(n_steps, int) or n_steps < 2:
            raise ConfigError(f"criterion 'ig': n_steps must be an integer >= 2, got {n_steps!r}")
        if isinstance(baseline, str) and baseline not in ("zero", "mean"):
            try:
                baseline = float(baseline)
            except ValueError:
                raise ConfigError(
                    f"criterion 'ig': baseline must be 'zero', 'mean' or a number, got {baseline!r}"
                ) from None
        if method not in METHODS:
            raise ConfigError(f"criterion 'ig': method must be one of {', '.join(METHODS)}, got {method!r}")
        if path not in PATHS:
            raise ConfigError(f"criterion 'ig': path must be one of {', '.join(PATHS)}, got {path!r}")
        if self.batch_size < 1:
            raise ConfigError(f"criterion 'ig': batch_size must be >= 1, got {self.batch_size}")
        if not isinstance(internal_batch_size, int) or internal_batch_size < 1:
            raise ConfigError(f"criterion 'ig': internal_batch_size must be an integer >= 1, got {internal_batch_size!r}")
        self.internal_batch_size = internal_batch_size
        self.n_steps = n_steps
        self.path = path
        self.baseline = baseline
        self.method = method

    def layer_attribution(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        layer: UnitLayer,
        return_convergence_delta: bool = False,
    ):
        """captum's layer IG for one batch at ``layer``'s hook (the raw tensor, not unit scores)."""
        from captum.attr import LayerIntegratedGradients

        with no_inplace(model), _copied_output(model, layer) as module:
            return LayerIntegratedGradients(model, module).attribute(
                inputs,
                baselines=make_baseline(inputs, self.baseline),
                target=targets,
                n_steps=self.n_steps,
                method=self.method,
                internal_batch_size=max(self.internal_batch_size, len(inputs)),
                attribute_to_layer_input=layer.port == "input",
                return_convergence_delta=return_convergence_delta,
            )

    def conductance(
        self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor | None, layers: Sequence[UnitLayer]
    ) -> dict[str, torch.Tensor]:
        """Per-element conductance at every layer's hook along the image path (``path="input"``).

        ``targets`` None: the model's predicted class for each image (one no-grad pass, which also gives
        the baseline's activations). Otherwise the baseline (step 0, one image when it is the same for
        all) rides in the first chunk's batch: a separate one-image pass cost ~3 % of a VGG19 call
        (mkldnn repacks every weight for a new batch size). Steps 1..n go through the model in chunks of
        at most ``internal_batch_size`` images (whole steps, so a chunk's activations line up with the
        previous one). Each layer's step differences are taken when its tensor is made and multiplied by
        its gradient in a hook when the backward pass reaches it (``_Conductance``): the model runs on no
        copies (the first unit layers' outputs join the graph in place, ``_Enter``), and each layer's
        differences and gradient are freed there instead of every layer's being held to the end of the pass;
        the pass stops at the first unit layers (the image needs no gradient). Parameters are frozen inside.
        """
        n = len(inputs)
        base = make_baseline(inputs, self.baseline)
        b = 1 if self.baseline != "mean" else n
        acc = _Conductance(n)
        # eval BatchNorms: one multiply for their input gradient (``_eval_batchnorm``); each layer's step
        # differences are taken as its tensor is made, before an in-place op after it (timm's residual
        # x += shortcut after bn3, an in-place ReLU) can change it (``_Conductance``); a conv whose kernel
        # covers its input (VGG's ConvMlp.fc1): one matrix product for its input gradient (``_whole_input_conv``)
        with frozen_params(model), affine_backward(model), matmul_backward(model), acc.hooked(model, layers):
            lead = b  # rows of the baseline in front of the first chunk's steps
            if targets is None:
                acc.lead = b  # the no-grad pass records the baseline's rows as step 0
                with torch.no_grad():
                    logits = model(torch.cat([base[:b], inputs]))
                targets, lead = logits[b:].argmax(1), 0
            for i, steps in enumerate(self._chunks(n, lead, inputs.dtype)):
                alphas = (steps / self.n_steps).to(inputs.device).view(-1, *([1] * inputs.dim()))
                x = (base + alphas * (inputs - base)).reshape(-1, *inputs.shape[1:])
                acc.lead = lead if i == 0 else 0
                acc.steps, acc.last = len(steps), int(steps[-1]) == self.n_steps
                if acc.lead:
                    x = torch.cat([base[:b], x])
                acc.starts, acc.anchor = [], None
                logits = model(x)
                picked = logits[acc.lead:].gather(1, targets.repeat(len(steps)).unsqueeze(1)).sum()
                if acc.starts:  # the backward pass stops at the first unit layers (``_Conductance._seen``)
                    torch.autograd.grad(picked, acc.starts, allow_unused=True)
        return {ly.name: acc.attrs[ly.name] if ly.name in acc.attrs else inputs.new_zeros(n, *acc.shapes[ly.name])
                for ly in layers}

    def _chunks(self, n: int, lead: int, dtype: torch.dtype) -> Iterator[torch.Tensor]:
        """Steps 1..n_steps in chunks of whole steps, at most ``internal_batch_size`` images each (the
        first also carries ``lead`` baseline images); at least one step a chunk."""
        first, room = 1, self.internal_batch_size - lead
        while first <= self.n_steps:
            last = min(self.n_steps, first + max(1, room // n) - 1)
            yield torch.arange(first, last + 1, dtype=dtype)
            first, room = last + 1, self.internal_batch_size

    def attribute(
        self, model: nn.Module, inputs: torch.Tensor | None, targets, layers: Sequence[UnitLayer]
    ) -> dict[str, torch.Tensor]:
        if inputs is None or len(inputs) == 0:
            raise ConfigError("criterion 'ig' needs reference images")
        inputs = inputs.to(model_device(model))
        was_training = model.training
        model.eval()
        totals = {layer.name: torch.zeros(layer.size, dtype=torch.float64) for layer in layers}
        # ``path="input"``: chunks of images small enough that one step of a chunk fits an internal batch
        chunk = max(1, self.batch_size) if self.path == "layer" else max(1, self.internal_batch_size)
        try:
            # the input path needs no module switched: it reads each hooked tensor before any in-place op
            keep_inplace = contextlib.nullcontext() if self.path == "input" else no_inplace(model)
            with keep_inplace, frozen_params(model):
                if self.path == "input":
                    tgt = None if targets is None else resolve_targets(model, inputs, targets, self.batch_size)
                    for sl in batches(len(inputs), chunk):
                        attrs = self.conductance(model, inputs[sl], None if tgt is None else tgt[sl], layers)
                        for layer in layers:
                            # |conductance| summed over images first, then positions: one small tensor to reduce
                            summed = attrs.pop(layer.name).abs_().sum(0, keepdim=True)
                            totals[layer.name] += reduce_to_units(summed, layer, absolute=False)[0].double().cpu()
                else:
                    tgt = resolve_targets(model, inputs, targets, self.batch_size)
                    for layer in layers:
                        for sl in batches(len(inputs), chunk):
                            attr = self.layer_attribution(model, inputs[sl], tgt[sl], layer)
                            totals[layer.name] += reduce_to_units(attr.detach(), layer).sum(0).double().cpu()
        finally:
            model.train(was_training)
        return {name: t.float() for name, t in totals.items()}

    def __repr__(self) -> str:
        return (
            f"IntegratedGradients(n_steps={self.n_steps}, baseline={self.baseline!r}, "
            f"method={self.method!r}, path={self.path!r}, internal_batch_size={self.internal_batch_size})"
        )


class _Conductance:
    """Each layer's ``sum_i (a_i - a_{i-1}) * g_i``: the step differences taken by a forward hook when the layer's
    tensor is made, multiplied by its gradient in a hook on that tensor when the backward pass reaches it.

    The model runs on the hooked tensors themselves, as in a plain input-gradient call: the differences are
    taken before any in-place op after the hook (an in-place ReLU, timm's residual ``x += shortcut`` after a
    BatchNorm) can change the values, and a tensor hook registered before such an op gets the gradient with
    respect to the tensor before it. ``lead`` (baseline rows in front of the current batch), ``steps`` (whole
    steps in it) and ``last`` (whether it holds the final step) describe the batch going through the model;
    ``previous`` holds each layer's activation at the step before the batch.
    """

    def __init__(self, n: int):
        self.n, self.lead, self.steps, self.last = n, 0, 0, True
        self.attrs: dict[str, torch.Tensor] = {}
        self.previous: dict[str, torch.Tensor] = {}
        self.shapes: dict[str, torch.Size] = {}
        self.starts: list[torch.Tensor] = []  # where the current batch's backward pass stops (graph leaves)
        self.anchor: torch.Tensor | None = None  # the leaf behind the tensors ``_Enter`` put into the graph

    @contextlib.contextmanager
    def hooked(self, model: nn.Module, layers: Sequence[UnitLayer]) -> Iterator[None]:
        """Forward hooks at every layer (output or input port)."""
        handles = []
        for layer in layers:
            module = get_module(model, layer.hook)
            if layer.port == "output":
                handles.append(module.register_forward_hook(
                    lambda _m, inp, out, name=layer.name: self._seen(name, out, _own(out, inp))))
            else:
                handles.append(module.register_forward_pre_hook(
                    lambda _m, inp, name=layer.name: (self._seen(name, inp[0], False), *inp[1:])))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def _seen(self, name: str, t: torch.Tensor, own: bool) -> torch.Tensor:
        """What the model goes on with: ``t`` itself (put into the graph in place when ``own``), or a copy of
        the leaf made from it."""
        self.shapes[name] = t.shape[1:]
        if not torch.is_grad_enabled():  # the no-grad pass: only the baseline's rows are kept
            self.previous[name] = t[: self.lead].clone()
            return t
        # the image and the parameters need no gradient, so no graph reaches the first unit layers' tensors:
        # the backward pass stops there (the layers before them are not gone through)
        copied = not t.requires_grad and not own
        if copied:  # a leaf; in-place ops after the hook must not write to it, so the model goes on with a copy
            t = t.detach().requires_grad_(True)
            self.starts.append(t)
        elif not t.requires_grad:  # no copy: ``_Enter`` marks ``t`` modified in place, giving it a graph node
            if self.anchor is None:
                self.anchor = torch.zeros((), dtype=t.dtype, device=t.device, requires_grad=True)
                self.starts.append(self.anchor)
            t = _Enter.apply(t, self.anchor)
        held = [self._differences(name, t.detach())]  # dropped by the hook: freed once its term is added
        lead = self.lead
        t.register_hook(lambda g: self._add(name, held.pop(), g, lead))
        return t.clone() if copied else t

    def _differences(self, name: str, full: torch.Tensor) -> list[tuple[slice, torch.Tensor]]:
        """``a_i - a_{i-1}`` for the batch's steps, ``(steps, images, ...)`` pieces over the images (``_PIECE_BYTES``);
        the last step is kept for the next batch."""
        lead = self.lead
        a = full[lead:].reshape(self.steps, self.n, *full.shape[1:])
        before = full[:lead] if lead else self.previous[name]  # one shared baseline row, or one row per image
        pieces = []
        for sl in _pieces(a):
            step = torch.empty_like(a[:, sl])
            torch.sub(a[0, sl], before if len(before) == 1 else before[sl], out=step[0])
            torch.sub(a[1:, sl], a[:-1, sl], out=step[1:])
            pieces.append((sl, step))
        if not self.last:
            self.previous[name] = a[-1].clone()  # a copy: the model may change ``full`` in place
        return pieces

    def _add(self, name: str, pieces: list[tuple[slice, torch.Tensor]], g: torch.Tensor, lead: int) -> None:
        steps = pieces[0][1].shape[0]
        g = g[lead:].reshape(steps, self.n, *g.shape[1:])
        if len(pieces) == 1:
            term = pieces.pop()[1].mul_(g).sum(0)
        else:
            term = g.new_empty(g.shape[1:])
            while pieces:  # each piece freed once its images' sum is written
                sl, step = pieces.pop()
                torch.sum(step.mul_(g[:, sl]), 0, out=term[sl])
        self.attrs[name] = self.attrs[name].add_(term) if name in self.attrs else term


# glibc maps an allocation above its mmap threshold (32 MiB at most) afresh, page-faulting every page of it, on
# every call: a VGG19 layer's differences at 20 images x 8 steps are 40 MiB (~10k faults, ~25 ms at lrp_cost's
# settings). Pieces this small are served from heap memory already mapped, and stay in cache between their
# product with the gradient and its sum over steps.
_PIECE_BYTES = 2 << 20


def _pieces(a: torch.Tensor) -> list[slice]:
    """Slices over dim 1 (images) of ``a`` (steps, images, ...) with at most ``_PIECE_BYTES`` each (one image at least)."""
    per_image = a[:, :1].numel() * a.element_size()
    k = max(1, _PIECE_BYTES // per_image)
    return [slice(i, min(i + k, a.shape[1])) for i in range(0, a.shape[1], k)]


def _own(out, inputs: tuple) -> bool:
    """Whether a module's output is a tensor of its own (not a view, not one of its inputs), so that putting it
    into the graph in place changes what the module's consumers get and nothing else."""
    return (isinstance(out, torch.Tensor) and not out._is_view()
            and not any(isinstance(i, torch.Tensor) and i.untyped_storage().data_ptr() == out.untyped_storage().data_ptr()
                        for i in inputs))


class _Enter(torch.autograd.Function):
    """Identity that puts a tensor needing no gradient into the graph without a copy: ``mark_dirty`` makes the
    tensor itself the output (as an in-place op would), hanging from ``anchor``, a scalar leaf. Its backward
    returns nothing: the pass ends there, as it does at a leaf, after the tensor's hooks have run."""

    @staticmethod
    def forward(ctx, t: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
        ctx.mark_dirty(t)
        return t

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return None, None


class _CopyOutput(nn.Module):
    """Wraps a module and returns a copy of its output (see ``_copied_output``)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, *args, **kwargs):
        out = self.inner(*args, **kwargs)
        return out.clone() if isinstance(out, torch.Tensor) else out


@contextlib.contextmanager
def _copied_output(model: nn.Module, layer: UnitLayer) -> Iterator[nn.Module]:
    """The module captum should hook, wrapped so that its output reaches the rest of the model as a copy.

    captum replaces the layer's output by a leaf tensor; timm's residual blocks add to a BatchNorm's
    output in place (``x += shortcut``), which autograd refuses on a leaf. The wrapper is removed on exit.
    """
    module = get_module(model, layer.hook)
    if layer.port != "output" or not layer.hook:
        yield module
        return
    parent_name, _, child = layer.hook.rpartition(".")
    parent = get_module(model, parent_name) if parent_name else model
    setattr(parent, child, _CopyOutput(module))
    try:
        yield module
    finally:
        setattr(parent, child, module)
