#!/usr/bin/env bash
# predict.py from an extracted bedside package, in a venv with ONLY numpy + onnxruntime + pillow,
# classifies shared chest X-rays; the result is compared with the toolchain's own prediction.
#   benchmarks/studies/predict_minimal_venv.sh            (writes benchmarks/results/predict_minimal.{json,md})
# Env: CKPT (dense checkpoint to deploy), VENV (/tmp/venv-min), WORK (/tmp/predict_minimal), MEDPRUNE_DATA.
set -euo pipefail
cd "$(dirname "$0")/.."
export MEDPRUNE_DATA="${MEDPRUNE_DATA:-$(cd .. && pwd)/shared/data}"
CKPT="${CKPT:-.cache/medprune/checkpoints/vgg19-pneumoniamnist-f1d546542b51/model.safetensors}"
VENV="${VENV:-/tmp/venv-min}"
WORK="${WORK:-/tmp/predict_minimal}"
XRAYS="$MEDPRUNE_DATA/chest_xray_224/test"
rm -rf "$WORK" && mkdir -p "$WORK"

echo "== 1/4 package (medprune deploy; cached stages make a rerun quick)"
.venv/bin/medprune deploy --checkpoint "$CKPT" --out "$WORK/dist" --json > "$WORK/deploy.json"
TARBALL=$(.venv/bin/python -c "import json,sys; print(json.load(open(sys.argv[1]))['tarball'])" "$WORK/deploy.json")

echo "== 2/4 minimal venv $VENV (numpy, onnxruntime, pillow)"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check numpy onnxruntime pillow
"$VENV/bin/python" - "$VENV" > "$WORK/venv.json" <<'PY'
import importlib.util, json, platform, subprocess, sys
freeze = subprocess.run([sys.executable, "-m", "pip", "freeze"], capture_output=True, text=True).stdout.split()
print(json.dumps({"path": sys.argv[1], "python": platform.python_version(), "packages": freeze,
                  "torch_importable": importlib.util.find_spec("torch") is not None,
                  "medprune_importable": importlib.util.find_spec("toolchain") is not None}))
PY

echo "== 3/4 extract (tarfile 'data' filter) and run predict.py in the minimal venv"
"$VENV/bin/python" -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter='data')" \
  "$TARBALL" "$WORK/extracted"
PKG=$(ls -d "$WORK"/extracted/*/)
mapfile -t IMAGES < <(ls "$XRAYS"/NORMAL/*.jpeg | head -2; ls "$XRAYS"/PNEUMONIA/*.jpeg | head -2)
(cd "$WORK" && "$VENV/bin/python" -I "$PKG/predict.py" "${IMAGES[@]}" --json > "$WORK/predict.json")
"$VENV/bin/python" -I "$PKG/predict.py" "${IMAGES[@]}"

echo "== 4/4 compare with the toolchain (torch, pruned checkpoint)"
.venv/bin/medprune study predict_minimal --deploy-json "$WORK/deploy.json" \
  --predict-json "$WORK/predict.json" --venv-info "$WORK/venv.json" --command "benchmarks/studies/predict_minimal_venv.sh"
