#!/usr/bin/env bash
# DDP inside a Hydra multirun: two ODN Table 4 rows on every visible GPU (and, with a second argument 1,
# the same two rows on one GPU for comparison).
# Usage: bash experiments/ddp_sweep.sh <out_dir> [compare]
set -u
source "$(dirname "$0")/require_gpu.sh"
require_gpu
OUT=${1:-runs}/ddp
COMPARE=${2:-0}
PY=${PY:-python3}
mkdir -p "$OUT"
ARGS=(experiment=odn/table4 ablation=odn/brnet,odn/all data=synthetic model.pretrained=false logger=csv callbacks.progress_bar=null
      trainer.max_epochs=4 model.optimizer.lr=5e-4 "model.scheduler.milestones=[3]" data.num_workers=4)
start=$SECONDS
"$PY" -m flmk.train -m "${ARGS[@]}" trainer=ddp hydra.sweep.dir="$OUT/ddp" > "$OUT/ddp.log" 2>&1
rc=$?
echo "DDP sweep on $(nvidia-smi -L | wc -l) GPUs: exit $rc, wall $((SECONDS - start)) s"
if [ "$COMPARE" = 1 ]; then
start=$SECONDS
CUDA_VISIBLE_DEVICES=0 "$PY" -m flmk.train -m "${ARGS[@]}" trainer=gpu hydra.sweep.dir="$OUT/single" > "$OUT/single.log" 2>&1
echo "1-GPU sweep: exit $?, wall $((SECONDS - start)) s"
fi
grep -hE "Initializing distributed|distributed_backend|All distributed|Starting with" "$OUT/ddp.log" | sort | uniq -c
for d in "$OUT"/ddp "$OUT"/single; do [ -d "$d" ] && { "$PY" -m flmk.report "$d" > "$d/report.log" 2>&1 || rc=1; }; done
exit $rc
