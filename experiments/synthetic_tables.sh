#!/usr/bin/env bash
# Synthetic evidence for the papers' ablation tables on one GPU: short schedules, several sweeps at once.
# Trends only, never a reproduction: every report is labelled synthetic.
# Usage: bash experiments/synthetic_tables.sh <out_dir> [minutes per row]
set -u
OUT=${1:-runs}
ROW_MIN=${2:-2}
PY=${PY:-python3}
mkdir -p "$OUT"
COMMON=(trainer=gpu logger=csv callbacks.progress_bar=null data.num_workers=3
        "trainer.max_time=00:00:0${ROW_MIN}:00")
SHORT=(trainer.max_epochs=12 model.optimizer.lr=5e-4 "model.scheduler.milestones=[8,11]")
sweep() {  # sweep <folder> <overrides...>
  local dir=$1; shift
  "$PY" -m flmk.train -m "$@" "${COMMON[@]}" hydra.sweep.dir="$OUT/$dir" > "$OUT/${dir//\//_}.log" 2>&1 \
    || echo "sweep $dir failed (see $OUT/${dir//\//_}.log)"
}

sweep odn_table4 experiment=odn/table4 data=synthetic "${SHORT[@]}" &
sweep aodn_table5/a experiment=aodn/table5 data=synthetic "${SHORT[@]}" ablation=aodn/brnet,aodn/gm_lm,aodn/gm_am,aodn/am_lm,aodn/r8_no_l1,aodn/r32 &
sweep aodn_table5/b experiment=aodn/table5 data=synthetic "${SHORT[@]}" ablation=aodn/r64,aodn/r16_ewa,aodn/r16,aodn/r8_ewa,aodn/all &
sweep ccdn_table6 experiment=ccdn/table6_synthetic data=synthetic "${SHORT[@]}" &
sweep ccdn_table7 experiment=ccdn/table7_synthetic data=synthetic "${SHORT[@]}" &
sweep hm1d_table1 experiment=hm1d/table1_detector data=synthetic data.batch_size=32 trainer.max_epochs=10 \
  ablation=hm1d/l1d_64,hm1d/l1d_256,hm1d/l1d_768,hm1d/l2d_64,hm1d/l2d_128,hm1d/l2d_256 &
sweep hm1d_fig3/a experiment=hm1d/fig3_gamma data=synthetic data.batch_size=32 trainer.max_epochs=8 \
  ablation=hm1d/gamma_0_0,hm1d/gamma_0_1,hm1d/gamma_0_2,hm1d/gamma_0_3,hm1d/gamma_0_4,hm1d/gamma_0_5 &
sweep hm1d_fig3/b experiment=hm1d/fig3_gamma data=synthetic data.batch_size=32 trainer.max_epochs=8 \
  ablation=hm1d/gamma_0_6,hm1d/gamma_0_7,hm1d/gamma_0_8,hm1d/gamma_0_9,hm1d/gamma_1_0 &
sweep srn_table7 experiment=srn/table7 data=synthetic data.batch_size=32 trainer.max_steps=-1 trainer.max_epochs=12 &
sweep srn_table8 experiment=srn/table8 data=synthetic data.batch_size=32 trainer.max_steps=-1 trainer.max_epochs=12 &
sweep hm1d_table2 experiment=hm1d/table2_lambda data=synthetic_video trainer.max_epochs=15 &
wait
for d in odn_table4 aodn_table5 ccdn_table6 ccdn_table7 hm1d_table1 hm1d_fig3 srn_table7 srn_table8 hm1d_table2; do
  "$PY" -m flmk.report "$OUT/$d" > "$OUT/report_$d.log" 2>&1 || echo "report $d failed"
done
