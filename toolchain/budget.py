"""Budgets instead of ratios: find the pruning amount that meets a MACs, params or latency budget.

    budget = parse_budget("speedup", "3")                     # or ("macs", "0.33"), ("params", "2.5M")
    found = search_budget(prune_at, dense, example, budget)   # prune_at(ratio) -> physically pruned model
    found.ratio, found.cost, found.model

Costs are measured on the *physically removed* model (``toolchain.removal``), never estimated from
the masks: ``macs``/``params`` count it (``count_macs``: every conv/linear/matmul), ``speedup`` and
``latency_ms`` time it at batch 1 with ONNX Runtime on this machine's CPU (dense and pruned exported
to ONNX and timed interleaved in one process, median of ``repeats``). A target whose runtime is
not on this machine passes its own ``latency_fn`` and a ``latency_label`` such as
"predicted (roofline)"; results always carry that label.

Search: the cost falls as the ratio grows, so bisection over the ratio finds the smallest ratio that
meets the budget (``resolution`` 0.01 by default). Measured latency is noisy and not strictly
monotone; every evaluation is kept in ``trace`` and the chosen point is the smallest evaluated ratio
that met the budget when it was measured.
"""

from __future__ import annotations

import contextlib
import copy
import io
import re
import statistics
import tempfile
import time
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import ConfigError
from .prune_eval import bisect_boundary

KINDS = ("macs", "params", "speedup", "latency_ms")
_SUFFIX = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}


@dataclass(frozen=True)
class Budget:
    """``kind`` in KINDS. ``macs``/``params``: ``value`` <= 1 is a fraction of the dense model, else
    an absolute count; ``speedup``: dense/pruned latency >= value; ``latency_ms``: pruned <= value."""

    kind: str
    value: float

    def describe(self) -> str:
        if self.kind in ("macs", "params"):
            return f"{self.kind} <= {self.value:g}{' x dense' if self.value <= 1 else ''}"
        return f"speedup >= {self.value:g}x" if self.kind == "speedup" else f"latency <= {self.value:g} ms"


def parse_budget(kind: str, text: str | float) -> Budget:
    """``Budget`` from a CLI value ("3", "0.33", "120M"); ConfigError on anything else."""
    if kind not in KINDS:
        raise ConfigError(f"unknown budget {kind!r}; choose from {', '.join(KINDS)}")
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?\d+)?)\s*([kKmMgG]?)\s*", str(text))
    if not m:
        raise ConfigError(f"--{kind.replace('_', '-')} expects a positive number (e.g. 3, 0.33, 120M), got {text!r}")
    value = float(m.group(1)) * _SUFFIX[m.group(2).lower()]
    if not value > 0:
        raise ConfigError(f"--{kind.replace('_', '-')} must be positive, got {text!r}")
    if kind == "speedup" and value <= 1:
        raise ConfigError(f"--speedup must be > 1 (dense/pruned latency), got {text!r}")
    return Budget(kind, value)


def one_budget(**given: Any) -> Budget | None:
    """The single budget among CLI options ``{kind: value-or-None}`` (None when none is set)."""
    set_ = {k: v for k, v in given.items() if v is not None}
    if len(set_) > 1:
        raise ConfigError(f"give one budget, not {len(set_)}: {', '.join(sorted(set_))}")
    return parse_budget(*next(iter(set_.items()))) if set_ else None


# ---- measuring ---------------------------------------------------------------------------------
def ort_latency_ms(models: dict[str, nn.Module], example: torch.Tensor, repeats: int = 50, warmup: int = 5,
                   threads: int | None = None) -> dict[str, dict[str, float]]:
    """Median/IQR batch-1 ONNX Runtime CPU latency of each model, timed interleaved."""
    import onnxruntime as ort

    x = example[:1].detach().cpu().contiguous()
    feed = x.numpy()
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    sessions = {name: ort.InferenceSession(_onnx_bytes(model, x), opts, providers=["CPUExecutionProvider"])
                for name, model in models.items()}
    inputs = {k: s.get_inputs()[0].name for k, s in sessions.items()}
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(warmup):
        for k, s in sessions.items():
            s.run(None, {inputs[k]: feed})
    for _ in range(repeats):
        for k, s in sessions.items():
            t0 = time.perf_counter()
            s.run(None, {inputs[k]: feed})
            times[k].append((time.perf_counter() - t0) * 1e3)
    out = {}
    for k, ts in times.items():
        q = statistics.quantiles(ts, n=4)
        out[k] = {"median_ms": statistics.median(ts), "q1_ms": q[0], "q3_ms": q[2], "runs": len(ts)}
    return out


_ONNX: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # the dense model is exported once per search


def _onnx_bytes(model: nn.Module, x: torch.Tensor) -> bytes:
    key = (tuple(x.shape), sum(p.numel() for p in model.parameters()))
    hit = _ONNX.get(model)
    if hit and hit[0] == key:
        return hit[1]
    m = copy.deepcopy(model).cpu().eval()
    with tempfile.TemporaryDirectory(prefix="medprune-lat-") as tmp, warnings.catch_warnings(), \
            contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        path = Path(tmp) / "m.onnx"
        try:  # dynamo handles timm VGG's upsampling pool at small inputs; legacy is the fallback
            # optimize=False: onnxscript's rewrite passes cost minutes on a loaded CPU and ORT applies
            # its own graph optimisations at session creation anyway
            torch.onnx.export(m, (x,), str(path), dynamo=True, external_data=False, opset_version=18,
                              input_names=["x"], output_names=["logits"], verbose=False, optimize=False)
        except Exception:
            torch.onnx.export(m, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"],
                              output_names=["logits"])
        blob = path.read_bytes()
    _ONNX[model] = (key, blob)
    return blob


def measure(kind: str, dense: nn.Module, pruned: nn.Module, example: torch.Tensor, *,
            latency_fn: Callable | None = None, repeats: int = 50) -> dict[str, Any]:
    """``{"dense", "pruned", "ratio"}`` of the budget's quantity (latency: also ``speedup``)."""
    from .models import count_macs, count_params

    one = example[:1]
    if kind == "macs":
        d, p = count_macs(dense, one), count_macs(pruned, one)
    elif kind == "params":
        d, p = count_params(dense), count_params(pruned)
    else:
        lat = (latency_fn or ort_latency_ms)({"dense": dense, "pruned": pruned}, one, repeats=repeats)
        d, p = lat["dense"]["median_ms"], lat["pruned"]["median_ms"]
    return {"dense": d, "pruned": p, "ratio": d / p if p else float("inf")}


def meets(budget: Budget, cost: dict[str, Any]) -> bool:
    if budget.kind == "speedup":
        return cost["ratio"] >= budget.value
    if budget.kind == "latency_ms":
        return cost["pruned"] <= budget.value
    limit = budget.value * cost["dense"] if budget.value <= 1 else budget.value
    return cost["pruned"] <= limit


# ---- searching ---------------------------------------------------------------------------------
@dataclass
class Found:
    ratio: float
    met: bool
    cost: dict[str, Any]
    model: nn.Module | None
    report: dict[str, Any] | None
    trace: list[dict[str, Any]] = field(default_factory=list)
    latency_label: str = "measured: onnxruntime CPU batch 1, this machine"

    def summary(self) -> dict[str, Any]:
        return {"ratio": self.ratio, "met": self.met, "cost": self.cost, "trace": self.trace,
                "latency_label": self.latency_label}


def search_budget(prune_at: Callable[[float], tuple[nn.Module, dict]], dense: nn.Module, example: torch.Tensor,
                  budget: Budget, *, resolution: float = 0.01, max_ratio: float = 0.95,
                  latency_fn: Callable | None = None, latency_label: str | None = None,
                  log: Callable[[str], None] | None = None) -> Found:
    """Smallest ratio (on a ``resolution`` grid) whose physically pruned model meets ``budget``.

    ``prune_at(ratio) -> (pruned model, removal report)``. If even ``max_ratio`` misses the budget,
    the result has ``met=False`` and holds the most compressed model tried.
    """
    if not isinstance(budget, Budget):
        raise ConfigError("search_budget needs a Budget (see parse_budget)")
    if not (0 < resolution < 1) or not (0 < max_ratio < 1):
        raise ConfigError(f"resolution and max_ratio must be in (0, 1), got {resolution}, {max_ratio}")
    steps = int(round(1 / resolution))
    trace: list[dict[str, Any]] = []
    tried: dict[int, tuple[bool, dict, nn.Module, dict]] = {}

    def at(k: int) -> bool:
        if k not in tried:
            model, report = prune_at(k / steps)
            cost = measure(budget.kind, dense, model, example, latency_fn=latency_fn)
            ok = meets(budget, cost)
            # only the smallest passing ratio's model is kept (pruned copies are large)
            best_k = min((j for j, v in tried.items() if v[0]), default=None)
            keep = ok and (best_k is None or k < best_k)
            if keep and best_k is not None:
                tried[best_k] = (True, tried[best_k][1], None, None)
            tried[k] = (ok, cost, model if keep or k == hi else None, report if keep or k == hi else None)
            trace.append({"ratio": k / steps, "cost": cost, "met": ok})
            if log:
                log(f"ratio {k / steps:.2f}: {budget.kind} dense/pruned {cost['ratio']:.2f}x "
                    f"({'meets' if ok else 'misses'} {budget.describe()})")
        return tried[k][0]

    hi = int(max_ratio * steps + 1e-9)
    if not at(hi):
        ok, cost, model, report = tried[hi]
        return Found(hi / steps, False, cost, model, report, trace, latency_label or Found.latency_label)
    # ratio 0 is the dense model, on the missing side; bisection keeps hi meeting the budget
    bisect_boundary(0, hi, lambda k: not at(k))
    best = min(k for k, v in tried.items() if v[0])
    _, cost, model, report = tried[best]
    return Found(best / steps, True, cost, model, report, sorted(trace, key=lambda r: r["ratio"]),
                 latency_label or Found.latency_label)
