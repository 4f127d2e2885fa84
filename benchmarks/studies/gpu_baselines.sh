#!/usr/bin/env bash
# Baselines on a CUDA machine with the same code path as CPU (`--device auto` picks CUDA).
# Used when a GPU is available: trains every run of benchmarks/studies/baselines.py, then a 224 px
# demonstration on the Kermany chest X-rays (ResNet50 and the real ViT-B/16 with 16 px patches).
# Usage: MEDPRUNE_DATA=... bash benchmarks/studies/gpu_baselines.sh OUTDIR
set -uo pipefail
OUT_DIR=${1:?output dir}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 MEDPRUNE_CACHE=${MEDPRUNE_CACHE:-/tmp/medprune-gpu-cache}
mkdir -p "$OUT_DIR"
python3 -c 'import torch, timm; print("torch", torch.__version__, "timm", timm.__version__, torch.cuda.get_device_name())'
timeout 330 python3 -m benchmarks.studies baselines --quiet 2>&1 | tail -40
cp benchmarks/results/baselines.json "$OUT_DIR/baselines_cuda.json"
cp benchmarks/results/baselines.md "$OUT_DIR/baselines_cuda.md"
# ResNet50 with the settings of the recorded run; ViT-B/16 with its native 16 px patches
timeout 170 python3 -m toolchain.cli train --model resnet50 --data chest_xray_224 --img-size 224 \
  --epochs 5 --batch-size 64 --lr 1e-3 --device cuda 2>&1 | tail -15
timeout 110 python3 -m toolchain.cli train --model vit_b16 --data chest_xray_224 --img-size 224 \
  --epochs 5 --batch-size 64 --lr 3e-4 --build-arg patch_size=16 --device cuda 2>&1 | tail -15
python3 - "$OUT_DIR" <<'PY'
import json, sys, glob, os
out = sys.argv[1]
rows = {}
for side in glob.glob(os.environ["MEDPRUNE_CACHE"] + "/checkpoints/*chest*/model.json"):
    m = json.load(open(side))["meta"]
    rows[os.path.basename(os.path.dirname(side))] = {k: m.get(k) for k in
        ("arch", "img_size", "build_args", "metrics", "train", "train_config")}
rows["command"] = "MEDPRUNE_DATA=... bash benchmarks/studies/gpu_baselines.sh OUT (224 px part)"
json.dump(rows, open(f"{out}/chest224_cuda.json", "w"), indent=1, default=str)
PY
