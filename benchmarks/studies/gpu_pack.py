"""Pack trained checkpoints for transfer off a GPU machine whose file returns are size-capped.

Weights are rounded to fp16 (halving the bytes); the receiving side restores fp32 tensors, re-saves
them with a sidecar that records the rounding, and re-evaluates the test metrics on its own CPU.
    medprune study gpu_pack pack CACHE_DIR PATTERN PARTS_DIR [--part-mib 15]
    medprune study gpu_pack unpack PARTS_DIR DEST_CACHE_DIR
"""

from __future__ import annotations

import glob
import io
import json
import os
import tarfile
from pathlib import Path

from .registry import StudyParser, study


def pack(cache: str, pattern: str, parts: str, part_mib: int) -> None:
    import torch
    from safetensors.torch import load_file, save

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for weights in sorted(glob.glob(f"{cache}/checkpoints/{pattern}/model.safetensors")):
            run = Path(weights).parent.name
            state = {k: (v.half() if v.is_floating_point() else v) for k, v in load_file(weights).items()}
            blob = save(state)
            for name, data in ((f"{run}/model.fp16.safetensors", blob),
                               (f"{run}/model.json", Path(weights).with_suffix(".json").read_bytes())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            print("packed", run, f"{len(blob) / 2**20:.1f} MiB")
    data, size = buf.getvalue(), part_mib * 2**20
    os.makedirs(parts, exist_ok=True)
    for i in range(0, len(data), size):
        Path(parts, f"part{i // size:03d}").write_bytes(data[i:i + size])
    print(f"{len(data) / 2**20:.1f} MiB in {(len(data) + size - 1) // size} parts")
    _ = torch


def _reevaluate(model, meta: dict) -> dict:
    """Test/val metrics recomputed here after the fp16 round trip (the GPU's are kept as *_cuda)."""
    from toolchain.data import Preprocess, load_dataset
    from toolchain.data.splits import split_kwargs
    from toolchain.evaluate import evaluate

    metrics = {f"{k}_cuda": v for k, v in (meta.get("metrics") or {}).items()}
    ds = load_dataset(meta["dataset"]["name"], **split_kwargs(meta.get("train_config") or {}))
    if ds.fingerprint != meta["dataset"]["fingerprint"]:
        raise SystemExit(f"dataset fingerprint differs for {meta['dataset']['name']}")
    pre = Preprocess.from_dict(meta["preprocess"])
    for split in ("val", "test"):
        metrics[split] = evaluate(model.eval(), ds, split, pre)
    return metrics


def unpack(parts: str, dest: str) -> None:
    import torch
    from safetensors.torch import load

    from toolchain.models import load_checkpoint, save_checkpoint
    from toolchain.models.checkpoint import model_from_meta

    data = b"".join(p.read_bytes() for p in sorted(Path(parts).glob("part*")))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    for name in sorted(n for n in members if n.endswith("model.json")):
        run = name.split("/")[0]
        meta = json.loads(members[name])["meta"]
        state = {k: (v.float() if v.is_floating_point() else v)
                 for k, v in load(members[f"{run}/model.fp16.safetensors"]).items()}
        model = model_from_meta(meta)
        model.load_state_dict(state)
        meta.setdefault("train", {})["transfer"] = "trained on CUDA; weights rounded to fp16 for transfer"
        meta["metrics"] = _reevaluate(model, meta)
        target = Path(dest) / "checkpoints" / run / "model.safetensors"
        save_checkpoint(target, model, {k: v for k, v in meta.items() if k not in ("weights_sha256",)})
        load_checkpoint(target)
        print("restored", target)
    _ = torch



@study("gpu_pack")
def main(argv: list[str] | None = None) -> None:
    p = StudyParser("gpu_pack", __doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("pack")
    a.add_argument("cache")
    a.add_argument("pattern")
    a.add_argument("parts")
    a.add_argument("--part-mib", type=int, default=15)
    b = sub.add_parser("unpack")
    b.add_argument("parts")
    b.add_argument("dest")
    args = p.parse_args(argv)
    pack(args.cache, args.pattern, args.parts, args.part_mib) if args.cmd == "pack" else unpack(args.parts, args.dest)
