"""Target device profiles (``devices/profiles/<name>.json``).

A profile says how a model is run on a target (runtime, precision, threads, batch sizes, memory budget)
and the published peak numbers the roofline model needs to predict latency where the target is absent.
Every published number carries a ``source`` note; numbers that are measured on the host at run time
(the ``cpu`` profile) are ``null`` in the file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from toolchain.errors import ConfigError

RUNTIMES = ("onnxruntime", "openvino", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8")
EXECUTIONS = ("local", "remote")


@dataclass(frozen=True)
class Figure:
    """A number with its provenance: ``value`` None means measured/calibrated at run time."""

    value: float | None
    unit: str
    source: str

    @classmethod
    def parse(cls, d: dict, where: str, default_unit: str = "") -> Figure:
        if not isinstance(d, dict) or "source" not in d or not str(d["source"]).strip():
            raise ConfigError(f"{where}: needs a non-empty 'source' note")
        value = d.get("value")
        if value is not None and (not isinstance(value, (int, float)) or value <= 0):
            raise ConfigError(f"{where}: value must be a positive number or null, got {value!r}")
        return cls(None if value is None else float(value), str(d.get("unit", default_unit)), str(d["source"]))


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    description: str
    runtime: str
    execution: str  # "local": runs on this machine; "remote": commands are emitted for the device
    precision: str
    threads: int  # 0 = all logical cores of the host, resolved by ``resolved_threads``
    batch_sizes: tuple[int, ...]
    memory_budget_mb: int
    pip_package: str
    peak_compute: dict[str, Figure]  # precision -> GFLOP/s (GOP/s for int8)
    memory_bandwidth: Figure  # GB/s
    launch_overhead_us: Figure
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def is_local(self) -> bool:
        return self.execution == "local"

    def resolved_threads(self) -> int:
        return self.threads if self.threads > 0 else (os.cpu_count() or 1)

    @property
    def throughput_batch(self) -> int:
        return max(self.batch_sizes)

    def peak_gflops(self, precision: str | None = None) -> float | None:
        fig = self.peak_compute.get(precision or self.precision)
        return fig.value if fig else None

    def to_dict(self) -> dict:
        def fig(f: Figure) -> dict:
            return {"value": f.value, "unit": f.unit, "source": f.source}

        return {
            "name": self.name, "description": self.description, "runtime": self.runtime,
            "execution": self.execution, "precision": self.precision, "threads": self.threads,
            "batch_sizes": list(self.batch_sizes), "memory_budget_mb": self.memory_budget_mb,
            "pip_package": self.pip_package,
            "peak_compute": {k: fig(v) for k, v in self.peak_compute.items()},
            "memory_bandwidth": fig(self.memory_bandwidth),
            "launch_overhead_us": fig(self.launch_overhead_us), **self.notes,
        }

    @classmethod
    def from_dict(cls, d: dict, where: str = "profile") -> DeviceProfile:
        def need(key: str):
            if key not in d:
                raise ConfigError(f"{where}: missing key {key!r}")
            return d[key]

        runtime, precision, execution = need("runtime"), need("precision"), need("execution")
        if runtime not in RUNTIMES:
            raise ConfigError(f"{where}: runtime {runtime!r} is not one of {', '.join(RUNTIMES)}")
        if precision not in PRECISIONS:
            raise ConfigError(f"{where}: precision {precision!r} is not one of {', '.join(PRECISIONS)}")
        if execution not in EXECUTIONS:
            raise ConfigError(f"{where}: execution {execution!r} is not one of {', '.join(EXECUTIONS)}")
        threads = need("threads")
        batches = need("batch_sizes")
        if not isinstance(threads, int) or threads < 0:
            raise ConfigError(f"{where}: threads must be an integer >= 0 (0 = all cores)")
        if not batches or not all(isinstance(b, int) and b > 0 for b in batches) or 1 not in batches:
            raise ConfigError(f"{where}: batch_sizes must be positive integers including 1")
        budget = need("memory_budget_mb")
        if not isinstance(budget, int) or budget <= 0:
            raise ConfigError(f"{where}: memory_budget_mb must be a positive integer")
        peaks = {k: Figure.parse(v, f"{where}: peak_compute.{k}", "GFLOP/s") for k, v in need("peak_compute").items()}
        if precision not in peaks:
            raise ConfigError(f"{where}: peak_compute has no entry for its precision {precision!r}")
        notes = {k: str(v) for k, v in d.items() if k.endswith("_note")}
        return cls(
            name=str(need("name")), description=str(need("description")), runtime=runtime,
            execution=execution, precision=precision, threads=threads, batch_sizes=tuple(batches),
            memory_budget_mb=budget, pip_package=str(need("pip_package")), peak_compute=peaks,
            memory_bandwidth=Figure.parse(need("memory_bandwidth"), f"{where}: memory_bandwidth", "GB/s"),
            launch_overhead_us=Figure.parse(need("launch_overhead_us"), f"{where}: launch_overhead_us", "us"),
            notes=notes,
        )


def profiles_dir() -> Path:
    return Path(str(resources.files("devices") / "profiles"))


def profile_names() -> list[str]:
    return sorted(p.stem for p in profiles_dir().glob("*.json"))


def load_profile(name: str) -> DeviceProfile:
    """The profile called ``name``; an unknown name raises ConfigError listing the known ones."""
    names = profile_names()
    if name not in names:
        raise ConfigError(f"unknown target {name!r}: known targets are {', '.join(names)}")
    path = profiles_dir() / f"{name}.json"
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from exc
    profile = DeviceProfile.from_dict(data, where=str(path))
    if profile.name != name:
        raise ConfigError(f"{path}: its name {profile.name!r} does not match the file name")
    return profile


def all_profiles() -> list[DeviceProfile]:
    return [load_profile(n) for n in profile_names()]
