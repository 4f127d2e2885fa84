"""Score once, evaluate many ratios, find the largest lossless ratio — without the CLI.

    ctx = load_context("ckpt.safetensors", "pneumoniamnist")
    x, y, idx = reference_inputs(ctx, n_per_class=10, strategy="clustering")
    scores, secs = score_units(ctx.model, get_criterion("lrp"), x, y, layers)
    ev = RatioEvaluator(ctx, scores, layers)
    ev.metrics(0.3, "test")                                    # masked model's metrics (cached)
    found = find_lossless(ev, tolerance=1.0, sens_tolerance=2.0, search_split="val")   # point rule
    found = find_lossless(BoundEvaluator(ctx, scores, layers), 1.0, 2.0)        # deploy's bound rule

Lossless search. "Lossless" is decided by the evaluator's ``passes`` (its ``rule`` names it):
:class:`BoundEvaluator` applies the rule of ``toolchain.lossless`` (the upper ends of the 95 % paired bootstrap
intervals of the accuracy drop and of each class's sensitivity drop within ``tolerance`` / ``sens_tolerance``
points; deploy and ``prune --find-lossless`` search with it); :class:`RatioEvaluator` the point rule (point
drops within the tolerances, no interval; the paper and importance grids search with it, as their committed
results were). :func:`lossless_evaluator` builds the evaluator of a rule named in ``LOSSLESS_RULES``.
Accuracy vs ratio is *not* monotone (small ratios can even help), so the search assumes it is
monotone only locally: a coarse scan (``coarse_step``, default 0.1, stopping after two consecutive
failures) brackets the largest passing coarse ratio ``lo`` below the next failing one, then
bisection on a 1 % grid inside ``[lo, lo + coarse_step]`` finds the boundary. Every evaluated ratio
is kept in ``trace`` so a non-monotone curve is visible. The search runs on ``search_split`` (default val) so that the
reported test metrics are not tuned on the test set.
"""

from __future__ import annotations

import copy
import json
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from .atomic import atomic_file, atomic_path
from .errors import ConfigError
from .lossless import RULE as LOSSLESS_RULE
from .lossless import grid_search_k, judge, rule_line
from .masking import MaskSet, apply_masks, build_masks, check_ratio, mask_report
from .units import UnitLayer

Log = Callable[[str], None]


@dataclass
class Context:
    """A loaded checkpoint with the dataset and preprocessing it expects."""

    model: nn.Module
    meta: dict
    ds: Any
    preprocess: Any
    device: str = "cpu"
    checkpoint: str = ""
    sha256: str = ""


def load_context(checkpoint, data: str | None = None, *, data_dir=None, device: str = "cpu",
                 allow_missing_class: bool | None = None, ordinal: bool | None = None) -> Context:
    """Load ``checkpoint`` and its dataset (``data`` or the one it was trained on) with its preprocessing
    (``allow_missing_class``, ``ordinal`` None: as the checkpoint was trained)."""
    from .evaluate import dataset_for_checkpoint
    from .models import load_checkpoint, recorded_sha256, resolve_checkpoint

    weights = resolve_checkpoint(checkpoint)
    model, meta = load_checkpoint(weights, device=device)
    ds, preprocess = dataset_for_checkpoint(meta, data, data_dir, allow_missing_class, ordinal)
    check_compatible(meta, ds)
    return Context(model.eval(), meta, ds, preprocess, device, str(weights), recorded_sha256(weights))


def check_compatible(meta: Mapping, ds) -> None:
    """ConfigError when the checkpoint cannot classify ``ds`` (class count or names differ)."""
    k = int(meta.get("num_classes", len(ds.class_names)))
    if k != len(ds.class_names):
        raise ConfigError(f"checkpoint predicts {k} classes but dataset {ds.name} has {len(ds.class_names)}")
    names = meta.get("class_names")
    if names and list(names) != list(ds.class_names):
        raise ConfigError(f"checkpoint classes {list(names)} differ from dataset classes {list(ds.class_names)}")
    trained_on = (meta.get("dataset") or {}).get("fingerprint")
    if trained_on and trained_on != ds.fingerprint:
        warnings.warn(f"checkpoint was trained on a different version/split of {ds.name} (fingerprint differs)",
                      stacklevel=2)


def reference_inputs(ctx: Context, n_per_class: int = 10, strategy: str = "confidence", seed: int = 0, *,
                     pool_per_class: int | None = None, split: str = "train"):
    """``(x, y, indices)``: preprocessed reference images of ``split`` chosen by ``strategy``."""
    from .sampling import select_reference

    idx = select_reference(ctx.model, ctx.ds, ctx.preprocess, n_per_class, strategy, seed, split, ctx.device,
                           pool_per_class=pool_per_class)
    data = ctx.ds.split(split)
    x = ctx.preprocess(data.images[idx]).to(ctx.device)
    y = torch.as_tensor(data.labels[idx], dtype=torch.long, device=ctx.device)
    return x, y, idx


def score_units(model: nn.Module, criterion, x, y, layers: Sequence[UnitLayer]) -> tuple[dict, float]:
    """``(scores, seconds)`` of ``criterion`` on the references (targets: ``y``, None = predicted class)."""
    start = time.perf_counter()
    scores = criterion(model, x if criterion.needs_data else None, y, layers)
    return scores, time.perf_counter() - start


def forward_backward_seconds(model: nn.Module, x: torch.Tensor, batch_size: int = 16) -> float:
    """Wall time of one forward+backward pass over ``x`` (the unit of cost criteria are compared in)."""
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    try:
        for s in range(0, len(x), batch_size):
            xb = x[s : s + batch_size].detach().requires_grad_(True)
            model(xb).max(1).values.sum().backward()
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return time.perf_counter() - start


# ---- score persistence (benchmarks cache them per checkpoint x criterion x sampling) ----------------
def save_scores(path, scores: Mapping[str, torch.Tensor], meta: Mapping) -> None:
    from safetensors.torch import save_file

    path = Path(path)
    with atomic_path(path.with_suffix(".safetensors")) as tmp:
        save_file({k: v.float().contiguous() for k, v in scores.items()}, str(tmp))
    with atomic_file(path.with_suffix(".json"), "w") as fh:
        json.dump(dict(meta), fh, indent=1, default=_default)


def load_scores(path) -> tuple[dict[str, torch.Tensor], dict] | None:
    """``(scores, meta)``; None when not cached yet, or (with a warning) when the entry is damaged."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    meta_path, weights_path = path.with_suffix(".json"), path.with_suffix(".safetensors")
    if not (meta_path.is_file() and weights_path.is_file()):  # the JSON is written last: no JSON, no entry
        return None
    try:
        return load_file(str(weights_path)), json.loads(meta_path.read_text())
    except (json.JSONDecodeError, SafetensorError, OSError) as exc:  # damaged: say so, then recompute
        warnings.warn(f"score cache entry {path} is unreadable ({type(exc).__name__}: {exc}); recomputing",
                      stacklevel=2)
        return None


def _default(obj):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(type(obj).__name__)


# ---- evaluation of ratios -----------------------------------------------------------------------
def accuracy_drop(dense: Mapping, pruned: Mapping) -> float:
    return 100.0 * (dense["accuracy"] - pruned["accuracy"])


def sensitivity_drops(dense: Mapping, pruned: Mapping) -> dict[str, float]:
    out = {}
    for name, d in (dense.get("per_class") or {}).items():
        a, b = d.get("sensitivity"), ((pruned.get("per_class") or {}).get(name) or {}).get("sensitivity")
        if a is not None and b is not None:
            out[name] = 100.0 * (a - b)
    return out


@dataclass
class RatioEvaluator:
    """Masks at any ratio from one set of scores, evaluated on any split (results cached per ratio/split);
    ``passes`` is the point rule."""

    rule: ClassVar[str] = ("point: accuracy drop <= tolerance and every class's sensitivity drop <= sens-tolerance "
                           "(points, no interval)")
    ctx: Context
    scores: Mapping[str, torch.Tensor]
    layers: Sequence[UnitLayer]
    scope: str = "global"
    normalize: str | None = None
    batch_size: int = 128
    meta: dict = field(default_factory=dict)
    log: Log | None = None
    qwk_tolerance: float | None = None  # graded classes: passes() also bounds the QWK drop (toolchain.ordinal)
    _cache: dict = field(default_factory=dict, repr=False)
    _work: nn.Module | None = field(default=None, repr=False)
    _dense_state: dict | None = field(default=None, repr=False)

    def masks(self, ratio: float) -> MaskSet:
        return build_masks(self.scores, self.layers, ratio, self.scope, self.normalize, meta=self.meta)

    def _masked_model(self, masks: MaskSet) -> nn.Module:
        # one working copy, reset from the dense weights each time: no deep copy per ratio
        if self._work is None:
            self._work = copy.deepcopy(self.ctx.model)
            self._dense_state = {k: v.clone() for k, v in self.ctx.model.state_dict().items()}
        self._work.load_state_dict(self._dense_state)
        return apply_masks(self._work, masks, inplace=True)

    def metrics(self, ratio: float, split: str = "test") -> dict:
        from .evaluate import evaluate

        ratio = round(check_ratio(ratio), 6)
        key = (ratio, split)
        if key not in self._cache:
            if ratio == 0.0:
                model = self.ctx.model
            else:
                model = self._masked_model(self.masks(ratio))
            start = time.perf_counter()
            self._cache[key] = evaluate(model, self.ctx.ds, split, self.ctx.preprocess, self.batch_size,
                                        self.ctx.device)
            if self.log:
                self.log(f"ratio {ratio:.2f} on {split}: accuracy {self._cache[key]['accuracy']:.4f} "
                         f"({time.perf_counter() - start:.1f}s)")
        return self._cache[key]

    def report(self, ratio: float) -> dict:
        return mask_report(self.ctx.model, self.masks(ratio))

    def passes(self, ratio: float, split: str, tolerance: float, sens_tolerance: float) -> dict:
        """The point rule at ``ratio`` on ``split`` (the pre-interval rule; :class:`BoundEvaluator` bounds)."""
        dense, pruned = self.metrics(0.0, split), self.metrics(ratio, split)
        acc = accuracy_drop(dense, pruned)
        sens = sensitivity_drops(dense, pruned)
        worst = max(sens.values()) if sens else 0.0
        out = {"ratio": ratio, "accuracy": pruned["accuracy"], "accuracy_drop_pts": acc,
               "worst_sensitivity_drop_pts": worst,
               "passes": bool(acc <= tolerance + 1e-9 and worst <= sens_tolerance + 1e-9)}
        if self.qwk_tolerance is not None:
            from .ordinal import qwk_point_check

            q = qwk_point_check(dense, pruned, self.qwk_tolerance)
            out.update(q, passes=out["passes"] and q["qwk_passes"])
        return out


@dataclass
class BoundEvaluator(RatioEvaluator):
    """:class:`RatioEvaluator` whose ``passes`` is the lossless rule of ``toolchain.lossless`` (paired bootstrap
    bounds, ``lossless.judge``; graded classes also bound the QWK drop: ``ordinal.with_qwk_bound``), judged
    from cached probabilities. Deploy's ratio stage and ``prune --find-lossless`` search with it."""

    rule: ClassVar[str] = LOSSLESS_RULE
    seed: int = 0  # bootstrap seed
    _probs: dict = field(default_factory=dict, repr=False)

    def probs(self, ratio: float, split: str):
        """``(probabilities, labels)`` of the model masked at ``ratio`` on ``split`` (0: the dense model)."""
        from .evaluate import predict

        key = (round(float(ratio), 6), split)
        if key not in self._probs:
            model = self.ctx.model if key[0] == 0.0 else self._masked_model(self.masks(key[0]))
            self._probs[key] = predict(model, self.ctx.ds, split, self.ctx.preprocess, self.batch_size,
                                       self.ctx.device)
        return self._probs[key]

    def passes(self, ratio: float, split: str, tolerance: float, sens_tolerance: float, k: int = 1) -> dict:
        """The lossless rule at ``ratio`` on ``split`` (what ``find_lossless`` probes); ``k`` > 1: the search-aware
        rule for ``k`` candidates judged on ``split`` (``toolchain.lossless.judge``)."""
        if k != 1 and self.qwk_tolerance is not None:
            raise ConfigError("the search-aware lossless rule does not bound the QWK drop of graded classes yet; "
                              "leave --search-aware off with --ordinal")
        p_dense, y = self.probs(0.0, split)
        p_pruned, _ = self.probs(ratio, split)
        verdict = judge(y, p_dense, p_pruned, self.ctx.ds.class_names, tolerance=tolerance,
                        sens_tolerance=sens_tolerance, seed=self.seed, split=split, k=k)
        if self.qwk_tolerance is not None:
            from .ordinal import with_qwk_bound

            verdict = with_qwk_bound(verdict, y, p_dense, p_pruned, self.qwk_tolerance, self.seed)
        return {"ratio": ratio, **verdict}


# the lossless rules by name -> evaluator class (a literal: the CLI reads the names without importing torch)
LOSSLESS_RULES = {"bound": "BoundEvaluator", "point": "RatioEvaluator"}


def lossless_evaluator(rule: str, ctx: Context, scores: Mapping[str, torch.Tensor], layers: Sequence[UnitLayer], *,
                       seed: int = 0, **kwargs) -> RatioEvaluator:
    """The evaluator whose ``passes`` is ``rule``: "bound" (deploy's, ``toolchain.lossless``; ``seed`` seeds its
    bootstrap) or "point" (no interval; the paper and importance grids searched with it)."""
    if rule not in LOSSLESS_RULES:
        raise ConfigError(f"unknown lossless rule {rule!r}; choose from {', '.join(LOSSLESS_RULES)}")
    cls = globals()[LOSSLESS_RULES[rule]]  # the table names classes of this module
    return cls(ctx, scores, layers, **({"seed": seed} if issubclass(cls, BoundEvaluator) else {}), **kwargs)


def evaluate_ratios(ev: RatioEvaluator, ratios: Sequence[float], split: str = "test") -> dict[str, dict]:
    """``{"dense": m0, "0.15": m1, ...}`` (keys are ratios formatted with two decimals)."""
    out = {"dense": ev.metrics(0.0, split)}
    for r in ratios:
        out[f"{check_ratio(r):.2f}"] = ev.metrics(r, split)
    return out


def bisect_boundary(lo: int, hi: int, low_side: Callable[[int], bool]) -> tuple[int, int]:
    """Narrow ``[lo, hi]`` to adjacent integers; ``low_side(k)`` says whether ``k`` is on ``lo``'s side."""
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if low_side(mid):
            lo = mid
        else:
            hi = mid
    return lo, hi


def find_lossless(
    ev: RatioEvaluator,
    tolerance: float = 1.0,
    sens_tolerance: float = 2.0,
    *,
    search_split: str = "val",
    resolution: float = 0.01,
    coarse_step: float | None = 0.1,
    coarse_patience: int | None = 2,
    max_ratio: float = 0.99,
    search_aware: bool = False,
) -> dict:
    """The largest ratio (on a ``resolution`` grid) that passes ``ev``'s rule (``ev.passes``, recorded as
    ``rule``) with both tolerances on ``search_split``. ``search_aware`` (bound rule only): every ratio is judged by
    the search-aware rule with ``k`` = the most ratios this search can judge (``lossless.grid_search_k``, recorded as
    ``search_k``), fixed before the first judgment.

    See the module docstring for the monotonicity assumption. ``coarse_step=None`` bisects the whole
    range ``[0, max_ratio]`` directly (fewer evaluations, more trust in monotonicity). The coarse scan
    stops after ``coarse_patience`` consecutive failing points (None: scan the whole grid).
    """
    if tolerance < 0 or sens_tolerance < 0:
        raise ConfigError(f"tolerances must be >= 0 points, got {tolerance} and {sens_tolerance}")
    if not (0 < resolution < 1):
        raise ConfigError(f"resolution must be in (0, 1), got {resolution}")
    steps = int(round(1 / resolution))
    top = min(int(math.floor(max_ratio * steps + 1e-9)), steps - 1)
    trace: list[dict] = []
    grid: list[int] = []
    if coarse_step:
        stride = max(1, int(round(coarse_step * steps)))
        grid = list(range(stride, top + 1, stride))
        if not grid or grid[-1] != top:
            grid.append(top)
    if search_aware and not isinstance(ev, BoundEvaluator):
        raise ConfigError("the search-aware rule bounds paired bootstrap intervals: it needs the bound rule "
                          "(--lossless-rule bound), not the point rule")
    search_k = grid_search_k(grid, top) if search_aware else 1

    def ok(k: int) -> bool:
        res = ev.passes(k / steps, search_split, tolerance, sens_tolerance, **({"k": search_k} if search_aware else {}))
        trace.append(res)
        return res["passes"]

    lo, hi = 0, top + 1  # invariant: lo passes (0 is the dense model), hi fails or is out of range
    if coarse_step:
        results: list[tuple[int, bool]] = []
        fails = 0
        for k in grid:
            results.append((k, ok(k)))
            fails = 0 if results[-1][1] else fails + 1
            if coarse_patience and fails >= coarse_patience:
                break  # consecutive failures: larger ratios are not worth evaluating
        passing = [k for k, good in results if good]
        if passing:
            lo = max(passing)
            above = [k for k, _ in results if k > lo]
            hi = above[0] if above else top + 1
        else:
            hi = grid[0]
    lo, hi = bisect_boundary(lo, hi, ok)
    ratio = lo / steps
    trace.sort(key=lambda r: r["ratio"])
    monotone = all(a["passes"] or not b["passes"] for a, b in zip(trace, trace[1:], strict=False))
    return {
        "ratio": ratio,
        "rule": rule_line(search_k) if search_aware else getattr(ev, "rule", None),
        **({"search_k": search_k} if search_aware else {}),
        "search_split": search_split,
        "tolerance_pts": tolerance,
        "sens_tolerance_pts": sens_tolerance,
        "resolution": resolution,
        "coarse_step": coarse_step,
        "coarse_patience": coarse_patience,
        "trace": trace,
        "monotone_on_trace": monotone,
        "assumption": "pass/fail is monotone inside the bracket found by the coarse scan",
    }


def scores_as_numpy(scores: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in scores.items()}
