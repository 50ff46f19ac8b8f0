#!/usr/bin/env bash
# The seeds study (README.md beside this file); resumable: run it again after an interruption and it trains only
# what is missing (nnunet-sacl study skips finished runs and resumes stopped ones with --c).
#   bash docs/studies/seeds/run.sh WORKDIR 1        # stage 1: seed 1 (every arm x fold), evaluated
#   bash docs/studies/seeds/run.sh WORKDIR 2        # stage 2: seeds 1 2 (trains seed 2; seed 1 is skipped)
#   bash docs/studies/seeds/run.sh WORKDIR 3        # stage 3: seeds 1 2 3, the registered study
# Each stage evaluates on validation and on the held-out scan; its outputs are copied into
# docs/studies/seeds/outputs/seeds_1..N_{val,test}/ (per_case.csv, comparison.csv, cost.csv, ...).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
W=$(realpath -m "${1:?WORKDIR}"); STAGE=${2:?stage: 1, 2 or 3}; mkdir -p "$W"
export nnUNet_raw=$W/nnUNet_raw nnUNet_preprocessed=$W/nnUNet_preprocessed nnUNet_results=$W/nnUNet_results
export nnUNet_extTrainer="$(python -c 'import nnunet_sacl; print(nnunet_sacl.trainers_folder())'):$HERE/../length/arms"
unset SACL_SEED                       # --seeds sets each run's seed
[ -d "$nnUNet_raw/Dataset990_SACLDemoCT" ] || nnunet-sacl demo-data -d 990
[ -f "$nnUNet_preprocessed/Dataset990_SACLDemoCT/nnUNetPlans.json" ] || nnUNetv2_plan_and_preprocess -d 990 -c 2d -np 2
RAW=$nnUNet_raw/Dataset990_SACLDemoCT
ARMS="nnUNetTrainer_len825 SACLTrainer_joint_len825 SACLTrainer_len825_pre225"
SEEDS=$(seq -s " " 1 "$STAGE"); NAME=seeds_$(echo $SEEDS | tr " " "_")
study() { nnunet-sacl study -d 990 -c 2d -f 0 1 2 --seeds $SEEDS -device cpu -tr $ARMS "$@"; }
keep() { mkdir -p "$HERE/outputs/$1"; cp "$W/$1"/*.{csv,md,png} "$HERE/outputs/$1/" 2>/dev/null || true; }
study -o "$W/${NAME}_val"; keep "${NAME}_val"
study -o "$W/${NAME}_test" --test-images "$RAW/imagesTs" --test-labels "$RAW/labelsTs"; keep "${NAME}_test"
