#!/usr/bin/env bash
# Issue 18 on one GPU: batch-1 / batch-N latency of every model of the issue's table -- the bare network eager and
# under torch.compile(mode="reduce-overhead") (CUDA graphs), and flmk's inference path (Landmarker's TorchNet:
# crops -> network + decoder -> original pixels) eager and compiled -- and the training throughput of the hourglass
# models (CCDN, HM1D, FAN2D) at their papers' batch sizes with and without CUDA graphs, fp32, in-memory batches.
# Usage: bash experiments/latency_bench.sh <out_dir>     (run alone on the GPU so timings are clean)
# Writes <out_dir>/<run>.json (flmk.bench's bench.json: "runs" and "latency") and <out_dir>/<run>.log;
# markdown rows for experiments/BENCHMARKS.md: python experiments/latency_table.py <out_dir>
# Compiling dominates the wall time, so every run is first started in parallel with one timed step
# (<out_dir>/warm/): that fills inductor's on-disk caches, and the timed runs, one after another, then load
# their graphs from them (WARM=0 skips that pass when the caches are already filled).
# MODELS="ccdn hm1d_L768" runs a subset; STEPS / WARMUP / SYNTH_N / PY override the defaults below.
set -u
source "$(dirname "$0")/require_gpu.sh"
require_gpu
OUT=${1:?usage: bash experiments/latency_bench.sh <out_dir>}
PY=${PY:-python3}
STEPS=${STEPS:-50}
WARMUP=${WARMUP:-5}
SYNTH_N=${SYNTH_N:-200}  # synthetic faces (generated on first use, once, under a lock; the bench times one batch)
mkdir -p "$OUT/warm"
COMMON=(bench.precisions=[fp32] bench.data_path=false "data.sources.synthetic.n=$SYNTH_N" data.num_workers=0
        callbacks.progress_bar=null)
HOURGLASS=(bench.compile=true bench.compile_mode=reduce-overhead)
RUNS=(
  "baseline model=baseline model.pretrained=false"
  "aodn model=aodn model.pretrained=false"
  "srn model=srn"
  "ccdn model=ccdn bench.batch_size=32 ${HOURGLASS[*]}"
  "hm1d_L768 model=hm1d model.net.length=768 bench.batch_size=10 ${HOURGLASS[*]}"
  "fan2d model=fan2d bench.batch_size=10 ${HOURGLASS[*]}"
)
if [ -n "${MODELS:-}" ]; then
  keep=()
  for run in "${RUNS[@]}"; do [[ " $MODELS " == *" ${run%% *} "* ]] && keep+=("$run"); done
  [ "${#keep[@]}" -gt 0 ] || { echo "MODELS=$MODELS names none of: $(printf '%s ' "${RUNS[@]%% *}")" >&2; exit 2; }
  RUNS=("${keep[@]}")
fi
bench() {  # <folder> <steps> <name> <overrides...>
  dir=$1 steps=$2 name=$3; shift 3
  "$PY" -m flmk.bench "$@" "${COMMON[@]}" bench.steps="$steps" bench.warmup="$WARMUP" \
    hydra.run.dir="$dir/$name" bench.out="$dir/$name.json" > "$dir/$name.log" 2>&1
}
start=$(date +%s)
if [ "${WARM:-1}" != 0 ]; then
  for run in "${RUNS[@]}"; do
    read -r -a args <<< "$run"
    bench "$OUT/warm" 1 "${args[@]}" &
  done
  wait
  echo "compiled (caches filled) in $(( $(date +%s) - start )) s"
fi
failed=0
for run in "${RUNS[@]}"; do
  read -r -a args <<< "$run"
  t0=$(date +%s)
  bench "$OUT" "$STEPS" "${args[@]}" || { echo "bench ${args[0]} failed (see $OUT/${args[0]}.log)" >&2; failed=$((failed + 1)); }
  echo "${args[0]}: $(( $(date +%s) - t0 )) s"
done
echo "total $(( $(date +%s) - start )) s"
"$PY" "$(dirname "$0")/latency_table.py" "$OUT" || failed=$((failed + 1))
[ "$failed" -eq 0 ] || { echo "$failed benchmark(s) failed" >&2; exit 1; }
