#!/usr/bin/env bash
# Synthetic evidence for the papers' ablation tables: short schedules, many sweeps at once, spread over the
# visible GPUs. Trends only, never a reproduction: every report is labelled synthetic.
# Usage: bash experiments/synthetic_tables.sh <out_dir> [seconds of training per row] [regression|heatmap|all]
#   regression: ODN, AODN, SRN tables; heatmap: HM1D and CCDN tables (hourglass models, run at 128 px / 2 stacks
#   for HM1D, lr 1e-3, so that a short schedule gets past the flat-heatmap start).
set -u
OUT=${1:-runs}
ROW_S=${2:-60}
WHICH=${3:-all}
PY=${PY:-python3}
NGPU=$(nvidia-smi -L | wc -l)
mkdir -p "$OUT"
COMMON=(trainer=gpu logger=csv callbacks.progress_bar=null data.num_workers=2
        "trainer.max_time='00:00:00:${ROW_S}'" trainer.enable_model_summary=false)
SHORT=(trainer.max_epochs=12 model.optimizer.lr=5e-4 "model.scheduler.milestones=[8,11]")
n=0
sweep() {  # sweep <folder> <overrides...>: one multirun on the next GPU, in the background
  local dir=$1; shift
  mkdir -p "$OUT/$dir"
  CUDA_VISIBLE_DEVICES=$((n % NGPU)) "$PY" -m flmk.train -m "$@" "${COMMON[@]}" hydra.sweep.dir="$OUT/$dir" \
    > "$OUT/$dir/sweep.log" 2>&1 || echo "sweep $dir failed (see $OUT/$dir/sweep.log)" &
  n=$((n + 1))
}
STILLS=(data=synthetic)
HM1D=(data=synthetic data.batch_size=32 model.crop_size=128 model.net.num_stacks=2 model.optimizer.lr=1e-3)
regression() {
sweep odn_table4/a experiment=odn/table4 "${STILLS[@]}" "${SHORT[@]}" ablation=odn/brnet,odn/gm_dm,odn/dm_lm
sweep odn_table4/b experiment=odn/table4 "${STILLS[@]}" "${SHORT[@]}" ablation=odn/gm_lm,odn/all_no_l1,odn/all
sweep aodn_table5/a experiment=aodn/table5 "${STILLS[@]}" "${SHORT[@]}" ablation=aodn/brnet,aodn/gm_lm,aodn/gm_am,aodn/am_lm
sweep aodn_table5/b experiment=aodn/table5 "${STILLS[@]}" "${SHORT[@]}" ablation=aodn/r8_no_l1,aodn/r32,aodn/r64,aodn/r16_ewa
sweep aodn_table5/c experiment=aodn/table5 "${STILLS[@]}" "${SHORT[@]}" ablation=aodn/r16,aodn/r8_ewa,aodn/all
sweep srn_table7/a experiment=srn/table7 "${STILLS[@]}" data.batch_size=32 trainer.max_steps=-1 trainer.max_epochs=12 \
  ablation=srn/wo_g,srn/wo_f,srn/wo_d
sweep srn_table7/b experiment=srn/table7 "${STILLS[@]}" data.batch_size=32 trainer.max_steps=-1 trainer.max_epochs=12 \
  ablation=srn/wo_mu,srn/full
sweep srn_table8 experiment=srn/table8 "${STILLS[@]}" data.batch_size=32 trainer.max_steps=-1 trainer.max_epochs=12
}
heatmap() {
sweep ccdn_table6/a experiment=ccdn/table6_synthetic "${STILLS[@]}" "${SHORT[@]}" \
  ablation=ccdn/t6_g010_010_010,ccdn/t6_g010_010_025,ccdn/t6_g025_010_025
sweep ccdn_table6/b experiment=ccdn/table6_synthetic "${STILLS[@]}" "${SHORT[@]}" ablation=ccdn/t6_g025_010_050,ccdn/t6_g025_010_100
sweep ccdn_table7 experiment=ccdn/table7_synthetic "${STILLS[@]}" "${SHORT[@]}"
# Table 1's rows pick their model (hm1d or fan2d), so net keys are forced with ++ (they exist only once a row is applied)
HM1D_T1=(data=synthetic data.batch_size=32 ++model.crop_size=128 ++model.net.num_stacks=2 ++model.optimizer.lr=1e-3)
sweep hm1d_table1/a experiment=hm1d/table1_detector "${HM1D_T1[@]}" trainer.max_epochs=20 ablation=hm1d/l1d_64,hm1d/l1d_256,hm1d/l1d_768
sweep hm1d_table1/b experiment=hm1d/table1_detector "${HM1D_T1[@]}" trainer.max_epochs=20 ablation=hm1d/l2d_64,hm1d/l2d_128,hm1d/l2d_256
sweep hm1d_fig3/a experiment=hm1d/fig3_gamma "${HM1D[@]}" trainer.max_epochs=20 ablation=hm1d/gamma_0_0,hm1d/gamma_0_1,hm1d/gamma_0_2
sweep hm1d_fig3/b experiment=hm1d/fig3_gamma "${HM1D[@]}" trainer.max_epochs=20 ablation=hm1d/gamma_0_3,hm1d/gamma_0_4,hm1d/gamma_0_5
sweep hm1d_fig3/c experiment=hm1d/fig3_gamma "${HM1D[@]}" trainer.max_epochs=20 ablation=hm1d/gamma_0_6,hm1d/gamma_0_7,hm1d/gamma_0_8
sweep hm1d_fig3/d experiment=hm1d/fig3_gamma "${HM1D[@]}" trainer.max_epochs=20 ablation=hm1d/gamma_0_9,hm1d/gamma_1_0
sweep hm1d_table2 experiment=hm1d/table2_lambda data=synthetic_video model.crop_size=128 model.net.num_stacks=2 \
  model.optimizer.lr=1e-3 trainer.max_epochs=40
}
case $WHICH in regression) regression ;; heatmap) heatmap ;; *) regression; heatmap ;; esac
wait
for d in "$OUT"/*/; do
  "$PY" -m flmk.report "$d" > "$d/report.log" 2>&1 || echo "report $d failed"
done
