#!/usr/bin/env bash
# Issue 11: the JPEG-robustness candidate against the shipped model, on the development sets,
# clean and after JPEG q90 and q75, 1 and 4 crops, with both non-learned baselines beside it.
#   RUN=runs/jpeg-hp [TAG=candidate] bash benchmarks/jpeg_eval.sh
# Results go to benchmarks/results/jpeg/{dev,wild,wild13}_{shipped,$TAG}_q{0,90,75}.json; a result that
# exists is kept (FORCE=1 recomputes it), so a second candidate costs only its own runs.
# THREADS=1 leaves a core to a training run beside it. "shipped" is the package's default model
# unless PREVIOUS=FILE names another; the committed "shipped" results are the previous (denoiser)
# default: git show 60f4c62:ofa_sdk/weights/compact.safetensors > previous.safetensors.
# The candidate: stage 2 retrained on the shipped stage-0/1 checkpoints (ofa-train unpack) with
# the fixed high-pass residual and whole classes JPEG-compressed (see docs/experiment-log.md section 9).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PHOTOS=${PHOTOS:-../shared/data/real-photos}
RUN=${RUN:-runs/jpeg-hp}
TAG=${TAG:-candidate}
CAND=$RUN/model.safetensors
[ -f "$CAND" ] || { $PY -m ofa_sdk.training export --out "$RUN" --dest "$CAND";
                    $PY -m ofa_sdk.training calibrate --data "$PHOTOS" --dest "$CAND" --quiet; }
[ -f benchmarks/data/dev-sim/MANIFEST.json ] || $PY benchmarks/dev_sim.py --photos "$PHOTOS" \
    --ids 1467947688592 1526 65355 1258425474582 71031634 1055523705408 424282667499 1353444123167 3948 24467581
[ -f benchmarks/data/wild/MANIFEST.json ] || $PY benchmarks/wild.py --photos "$PHOTOS" --exclude real sr-x2 --out benchmarks/data/wild
[ -f benchmarks/data/wild13/MANIFEST.json ] || $PY benchmarks/wild.py --photos "$PHOTOS" --out benchmarks/data/wild13
mkdir -p benchmarks/results/jpeg
run() {   # run OUT ARGS...: scoring.py into OUT unless it is there already
  local out=$1; shift
  [ -f "$out" ] && [ -z "${FORCE:-}" ] && { echo "kept $out"; return; }
  $PY benchmarks/scoring.py "$@" --threads "${THREADS:-2}" --out "$out"
}
for M in shipped $TAG; do
  MARG=""; [ $M != shipped ] && MARG="--model $CAND"
  [ $M = shipped ] && [ -n "${PREVIOUS:-}" ] && MARG="--model $PREVIOUS"
  for Q in 0 90 75; do
    JARG=""; [ $Q != 0 ] && JARG="--jpeg $Q"
    run benchmarks/results/jpeg/dev_${M}_q${Q}.json --set benchmarks/data/dev-sim --crops 1 4 $JARG $MARG
    for W in wild wild13; do
      run benchmarks/results/jpeg/${W}_${M}_q${Q}.json --set benchmarks/data/$W --support 75 \
          --queries 100 --crops 1 4 $JARG $MARG
    done
  done
done
