#!/usr/bin/env bash
# Every figure in benchmarks/RESULTS.md, in one go (CPU; a few hours on 2 cores, most of it the
# development sets' generators, the harness and the Ray scans).
# Needs: the shipped model, the real photos (PHOTOS=dir), a venv at .venv with '.[test]'.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PHOTOS=${PHOTOS:-../shared/data/real-photos}
R=benchmarks/results
mkdir -p $R
# 1. the development sets
[ -f benchmarks/data/dev-sim/MANIFEST.json ] || $PY benchmarks/dev_sim.py --photos "$PHOTOS" --ids \
    1467947688592 1526 65355 1258425474582 71031634 1055523705408 424282667499 1353444123167 3948 24467581
[ -f benchmarks/data/wild13/MANIFEST.json ] || $PY benchmarks/wild.py --photos "$PHOTOS"
# 2-3. score rules, crops, the open-set label (one embedding pass per set, JPEG quality and crops)
$PY benchmarks/rules.py embed --set benchmarks/data/dev-sim benchmarks/data/wild13 --jpeg 0 90 75 --crops 4 1
$PY benchmarks/rules.py embed --set benchmarks/data/dev-sim benchmarks/data/wild13 --jpeg 0 90 --crops 9
$PY benchmarks/rules.py compare --sets wild13 --support 5 10 20 50 100 --open --open-support 20 100 \
    --out $R/rules_wild13.json
$PY benchmarks/rules.py compare --sets dev-sim --support 5 10 20 50 --open --open-support 20 50 \
    --out $R/rules_dev.json
$PY benchmarks/rules.py compare --sets wild13 --jpeg 0 90 --crops 4 --support 100 \
    --rules prototype gaussian-lw lda-gallery --split ordered --open --open-support 100 \
    --out $R/rules_wild13_ordered.json
$PY benchmarks/rules.py compare --sets wild13 dev-sim --jpeg 0 90 --crops 9 --support 20 50 100 \
    --rules prototype gaussian-lw --out $R/rules_crops9.json
# 4. the main job
$PY benchmarks/demo.py --photos "$PHOTOS" | tee $R/demo.txt
# 5. throughput, gallery scale, scans
$PY benchmarks/harness.py --repeats 2 --sections e2e paper scan mokconv
$PY benchmarks/harness.py --repeats 3 --sections gallery --sets benchmarks/data/dev-sim benchmarks/data/wild13 \
    --out $R/harness_gallery.json --plot ""
# 6. engines and kernels
$PY benchmarks/spectrum_cpu.py --repeats 41
[ -f benchmarks/data/wild/MANIFEST.json ] || $PY benchmarks/wild.py --photos "$PHOTOS" --exclude real sr-x2 \
    --out benchmarks/data/wild          # the 11-class set the int8 figures were measured on
$PY benchmarks/ort_int8.py --photos "$PHOTOS"
$PY benchmarks/ray_scan.py --n 300 --repeats 3 --out $R/ray_scan.json
$PY benchmarks/soak.py --model tiny --calls 10000 --every 500 --warmup 200 --out /tmp/soak_tiny.json
# 8. discovery
$PY benchmarks/discover.py quality --sets dev-sim wild13 --seeds 5 --real-photos "$PHOTOS" \
    --out $R/discover_quality.json
$PY benchmarks/discover.py scale --out $R/discover_scale.json
# 9. serving
$PY benchmarks/serve_load.py --out $R/serve_load.json
# 10. thresholds and persisted profile state (issue 32)
$PY benchmarks/state_cache.py --profiles 1000 --images 20 --cli
$PY benchmarks/own_rejection.py --sets dev-sim wild13 --jpeg 0 90 --open --out $R/own_rejection.json
# 11. related families (needs '.[related]' and Debian's libvulkan1 libomp5)
[ -f benchmarks/data/related/MANIFEST.json ] || $PY benchmarks/related.py build --photos "$PHOTOS"
$PY benchmarks/rules.py embed --set benchmarks/data/wild13 benchmarks/data/related --jpeg 0 90 --crops 4 \
    --rescale 1 0.75 0.5
$PY benchmarks/rules.py embed --set benchmarks/data/wild13 benchmarks/data/related --jpeg 0 --crops 9 16
$PY benchmarks/related.py pairs --groups choose confirm --out $R/related_pairs.json
$PY benchmarks/related.py pairs --groups wild13 --out $R/related_pairs_wild13.json
$PY benchmarks/related.py open --out $R/related_open.json
$PY benchmarks/related.py levers --out $R/related_levers.json
for S in wild13 related; do           # 11.15 never-enrolled acceptance, 11.17 a real-photo profile
  $PY benchmarks/related.py acceptance --set $S --out $R/acceptance_${S}_compact-v2.json
  $PY benchmarks/related.py acceptance --set $S --jpeg 90 --out $R/acceptance_${S}_q90_compact-v2.json
done
[ -d benchmarks/data/real-train ] || $PY benchmarks/real_reference.py build --photos "$PHOTOS"
$PY benchmarks/rules.py embed --set benchmarks/data/real-train --jpeg 0 --crops 4
$PY benchmarks/real_reference.py sources --photos "$PHOTOS"
$PY benchmarks/rules.py embed --set benchmarks/data/real-train --jpeg 90 --crops 4
for S in wild13 related; do
  $PY benchmarks/real_reference.py measure --set $S
  $PY benchmarks/real_reference.py measure --set $S --jpeg 90 --out $R/real_reference_${S}_q90.json
done
# 11.19 the weight-siblings set
[ -f benchmarks/data/related-siblings/MANIFEST.json ] || \
    $PY benchmarks/related.py build --photos "$PHOTOS" --out benchmarks/data/related-siblings
$PY benchmarks/rules.py embed --set benchmarks/data/related-siblings --jpeg 0 90 --crops 4 --rescale 1 0.75
$PY benchmarks/related.py levers --sets related-siblings --crops 4 --rescale 1 0.75 --jpeg 0 90 \
    --out $R/related_levers_siblings_compact-v2.json
$PY benchmarks/related.py pairs --groups siblings --out $R/related_pairs_siblings_compact-v2.json
$PY benchmarks/related.py acceptance --set related-siblings --out $R/acceptance_related-siblings_compact-v2.json
$PY benchmarks/related.py acceptance --set related-siblings --jpeg 90 --out $R/acceptance_related-siblings_q90_compact-v2.json
$PY benchmarks/discover.py quality --sets related --seeds 5 --out $R/discover_quality_related.json   # section 8
