"""What `medprune info` reports: parameters, MACs, on-disk size and layers of a model."""

from __future__ import annotations

import os
from typing import Any

import torch

from .checkpoint import load_checkpoint, read_sidecar
from .registry import build_model, count_macs, count_params, layer_summary, parse_build_args


def model_info(*, checkpoint: str | os.PathLike | None = None, model: str | None = None, num_classes: int = 2,
               in_chans: int = 1, img_size: int = 32, build_args: list[str] | None = None,
               layers: bool = True) -> dict[str, Any]:
    info: dict[str, Any] = {}
    if checkpoint is not None:
        weights, sidecar = read_sidecar(checkpoint)
        net, meta = load_checkpoint(weights)
        info["checkpoint"] = str(weights)
        info["disk_bytes"] = weights.stat().st_size + weights.with_suffix(".json").stat().st_size
        info["dataset"] = (meta.get("dataset") or {}).get("name")
        info["metrics"] = {k: {m: v.get(m) for m in ("accuracy", "balanced_accuracy", "auc")}
                           for k, v in (meta.get("metrics") or {}).items() if isinstance(v, dict)}
        info["pruning"] = meta.get("pruning")
    else:
        net = build_model(model, num_classes, in_chans, img_size, **parse_build_args(build_args))
        meta = net.medprune_spec
        info["disk_bytes_fp32"] = sum(t.numel() * t.element_size() for t in net.state_dict().values())
    spec = {k: meta[k] for k in ("arch", "build_args", "num_classes", "in_chans", "img_size")}
    info.update(spec)
    example = torch.zeros(1, int(spec["in_chans"]), int(spec["img_size"]), int(spec["img_size"]))
    info["params"] = count_params(net)
    info["macs"] = count_macs(net, example)
    if layers:
        info["layers"] = layer_summary(net, example)
    return info


def _human(n: float, unit: str = "") -> str:
    for suffix in ("", "K", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n:.3g}{suffix}{unit}" if suffix else f"{n:.0f}{unit}"
        n /= 1000
    return f"{n:.3g}P{unit}"


def render_info(info: dict[str, Any], console) -> None:
    from rich.table import Table

    head = Table(show_header=False, box=None)
    head.add_row("arch", f"{info['arch']} {info['build_args']}")
    head.add_row("input", f"{info['in_chans']}x{info['img_size']}x{info['img_size']}, {info['num_classes']} classes")
    head.add_row("params", f"{info['params']:,} ({_human(info['params'])})")
    head.add_row("MACs/image", f"{info['macs']:,} ({_human(info['macs'])})")
    if "disk_bytes" in info:
        head.add_row("on disk", f"{info['disk_bytes'] / 2**20:.2f} MiB ({info['checkpoint']})")
    else:
        head.add_row("fp32 weights", f"{info['disk_bytes_fp32'] / 2**20:.2f} MiB (not saved)")
    if info.get("dataset"):
        head.add_row("dataset", str(info["dataset"]))
    for split, m in (info.get("metrics") or {}).items():
        head.add_row(f"{split} metrics", ", ".join(f"{k} {v:.4f}" for k, v in m.items() if v is not None))
    if info.get("pruning"):
        head.add_row("pruning", str(info["pruning"].get("recipe", info["pruning"]))[:200])
    console.print(head)
    if info.get("layers"):
        table = Table(title="layers")
        for col in ("#", "name", "type", "output shape", "params"):
            table.add_column(col, justify="right" if col in ("#", "params") else "left")
        for i, row in enumerate(info["layers"]):
            shape = "x".join(str(d) for d in row["output_shape"][1:]) if row["output_shape"] else "-"
            table.add_row(str(i), row["name"], row["type"], shape, f"{row['params']:,}")
        console.print(table)


__all__ = ["model_info", "render_info"]
