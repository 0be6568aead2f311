#!/usr/bin/env bash
# SRN Table 9 on synthetic video, the whole HOFS flow with short schedules:
#   1. pre-train the image SRN on synthetic stills; 2. learn the HOFS policy against it (experiment=srn/hofs);
#   3. fine-tune the tracker without occlusion augmentation, with RSF and with HOFS (experiment=srn/table9),
#      every row from the checkpoints of stages 1 and 2 (a row without them stops before training).
# Every stage trains a fixed budget (epochs, or Q updates for HOFS) and the three rows the same number of epochs.
# Usage: bash experiments/srn_hofs_chain.sh <out_dir> [wall-clock cap per stage in seconds, 0 = none (default)]
#   EPOCHS_SRN (30), HOFS_STEPS (400), EPOCHS_ROW (20) set the budgets; EXTRA="key=value ..." adds overrides.
set -eu
source "$(dirname "$0")/require_gpu.sh"
require_gpu cpu-ok
OUT=${1:-runs}/srn_table9
S=${2:-0}
PY=${PY:-python3}
mkdir -p "$OUT"
COMMON=(trainer=${TRAINER:-gpu} logger=csv callbacks.progress_bar=null data.num_workers=2 trainer.enable_model_summary=false ${EXTRA:-})
if [ "$S" -gt 0 ]; then
  COMMON+=("trainer.max_time='$(printf '00:%02d:%02d:%02d' $((S / 3600)) $((S % 3600 / 60)) $((S % 60)))'")
fi
"$PY" -m flmk.train model=srn data=synthetic data.batch_size=32 trainer.max_epochs=${EPOCHS_SRN:-30} test=false \
  "${COMMON[@]}" hydra.run.dir="$OUT/1_srn" > "$OUT/1_srn.log" 2>&1
SRN="$OUT/1_srn/checkpoints/best.ckpt"
"$PY" -m flmk.train experiment=srn/hofs data=synthetic_video trainer.max_steps=${HOFS_STEPS:-400} \
  "model.module_kwargs.srn_ckpt=$SRN" model.module_kwargs.target_sync=100 "${COMMON[@]}" hydra.run.dir="$OUT/2_hofs" \
  > "$OUT/2_hofs.log" 2>&1
HOFS="$OUT/2_hofs/checkpoints/last.ckpt"  # stage 1 has no validation: its last checkpoint is the policy
pids=()
for row in track_none track_rsf track_hofs; do  # the three rows side by side, as in synthetic_tables.sh
  "$PY" -m flmk.train -m experiment=srn/table9 ablation=srn/$row data=synthetic_video trainer.max_steps=-1 \
    trainer.max_epochs=${EPOCHS_ROW:-20} "model.net.srn_ckpt=$SRN" "model.net.hofs_ckpt=$HOFS" "${COMMON[@]}" \
    hydra.sweep.dir="$OUT/3_table9/$row" > "$OUT/3_table9_$row.log" 2>&1 &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done  # set -e: a failed row fails the script
"$PY" -m flmk.report "$OUT/3_table9" > "$OUT/report.log" 2>&1
