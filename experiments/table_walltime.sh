#!/usr/bin/env bash
# Wall time of whole tables at 300W scale on this machine's GPUs, from measured epochs (issue 18, item 3). Every row
# of a table trains as a user runs it (its preset's batch, crop and model, trainer=gpu, hydra/launcher=gpu_pack) for
# EPOCHS epochs of BATCHES training batches with its full validation and test; experiments/table_walltime.py then
# extrapolates each row to its schedule (60 epochs in both presets) and packs the rows as gpu_pack runs them.
# One synthetic set in 300W's layout (3,148 training faces, SIZE-px JPEGs) is made once and serves every table.
# Usage: bash experiments/table_walltime.sh <out_dir> [odn_table4] [hm1d_table1]     (default: both)
#   PER_GPU_ODN=3, PER_GPU_HM1D=5: rows at once per GPU (defaults: every row of the table in one wave on 2 GPUs).
#   EPOCHS=3 (the first is warm-up), BATCHES=40, SIZE=1280, DATA=<out_dir>/data (where the images are made, about
#   1.4 GB), EXTRA="key=value ..." (flmk.train overrides for every row, e.g. data.cache=true).
#   Writes <out_dir>/<table>/table_walltime.{json,md} (and the measured rows in <out_dir>/<table>/sweep); prints the
#   Markdown.
set -u
source "$(dirname "$0")/require_gpu.sh"
require_gpu cpu-ok
OUT=${1:?usage: bash experiments/table_walltime.sh <out_dir> [odn_table4] [hm1d_table1]}
shift
TABLES=${*:-odn_table4 hm1d_table1}
PY=${PY:-python3}
SCRIPT="$(dirname "$0")/table_walltime.py"
# ODN starts from ImageNet weights in its preset; they do not change the speed, and the GPU host has no network.
COMMON=(--epochs "${EPOCHS:-3}" --train-batches "${BATCHES:-40}" --size "${SIZE:-1280}" --data-dir "${DATA:-$OUT/data}"
        "trainer=${TRAINER:-gpu}" callbacks.progress_bar=null ${EXTRA:-})
rc=0
for t in $TABLES; do case $t in
odn_table4) "$PY" "$SCRIPT" --out "$OUT/odn_table4" --table odn/table4 --per-gpu "${PER_GPU_ODN:-3}" "${COMMON[@]}" \
  model.pretrained=false || rc=1 ;;
hm1d_table1) "$PY" "$SCRIPT" --out "$OUT/hm1d_table1" --table hm1d/table1_detector --per-gpu "${PER_GPU_HM1D:-5}" \
  "${COMMON[@]}" || rc=1 ;;
*) echo "unknown table $t (known: odn_table4 hm1d_table1)" >&2; exit 2 ;;
esac; done
exit $rc
