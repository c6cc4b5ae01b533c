#!/usr/bin/env bash
# One prepared check for a GPU host with no network (issue 33).
#
#   OUT=/some/dir bash benchmarks/gpu_check.sh [--dry-run] [--photos DIR]
#
# The host brings its own Python with PyTorch (CUDA), Triton, onnx, onnxruntime, pybind11, numpy
# and pillow installed (TensorRT optional); PYTHON picks the interpreter (default python3).
# Nothing is downloaded and nothing is installed into the host's Python (a distribution's
# Python 3.12 refuses pip installs, PEP 668): the extensions are built in place with
# `setup.py build_ext --inplace` (setuptools and pybind11 from the host) and the package is
# imported from this checkout (PYTHONPATH); PIP_NO_INDEX=1 as well, so no pip reaches an index. Steps, each in its own time box (`timeout`;
# the boxes add up to 480 s = 8 minutes); a failing or timed-out step does not stop the next:
#
#   env      20 s  versions, GPU, what the kernel dispatch finds         -> env.json
#   install  80 s  setup.py build_ext --inplace (the C++ and CUDA extensions) -> install.log
#   tests   100 s  the GPU-path tests (CPU against GPU fingerprints per spectrum path), the
#                  extension and kernel tests on the GPU (every kernel against its float64
#                  reference)                                            -> tests.log
#   parity   60 s  per engine, fingerprints and scores against torch on the CPU on real photos
#                  (--photos DIR, else synthetic); records each engine's parity check, so
#                  backend="auto" may pick it on this host              -> parity.json
#   kernels 110 s  every fused kernel against torch eager and torch.compile -> kernels_gpu.json
#   e2e      50 s  Attributor images/s at batch 64 and 256 per engine    -> e2e.json
#   train    60 s  stage-2 training steps/s, CUDA against CPU            -> train.json
#   summary        gpu_check.json (everything) and summary.md (not time-boxed: reads files)
#
# --dry-run runs the same steps on the CPU at toy sizes (pip only resolves the install, the
# tests are collected, the kernels run in the Triton interpreter), to check the script here;
# tests/test_gpu_check.py runs it in CI. Its times mean nothing.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT="${OUT:-/tmp/gpu_check}"
PY="${PYTHON:-python3}"
DRY=""
PHOTOS=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --photos) PHOTOS="$2"; shift ;;
        *) echo "usage: OUT=DIR bash benchmarks/gpu_check.sh [--dry-run] [--photos DIR]" >&2; exit 2 ;;
    esac
    shift
done
mkdir -p "$OUT"
: > "$OUT/steps.jsonl"
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
export OUT
# parity records and engine caches of this check stay with its results unless the caller set one
export OFA_SDK_CACHE="${OFA_SDK_CACHE:-$OUT/cache}"
# this tree's code whatever is installed (a dry run installs nothing; env runs before install)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if [ -n "$DRY" ]; then
    export TRITON_INTERPRET=1 CUDA_VISIBLE_DEVICES=""
fi
# quickest first: a time box that runs out still leaves the verdicts of the files before
GPU_TESTS=(tests/test_gpu_path.py tests/test_csrc_spectrum.py tests/test_kernels_dispatch.py
           tests/test_kernels_spectrum.py tests/test_kernels_gallery.py tests/test_kernels_mokconv.py)
CHECK=("$PY" benchmarks/gpu_check.py --out "$OUT" ${DRY:+--dry-run} ${PHOTOS:+--photos "$PHOTOS"})

step() {  # step NAME SECONDS CMD...: run CMD in a time box, log it, record its exit status
    local name=$1 box=$2 t0 rc ms
    shift 2
    t0=$(date +%s%N)
    timeout --kill-after=5 "$box" "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    ms=$(( ($(date +%s%N) - t0) / 1000000 ))
    printf '{"step": "%s", "rc": %d, "seconds": %d.%03d, "box_s": %d}\n' "$name" "$rc" \
        $((ms / 1000)) $((ms % 1000)) "$box" >> "$OUT/steps.jsonl"
    echo "[gpu_check] $name: exit $rc"
}

nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || echo "no nvidia-smi" > "$OUT/nvidia-smi.txt"
# build the CUDA extension for this host's GPU only (one nvcc pass instead of three)
if [ -z "${OFA_SDK_CUDA_ARCH:-}" ] && [ -z "$DRY" ]; then
    CAP=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d '. ')
    [ -n "$CAP" ] && export OFA_SDK_CUDA_ARCH="$CAP"
fi
step env 20 "${CHECK[@]}" env
if [ -n "$DRY" ]; then
    step install 80 "$PY" -c "import importlib.metadata as m, setuptools; print('build deps: setuptools', setuptools.__version__, '| pybind11', m.version('pybind11') if m.packages_distributions().get('pybind11') else 'absent (the extensions would be skipped)')"
    step tests 100 "$PY" -m pytest -q --collect-only -p no:cacheprovider "${GPU_TESTS[@]}"
else
    step install 80 "$PY" setup.py build_ext --inplace
    step tests 100 "$PY" -m pytest -v --tb=short -p no:cacheprovider "${GPU_TESTS[@]}"
fi
step parity 60 "${CHECK[@]}" parity
if [ -n "$DRY" ]; then
    step kernels 110 "$PY" benchmarks/kernels_gpu.py --smoke --out "$OUT/kernels_gpu.json"
else
    step kernels 110 "$PY" benchmarks/kernels_gpu.py --quick --warmup 5 --rep 25 --out "$OUT/kernels_gpu.json"
fi
step e2e 50 "${CHECK[@]}" e2e
step train 60 "${CHECK[@]}" train
"${CHECK[@]}" summary > "$OUT/summary.log" 2>&1
echo "[gpu_check] results in $OUT (summary.md, gpu_check.json, *.log)"
cat "$OUT/summary.md" 2>/dev/null | head -n 60
