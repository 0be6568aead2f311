#!/usr/bin/env bash
# Benchmarks of every model on one GPU (run alone on the GPU so timings are clean).
# Usage: bash experiments/gpu_bench.sh <out_dir>; results in <out_dir>/bench_<model>.json, summary in experiments/BENCHMARKS.md
set -u
source "$(dirname "$0")/require_gpu.sh"
require_gpu
OUT=${1:-bench}
PY=${PY:-python3}
mkdir -p "$OUT"
bench() { name=$1; shift; "$PY" -m flmk.bench "$@" hydra.run.dir="$OUT/$name" bench.out="$OUT/bench_$name.json" \
            > "$OUT/$name.log" 2>&1 || { echo "bench $name failed (see $OUT/$name.log)"; failed=$((failed + 1)); }; }
failed=0
bench baseline model=baseline model.pretrained=false bench.compile=true bench.channels_last=true
bench odn model=odn model.pretrained=false
bench aodn model=aodn model.pretrained=false
bench ccdn model=ccdn
for L in 64 256 768; do bench hm1d_L$L model=hm1d model.net.length=$L bench.batch_size=10; done
for L in 64 128 256; do bench fan2d_L$L model=fan2d model.net.length=$L bench.batch_size=10; done
bench srn model=srn
[ "$failed" -eq 0 ] || { echo "$failed benchmark(s) failed" >&2; exit 1; }
