"""Per-epoch resume state of a recovery fit: one file in the recovery's cache entry folder.

    slot = ResumeFile(folder / "resume.safetensors", key)
    slot.save(loop, model, optimizer, schedule, memo)       # after every epoch, atomically
    loop = slot.load(model, optimizer, schedule, memo, epochs)  # None: absent or damaged (start over)

The file is a safetensors archive (no pickle: a cache file is data, never code): the student's tensors,
the best-so-far weights, the optimizer's per-parameter tensors, torch's RNG states and the teacher-logit
memo (``.distill.TeacherMemo``: without it a resumed run would recompute the teacher's logits on other
batch compositions, which can change their last bits), plus a JSON header with the loop counters, the
history, the optimizer's groups, the LR schedule, the numpy and Python RNG states, the key it belongs to
and a sha256 over all of it. A file whose digest, key, shapes or counters do not match is ignored with a
one-line warning and the fit starts over: a damaged state is never trusted. Every random number the loop
draws comes from these RNGs or from the loader's (seed, epoch) generators (``toolchain.data.loader``),
so a resumed fit is bit-identical to an uninterrupted one run with the same torch thread count (CPU kernels
give other bits on another count; the state records it and a resume on another count says so: pin
``MEDPRUNE_THREADS`` where bits matter).
"""

from __future__ import annotations

import hashlib
import json
import random
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..fitloop import LoopState

FORMAT = 1
_HEADER = "medprune_resume"


@dataclass(frozen=True)
class ResumeFile:
    path: Path
    key: str

    def save(self, loop: LoopState, model: nn.Module, optimizer, schedule, memo: dict | None) -> None:
        """Write the state after an epoch (atomic: a crash mid-write leaves the previous one)."""
        from safetensors.torch import save_file

        from ..atomic import atomic_path

        tensors, header = _pack(self.key, loop, model, optimizer, schedule, memo)
        header["digest"] = _digest(header, tensors)
        with atomic_path(self.path) as tmp:
            save_file(tensors, str(tmp), metadata={_HEADER: json.dumps(header)})

    def load(self, model: nn.Module, optimizer, schedule, memo: dict | None, epochs: int) -> LoopState | None:
        """Restore the model, optimizer, schedule, memo and RNGs in place; ``None`` when there is nothing
        usable (the caller then starts over from fresh optimizer and schedule: they may be half-restored)."""
        if not self.path.is_file():
            return None
        try:
            tensors, header = _read(self.path, self.key)
            _check(tensors, header, model, optimizer, epochs)
        except Exception as exc:  # any damage: start over, never trust it
            warnings.warn(f"resume state {self.path} unusable ({type(exc).__name__}: {exc}); starting over",
                          stacklevel=2)
            return None
        before = {k: v.detach().clone() for k, v in model.state_dict().items()}
        try:
            return _apply(tensors, header, model, optimizer, schedule, memo)
        except Exception as exc:
            model.load_state_dict(before)
            warnings.warn(f"resume state {self.path} could not be applied ({type(exc).__name__}: {exc}); "
                          "starting over", stacklevel=2)
            return None


def _cpu(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu").contiguous().clone()


def _pack(key, loop, model, optimizer, schedule, memo) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {f"student.{k}": _cpu(v) for k, v in model.state_dict().items()}
    # saved right after its epoch, a best epoch's weights are the student's: stored once
    best = None if loop.best_state is None else "student" if loop.best_epoch == loop.epoch else "own"
    if best == "own":
        tensors.update({f"best.{k}": _cpu(v) for k, v in loop.best_state.items()})
    opt = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in opt["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{name}"] = _cpu(value)
            else:
                scalars.setdefault(str(idx), {})[name] = value
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    np_state = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np_state[1].astype(np.int64))
    if memo:
        tensors["memo.keys"] = torch.tensor(np.frombuffer(b"".join(memo), dtype=np.uint8).reshape(len(memo), -1))
        tensors["memo.logits"] = torch.stack([_cpu(v) for v in memo.values()])
    counters = {f.name: getattr(loop, f.name) for f in fields(loop) if f.name != "best_state"}
    counters["threads"] = torch.get_num_threads()
    header = {"format": FORMAT, "key": key, **counters, "best_weights": best,
              "optimizer": {"param_groups": opt["param_groups"], "scalars": scalars},
              "schedule": schedule.state_dict(),
              "rng": {"numpy": [np_state[0], *np_state[2:]], "python": random.getstate()}}
    return tensors, json.loads(json.dumps(header))  # tuples become lists now, as they will be when read


def _digest(header: dict[str, Any], tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256(json.dumps({k: v for k, v in header.items() if k != "digest"}, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _read(path: Path, key: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        header = json.loads((f.metadata() or {})[_HEADER])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    if header.get("format") != FORMAT:
        raise ValueError(f"format {header.get('format')!r}, expected {FORMAT}")
    if header.get("digest") != _digest(header, tensors):
        raise ValueError("content digest does not match")
    if header.get("key") != key:
        raise ValueError("written for another recovery key")
    return tensors, header


def _check(tensors, header, model: nn.Module, optimizer, epochs: int) -> None:
    """Everything ``_apply`` relies on, checked before anything is changed."""
    if not 1 <= int(header["epoch"]) <= epochs or len(header["history"]) != header["epoch"]:
        raise ValueError(f"epoch {header['epoch']} with {len(header['history'])} history rows, run of {epochs}")
    want = {k: (v.shape, v.dtype) for k, v in model.state_dict().items()}
    if header["best_weights"] not in (None, "student", "own"):
        raise ValueError(f"best weights {header['best_weights']!r}")
    for prefix in ("student.", *(("best.",) if header["best_weights"] == "own" else ())):
        got = {k[len(prefix):]: (v.shape, v.dtype) for k, v in tensors.items() if k.startswith(prefix)}
        if got != want:
            raise ValueError(f"{prefix[:-1]} tensors do not match the model being recovered")
    params = [p for g in optimizer.param_groups for p in g["params"]]
    saved = header["optimizer"]["param_groups"]
    if [len(g["params"]) for g in saved] != [len(g["params"]) for g in optimizer.param_groups]:
        raise ValueError("optimizer parameter groups do not match")
    for name, t in tensors.items():
        if name.startswith("optim."):
            idx = int(name.split(".")[1])
            if t.ndim and t.shape != params[idx].shape:
                raise ValueError(f"optimizer state {name} has shape {tuple(t.shape)}")
    if tensors["rng.torch"].shape != torch.get_rng_state().shape:
        raise ValueError("torch RNG state has the wrong size")


def _apply(tensors, header, model: nn.Module, optimizer, schedule, memo: dict | None) -> LoopState:
    prefixed = lambda p: {k[len(p):]: v for k, v in tensors.items() if k.startswith(p)}  # noqa: E731
    model.load_state_dict(prefixed("student."))
    state: dict[int, dict[str, Any]] = {}
    for name, t in prefixed("optim.").items():
        idx, entry = name.split(".", 1)
        state.setdefault(int(idx), {})[entry] = t
    for idx, entry in header["optimizer"]["scalars"].items():
        state.setdefault(int(idx), {}).update(entry)
    optimizer.load_state_dict({"state": state, "param_groups": header["optimizer"]["param_groups"]})
    schedule.load_state_dict(header["schedule"])
    if memo is not None and "memo.keys" in tensors:  # on the device the teacher wrote them from (the student's)
        device = next(model.parameters()).device
        memo.update({bytes(k.tolist()): v.to(device)
                     for k, v in zip(tensors["memo.keys"], tensors["memo.logits"], strict=True)})
    _set_rng(tensors, header["rng"])
    best = header["best"]
    return LoopState(epoch=int(header["epoch"]), history=header["history"],
                     best=None if best is None else (float(best[0]), float(best[1])),
                     best_epoch=int(header["best_epoch"]), stale=int(header["stale"]), wall_s=float(header["wall_s"]),
                     threads=int(header.get("threads") or 0),
                     best_state={"own": prefixed("best."), "student": prefixed("student."), None: None}[
                         header["best_weights"]])


def _set_rng(tensors: dict[str, torch.Tensor], rng: dict[str, Any]) -> None:
    name, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((name, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[f"rng.cuda.{i}"] for i in range(sum(k.startswith("rng.cuda.") for k in tensors))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
