#!/usr/bin/env bash
# One prepared GPU check (issue 12): build csrc/ with CUDA, run the GPU tests, time every kernel
# against torch eager, torch.compile and cuFFT, and write everything to $OUT.
#   OUT=/some/dir bash benchmarks/gpu_check.sh [--quick]
# Meant for a lent GPU machine with a short time budget: each step has its own timeout and a
# failing step does not stop the next one. Results: $OUT/*.json, $OUT/*.log.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/gpu_check}"
mkdir -p "$OUT"
QUICK="${1:-}"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
python3 -m venv .venv-gpu && . .venv-gpu/bin/activate
pip install -q torch==2.13.0 > "$OUT/pip-torch.log" 2>&1 || pip install -q torch >> "$OUT/pip-torch.log" 2>&1
timeout 900 pip install -q -e '.[test,triton,onnx]' > "$OUT/build.log" 2>&1
python - > "$OUT/env.json" <<'PY'
import json, torch
from ofa_sdk.kernels import dispatch
print(json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda,
                  "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                  "dispatch": dispatch.report()}))
PY
timeout 600 python -m pytest -q tests/test_kernels_spectrum.py tests/test_kernels_mokconv.py \
    tests/test_kernels_gallery.py tests/test_kernels_dispatch.py tests/test_csrc_spectrum.py \
    -p no:cacheprovider > "$OUT/gpu_tests.log" 2>&1
timeout 900 python benchmarks/kernels_gpu.py --out "$OUT/kernels_gpu.json" ${QUICK:+--quick --no-compile} \
    > "$OUT/kernels_gpu.log" 2>&1
timeout 300 python -m pytest -q tests/test_engines.py tests/test_tensorrt.py -p no:cacheprovider \
    > "$OUT/engines.log" 2>&1
tail -n 3 "$OUT"/*.log
