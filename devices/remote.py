"""Commands to run on a target that is not attached to this machine (the Jetsons).

``device_commands`` gives the exact trtexec build and run lines (dynamic batch axis given as
min/opt/max shapes) and the harness's own on-device runner (``devices/scripts/run_trt.py``);
``write_device_bundle`` puts the ONNX file, the runner, an optional preprocessed test set and a
``run_on_<target>.sh`` into one folder to copy to the device.
"""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

import numpy as np

from toolchain.atomic import atomic_file
from toolchain.errors import ModelError

from .profiles import DeviceProfile


def onnx_input(path: Path) -> tuple[str, tuple[int, int, int], int | None]:
    """(input name, (C, H, W), static batch or None) of an ONNX graph."""
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as exc:
        raise ModelError(f"cannot read ONNX graph {path}: {exc}") from exc
    inits = {t.name for t in graph.initializer}
    inp = next(i for i in graph.input if i.name not in inits)
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]
    if len(dims) != 4 or not all(dims[1:]):
        raise ModelError(f"{path}: input {inp.name!r} must be (batch, C, H, W) with static C, H, W; got {dims}")
    return inp.name, (dims[1], dims[2], dims[3]), dims[0]


def _shape(name: str, batch: int, chw: tuple[int, int, int]) -> str:
    return f"{name}:{batch}x{chw[0]}x{chw[1]}x{chw[2]}"


def device_commands(onnx_name: str, profile: DeviceProfile, input_name: str, chw: tuple[int, int, int],
                    static_batch: int | None, runs: int = 200, with_data: bool = False,
                    precision: str | None = None) -> list[str]:
    """Shell lines for the device, run from the bundle folder."""
    precision = precision or profile.precision
    stem = Path(onnx_name).stem
    engine = f"{stem}_{precision}.plan"
    batch = profile.throughput_batch if static_batch is None else static_batch
    flags = {"fp32": "", "fp16": " --fp16", "int8": " --int8 --fp16"}[precision]
    build = f"trtexec --onnx={onnx_name} --saveEngine={engine}{flags}"
    if static_batch is None:
        build += (f" --minShapes={_shape(input_name, 1, chw)} --optShapes={_shape(input_name, 1, chw)}"
                  f" --maxShapes={_shape(input_name, batch, chw)}")
    lines = ["#!/usr/bin/env bash", "set -euo pipefail", f"# target: {profile.name} — {profile.description}",
             "# lock clocks so latency is repeatable (MAXN power mode, fixed clocks)",
             "sudo nvpmodel -m 0 && sudo jetson_clocks || echo 'could not lock clocks; timings will vary'",
             "export PATH=$PATH:/usr/src/tensorrt/bin"]
    if precision == "int8":
        lines.append("# INT8 needs a Q/DQ ONNX (medprune export --precision int8); on a plain FP32 graph trtexec"
                     " uses placeholder scales and accuracy is meaningless")
    lines += [build,
              f"trtexec --loadEngine={engine} --shapes={_shape(input_name, 1, chw)} --warmUp=500 --iterations={runs}"
              f" --avgRuns=10 --useSpinWait --exportTimes=trtexec_times_b1.json | tee trtexec_b1.log"]
    if static_batch is None and batch > 1:
        lines.append(f"trtexec --loadEngine={engine} --shapes={_shape(input_name, batch, chw)} --warmUp=500"
                     f" --iterations={runs} --useSpinWait | tee trtexec_b{batch}.log")
    runner = (f"python3 run_trt.py --engine {engine} --shape 1x{chw[0]}x{chw[1]}x{chw[2]} --batch {batch}"
              f" --runs {runs}" + (" --data testset.npz" if with_data else "")
              + f" --out result_{profile.name}_{precision}.json")
    lines += ["# the harness's own runner: latency distribution, throughput, peak RSS, accuracy (same JSON fields)",
              runner]
    return lines


def write_device_bundle(onnx_path: Path, profile: DeviceProfile, out_dir: Path, runs: int = 200,
                        testset: tuple[np.ndarray, np.ndarray, list[str]] | None = None) -> tuple[Path, list[str]]:
    """Copy the ONNX file + runner (+ test set) into ``out_dir/<target>/`` with ``run_on_<target>.sh``."""
    name, chw, static_batch = onnx_input(onnx_path)
    bundle = out_dir / f"device_{profile.name}"
    bundle.mkdir(parents=True, exist_ok=True)
    shutil.copy2(onnx_path, bundle / onnx_path.name)
    for runner in (resources.files("devices") / "scripts" / "run_trt.py",  # + the engine code it loads
                   resources.files("export") / "templates" / "trt_runner.py"):
        with atomic_file(bundle / runner.name, "w") as fh:
            fh.write(runner.read_text())
    if testset is not None:
        x, y, names = testset
        with atomic_file(bundle / "testset.npz", "wb") as fh:
            np.savez_compressed(fh, x=x.astype(np.float32), y=y.astype(np.int64), class_names=np.array(names))
    lines = device_commands(onnx_path.name, profile, name, chw, static_batch, runs, testset is not None)
    script = bundle / f"run_on_{profile.name}.sh"
    with atomic_file(script, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    script.chmod(0o755)
    return bundle, lines
