#!/usr/bin/env bash
# DDP inside a Hydra multirun: two ODN Table 4 rows on every visible GPU, then the same two rows on one GPU.
# Usage: bash experiments/ddp_sweep.sh <out_dir>
set -u
OUT=${1:-runs}/ddp
PY=${PY:-python3}
mkdir -p "$OUT"
ARGS=(experiment=odn/table4 ablation=odn/brnet,odn/all data=synthetic logger=csv callbacks.progress_bar=null
      trainer.max_epochs=6 model.optimizer.lr=5e-4 "model.scheduler.milestones=[4,5]" data.num_workers=4)
start=$SECONDS
"$PY" -m flmk.train -m "${ARGS[@]}" trainer=ddp hydra.sweep.dir="$OUT/ddp" > "$OUT/ddp.log" 2>&1
echo "DDP sweep on $(nvidia-smi -L | wc -l) GPUs: exit $?, wall $((SECONDS - start)) s"
start=$SECONDS
CUDA_VISIBLE_DEVICES=0 "$PY" -m flmk.train -m "${ARGS[@]}" trainer=gpu hydra.sweep.dir="$OUT/single" > "$OUT/single.log" 2>&1
echo "1-GPU sweep: exit $?, wall $((SECONDS - start)) s"
grep -hE "Initializing distributed|distributed_backend|All distributed|Starting with" "$OUT/ddp.log" | sort | uniq -c
for d in ddp single; do "$PY" -m flmk.report "$OUT/$d" > "$OUT/$d/report.log" 2>&1; done
