"""Dense vs pruned: parameters, MACs, on-disk size and PyTorch eager latency (for ``medprune info``).

Latency is the median of repeated timed forwards in this process, dense and pruned interleaved so
that machine load drifts hit both alike; ``speedup`` is dense/pruned. MACs come from the repo's one
counter (``toolchain.models.registry.count_macs``: every conv/linear/matmul/attention op).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from torch import nn


def state_bytes(model: nn.Module) -> int:
    """Size of the model's safetensors serialisation (what a checkpoint's weights file holds)."""
    from safetensors.torch import save

    return len(save({k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}))


def _batch(example: torch.Tensor, n: int) -> torch.Tensor:
    reps = -(-n // example.shape[0])
    return example.repeat(reps, *([1] * (example.dim() - 1)))[:n].contiguous()


def eager_latency(models: dict[str, nn.Module], x: torch.Tensor, repeats: int = 20, warmup: int = 3) -> dict:
    """Median/IQR milliseconds per forward of each model on ``x`` (interleaved runs)."""
    times: dict[str, list[float]] = {k: [] for k in models}
    with torch.inference_mode():
        for m in models.values():
            m.eval()
            for _ in range(warmup):
                m(x)
        for _ in range(repeats):
            for k, m in models.items():
                t0 = time.perf_counter()
                m(x)
                times[k].append((time.perf_counter() - t0) * 1e3)
    out = {}
    for k, ts in times.items():
        q = statistics.quantiles(ts, n=4) if len(ts) >= 2 else [ts[0]] * 3
        out[k] = {"median_ms": statistics.median(ts), "q1_ms": q[0], "q3_ms": q[2], "runs": len(ts)}
    return out


def compare_models(
    dense: nn.Module,
    pruned: nn.Module,
    example_input: torch.Tensor,
    batch_sizes: tuple[int, ...] = (1, 32),
    repeats: int = 20,
    warmup: int = 3,
    threads: int | None = None,
) -> dict[str, Any]:
    """Params, MACs (per image), on-disk bytes and eager latency at each batch size, with ratios."""
    from ..models.registry import count_macs

    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        one = _batch(example_input, 1)
        res: dict[str, Any] = {}
        for key, fn in (("params", lambda m: sum(p.numel() for p in m.parameters())),
                        ("macs", lambda m: count_macs(m, one)),
                        ("size_bytes", state_bytes)):
            d, p = fn(dense), fn(pruned)
            res[key] = {"dense": d, "pruned": p, "ratio": d / p if p else float("inf")}
        res["latency"] = {}
        for b in batch_sizes:
            lat = eager_latency({"dense": dense, "pruned": pruned}, _batch(example_input, b), repeats, warmup)
            lat["speedup"] = lat["dense"]["median_ms"] / lat["pruned"]["median_ms"]
            res["latency"][f"batch{b}"] = lat
        res["threads"] = torch.get_num_threads()
        return res
    finally:
        torch.set_num_threads(old_threads)
