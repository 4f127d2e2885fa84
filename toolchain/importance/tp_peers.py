"""Torch-Pruning's own importances as medprune criteria: the fair peers of LRP/DLB/IG/Taylor.

Each peer scores every coupled group exactly as Torch-Pruning does (``Importance.__call__(group)``
on the full Torch-Pruning group, with TP's per-group normalisation), and the group unit's score is
then written to every member unit layer. Masks are made by the same ``GroupMasker`` and removed by
the same ``remove_units`` as medprune's criteria; ``group_options`` tells the masker to rank by the
TP score unchanged (no second normalisation, members averaged = the TP score itself).

Settings follow Torch-Pruning's README/benchmarks: ``GroupMagnitudeImportance(p=2)`` (and p=1),
``GroupTaylorImportance()`` after ``loss.backward()`` on a batch, ``LAMPImportance(p=2)`` (as TP's
``reproduce/main.py --method lamp``: its own ``normalizer="lamp"``), ``GroupHessianImportance()`` with
per-sample gradients accumulated (as TP's ``benchmark_importance_criteria.py`` / ``test_hessian_importance.py``:
``imp.zero_grad()``, then per sample ``model.zero_grad(); loss.backward(); imp.accumulate_grad(model)``),
``RandomImportance()``; all with their default ``group_reduction="mean"`` and normalisers. TP's own
``accumulate_grad`` (1.6.1, and upstream at e80127d) keeps only the *last* sample's squared gradient (it
tests ``name in`` a dict keyed by parameters), so ``_GroupHessian`` sums them as the docs describe. Units in groups that cannot be removed (blocked)
get the largest score, so they are never the first masked at neuron granularity either.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from ..errors import ConfigError
from ..units import UnitLayer
from ._hooks import batches, model_device
from .base import Criterion, register


def _grad_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, imp) -> None:
    """TP's Taylor recipe: the summed CE loss's gradients accumulate in ``param.grad``."""
    for sl in batches(len(x), batch_size):
        F.cross_entropy(model(x[sl]), y[sl], reduction="sum").backward()


class _GroupHessian(tp.importance.GroupHessianImportance):
    """TP's group Hessian (OBD) importance with the squared per-sample gradients summed, not overwritten."""

    def accumulate_grad(self, model: nn.Module) -> None:
        for param in model.parameters():
            if param.grad is not None:
                g2 = param.grad.detach().pow(2)
                self._accu_grad[param] = self._accu_grad[param] + g2 if param in self._accu_grad else g2.clone()
                self._counter[param] = self._counter.get(param, 0) + 1


def _per_sample(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, imp) -> None:
    """TP's Hessian (OBD) recipe: squared per-sample gradients accumulated in the importance."""
    imp.zero_grad()
    for i in range(len(x)):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        imp.accumulate_grad(model)


class TorchPruningPeer(Criterion):
    """Base: subclasses set ``name``, ``make`` (the TP importance) and ``prepare`` (gradients, if any)."""

    make: ClassVar[Callable[[], tp.importance.Importance]]
    prepare: ClassVar[Callable | None] = None
    # GroupMasker options that rank group units by the TP score unchanged
    group_options: ClassVar[dict] = {"normalize": None, "aggregate": "mean"}

    def __init__(self, seed: int = 0, **options):
        super().__init__(**options)
        if not isinstance(seed, int):
            raise ConfigError(f"criterion {self.name!r}: seed must be an integer, got {seed!r}")
        self.seed = seed

    def attribute(self, model: nn.Module, inputs, targets, layers: Sequence[UnitLayer]) -> dict[str, torch.Tensor]:
        from ..removal.graph import analyse
        from ..units import find_unit_layers

        if self.needs_data and (inputs is None or len(inputs) == 0):
            raise ConfigError(f"criterion {self.name!r} needs reference images")
        example = inputs[:1] if inputs is not None else _example(model)
        torch.manual_seed(self.seed)
        imp = type(self).make()
        was_training = model.training
        model.eval()
        try:
            if type(self).prepare is not None:
                x = inputs.to(model_device(model))
                y = _labels(model, x, targets, self.batch_size)
                model.zero_grad(set_to_none=True)
                with torch.enable_grad():
                    type(self).prepare(model, x, y, self.batch_size, imp)
            an = analyse(model, find_unit_layers(model), example.detach())
            scores = {layer.name: torch.full((layer.size,), float("nan")) for layer in layers}
            for ug in an.groups:
                s = _group_scores(ug, imp, an.dg)
                for member, umap in ug.members.items():
                    if member in scores:
                        scores[member][umap] = s.float()
        finally:
            model.zero_grad(set_to_none=True)
            model.train(was_training)
        top = max((float(torch.nan_to_num(s, nan=0.0).max()) for s in scores.values()), default=0.0)
        return {k: torch.nan_to_num(v, nan=top + 1.0, posinf=top + 1.0, neginf=0.0) for k, v in scores.items()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(seed={self.seed})"


def _group_scores(ug, imp, dg) -> torch.Tensor:
    """TP importance of every group unit (a head: mean over its q/k/v rows)."""
    full = list(range(ug.root.out_features if ug.kind == "head" else ug.size))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        group = dg.get_pruning_group(ug.root, ug.root_fn, full)
        s = imp(group)
    if s is None:  # TP returns None for groups it has nothing to score in
        return torch.full((ug.size,), float("nan"))
    s = s.detach().double().cpu()
    if ug.kind == "head":
        s = torch.stack([s[torch.as_tensor(ug.root_idxs([h]))].mean() for h in range(ug.size)])
    return s


def _labels(model: nn.Module, x: torch.Tensor, targets, batch_size: int) -> torch.Tensor:
    if targets is not None:
        return torch.as_tensor(targets, dtype=torch.long, device=x.device).reshape(-1)
    with torch.no_grad():
        return torch.cat([model(x[sl]).argmax(1) for sl in batches(len(x), batch_size)])


def _example(model: nn.Module) -> torch.Tensor:
    spec = getattr(model, "medprune_spec", None) or {}
    chans, size = spec.get("in_chans"), spec.get("img_size")
    if not chans or not size:
        raise ConfigError("data-free Torch-Pruning criteria need reference images or a medprune-built model")
    return torch.zeros(1, int(chans), int(size), int(size), device=model_device(model))


def _peer(name: str, make: Callable, prepare: Callable | None = None, needs_data: bool = True) -> type:
    cls = type(f"TP_{name.replace('-', '_')}", (TorchPruningPeer,),
               {"name": name, "make": staticmethod(make), "prepare": staticmethod(prepare) if prepare else None,
                "needs_data": needs_data,
                "__doc__": f"Torch-Pruning peer {name!r} (see the module docstring)."})
    return register(cls)


# one row per peer: adding a Torch-Pruning importance is one line
PEERS = {
    "tp-magnitude": dict(make=lambda: tp.importance.GroupMagnitudeImportance(p=2)),
    "tp-l1": dict(make=lambda: tp.importance.GroupMagnitudeImportance(p=1)),
    "tp-lamp": dict(make=lambda: tp.importance.LAMPImportance(p=2)),
    "tp-random": dict(make=tp.importance.RandomImportance),
    "tp-taylor": dict(make=tp.importance.GroupTaylorImportance, prepare=_grad_loss),
    "tp-hessian": dict(make=_GroupHessian, prepare=_per_sample),
}
for _name, _row in PEERS.items():
    _peer(_name, needs_data=_row.get("prepare") is not None, **_row)
