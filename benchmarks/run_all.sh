#!/usr/bin/env bash
# Every figure in benchmarks/RESULTS.md, in one go (CPU, about 45 minutes on 2 cores).
# Needs: the shipped model (or MODEL=file), the real photos (PHOTOS=dir), a venv at .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PHOTOS=${PHOTOS:-../shared/data/real-photos}
MODEL_ARG=${MODEL:+--model $MODEL}
mkdir -p benchmarks/results
[ -f benchmarks/data/wild/MANIFEST.json ] || $PY benchmarks/wild.py --photos "$PHOTOS" --exclude real sr-x2 --out benchmarks/data/wild
[ -f benchmarks/data/dev-sim/MANIFEST.json ] || $PY benchmarks/dev_sim.py --photos "$PHOTOS" $MODEL_ARG
# score rules: chosen on the development set (unseen simulator architectures), then the wild set
$PY benchmarks/scoring.py --set benchmarks/data/dev-sim --crops 1 4 --photos "$PHOTOS" $MODEL_ARG \
    --out benchmarks/results/scoring_dev.json | tee benchmarks/results/scoring_dev.txt
$PY benchmarks/scoring.py --set benchmarks/data/dev-sim --crops 1 4 --jpeg 90 $MODEL_ARG \
    --out benchmarks/results/scoring_dev_jpeg90.json | tee benchmarks/results/scoring_dev_jpeg90.txt
$PY benchmarks/scoring.py --set benchmarks/data/wild --support 75 --queries 100 --crops 1 4 9 $MODEL_ARG \
    --out benchmarks/results/scoring_wild.json | tee benchmarks/results/scoring_wild.txt
$PY benchmarks/eval_wild.py --photos "$PHOTOS" --crops 1 4 9 $MODEL_ARG | tee benchmarks/results/eval_wild.txt
$PY benchmarks/open_set.py --photos "$PHOTOS" $MODEL_ARG | tee benchmarks/results/open_set.txt
$PY benchmarks/open_set.py --wild benchmarks/data/dev-sim --photos "$PHOTOS" --known 5 --support 50 --queries 70 \
    --out benchmarks/results/open_set_dev.json $MODEL_ARG | tee benchmarks/results/open_set_dev.txt
# per-profile threshold estimators at small support sizes (chosen on the development set)
$PY benchmarks/thresholds.py --set benchmarks/data/dev-sim $MODEL_ARG \
    --out benchmarks/results/thresholds_dev.json | tee benchmarks/results/thresholds_dev.txt
$PY benchmarks/thresholds.py --set benchmarks/data/wild $MODEL_ARG \
    --out benchmarks/results/thresholds_wild.json | tee benchmarks/results/thresholds_wild.txt
$PY -m ofa_sdk.cli eval benchmarks/data/wild --support 75 --queries 100 --crops 4 --gallery /tmp/ofa-eval.db \
    --matrix benchmarks/results/wild_matrix_crops4.png $MODEL_ARG | tee benchmarks/results/cli_eval.txt
$PY benchmarks/sizing.py | tee benchmarks/results/sizing.txt
