#!/usr/bin/env bash
# The length study (README.md beside this file), stage by stage; resumable: run it again after an interruption and
# it trains only what is missing (nnunet-sacl study skips finished runs and resumes stopped ones with --c).
#   bash docs/studies/length/run.sh WORKDIR 1      # stage 1: the 825-iteration arms (A0, A0', A1, A2, A3, A4)
#   bash docs/studies/length/run.sh WORKDIR 2      # stage 2: the 3,300-iteration arms (B0, B1)
#   bash docs/studies/length/run.sh WORKDIR report # pretraining curves, silhouettes, tables and plots
# Each stage's outputs are copied into docs/studies/length/outputs/ (per_case.csv, comparison.csv, cost.csv, ...).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
W=$(realpath -m "${1:?WORKDIR}"); STAGE=${2:?stage: 1, 2 or report}; mkdir -p "$W"
export nnUNet_raw=$W/nnUNet_raw nnUNet_preprocessed=$W/nnUNet_preprocessed nnUNet_results=$W/nnUNet_results
export nnUNet_extTrainer="$(python -c 'import nnunet_sacl; print(nnunet_sacl.trainers_folder())'):$HERE/arms"
unset SACL_SEED                       # every arm's seed is its own (arms/sacl_length_arms.py)
[ -d "$nnUNet_raw/Dataset990_SACLDemoCT" ] || nnunet-sacl demo-data -d 990
[ -f "$nnUNet_preprocessed/Dataset990_SACLDemoCT/nnUNetPlans.json" ] || nnUNetv2_plan_and_preprocess -d 990 -c 2d -np 2
RAW=$nnUNet_raw/Dataset990_SACLDemoCT
TEST="--test-images $RAW/imagesTs --test-labels $RAW/labelsTs"
study() { nnunet-sacl study -d 990 -c 2d -f 0 1 2 -device cpu "$@"; }
keep() {  # keep(name): the study's outputs (no models) into the repository
  mkdir -p "$HERE/outputs/$1"; cp "$W/$1"/*.{csv,md,png} "$HERE/outputs/$1/" 2>/dev/null || true
}
STAGE1="nnUNetTrainer_len825 nnUNetTrainer_len825_seed2 SACLTrainer_joint_len825 SACLTrainer_len825_pre225
        SACLTrainer_len825_pre900 SACLTrainer_len825_pre3600"
STAGE2="nnUNetTrainer_len3300 SACLTrainer_joint_len3300"
case $STAGE in
  1) study -tr $STAGE1 -o "$W/stage1_val"; keep stage1_val
     study -tr $STAGE1 -o "$W/stage1_test" $TEST; keep stage1_test ;;
  2) study -tr $STAGE2 -o "$W/stage2_val"; keep stage2_val
     study -tr $STAGE2 -o "$W/stage2_test" $TEST; keep stage2_test ;;
  report) python "$HERE/report.py" "$W" "$HERE/outputs" ;;
  *) echo "stage: 1, 2 or report" >&2; exit 2 ;;
esac
