#!/usr/bin/env bash
# The pre-registered transfer study (docs/studies/transfer/README.md; its arms in arms/): two labelled pretraining sources from the
# TotalSegmentator sdist (a scan the demo never trains or evaluates on) merged, SACL and supervised pretraining on
# the merge, then fine-tuning on the demo dataset with K = 1, 2, 5 labelled crops against training from scratch.
# Resumable: run it again after an interruption and it trains only what is missing.
#   bash docs/studies/transfer/run.sh WORKDIR
#   bash docs/studies/transfer/run.sh WORKDIR --until-pretraining   # steps 1-3 only (data, pretraining, plans)
set -euo pipefail
W=$(realpath -m "${1:-transfer_study}"); mkdir -p "$W"
export nnUNet_raw=$W/nnUNet_raw nnUNet_preprocessed=$W/nnUNet_preprocessed nnUNet_results=$W/nnUNet_results
export nnUNet_extTrainer="$(python -c 'import nnunet_sacl; print(nnunet_sacl.trainers_folder())'):$(cd "$(dirname "$0")" && pwd)/arms"
TARGET=Dataset990_SACLDemoCT MERGE=Dataset995_TSVessels P=nnUNetPlans_fromTSVessels

# 1. data: the demo dataset (target), the two sources, their merge
[ -d "$nnUNet_raw/$TARGET" ] || nnunet-sacl demo-data -d 990
[ -d "$nnUNet_raw/Dataset993_TSAortaReport" ] || nnunet-sacl demo-data -d 993 --pretraining-source aorta
[ -d "$nnUNet_raw/Dataset994_TSHeartReport" ] || nnunet-sacl demo-data -d 994 --pretraining-source heart
[ -d "$nnUNet_raw/$MERGE" ] || nnunet-sacl merge-datasets -d 993 994 -o 995 --name TSVessels --keep-unknown

# 2. pretraining on the merge (fold all), both at 6 epochs of 75 iterations, batch 5
[ -f "$nnUNet_preprocessed/$MERGE/nnUNetPlans.json" ] || nnUNetv2_plan_and_preprocess -d 995 -c 2d -np 2
R=$nnUNet_results/$MERGE
SACL_W=$R/SACLPretrainer_transfer__nnUNetPlans__2d/fold_all/checkpoint_sacl_encoder.pth
SUP_W=$R/nnUNetTrainer_transfer__nnUNetPlans__2d/fold_all/checkpoint_final.pth
[ -f "$SACL_W" ] || nnUNetv2_train 995 2d all -tr SACLPretrainer_transfer -device cpu
[ -f "$SUP_W" ] || nnUNetv2_train 995 2d all -tr nnUNetTrainer_transfer -device cpu

# 3. the target gets the merge's network: plans moved under a new name, preprocessed with them
[ -f "$nnUNet_preprocessed/$TARGET/dataset.json" ] || nnUNetv2_plan_and_preprocess -d 990 --no_pp -np 2
[ -f "$nnUNet_preprocessed/$TARGET/$P.json" ] || \
    nnUNetv2_move_plans_between_datasets -s 995 -t 990 -sp nnUNetPlans -tp $P
[ -d "$nnUNet_preprocessed/$TARGET/${P}_2d" ] || nnUNetv2_preprocess -d 990 -plans_name $P -c 2d -np 2
nnunet-sacl check-weights "$SACL_W" -d 990 -c 2d -p $P
nnunet-sacl check-weights "$SUP_W" -d 990 -c 2d -p $P
[ "${2:-}" = "--until-pretraining" ] && exit 0

# 4. fine-tuning, every arm at 6 epochs of 75 iterations on the moved plans: validation crops, then held-out scan
TEST="--test-images $nnUNet_raw/$TARGET/imagesTs --test-labels $nnUNet_raw/$TARGET/labelsTs"
study() {
  nnunet-sacl study -d 990 -c 2d -p $P -f 0 1 2 -device cpu --train-cases 1 2 5 \
      -tr nnUNetTrainer_transfer nnUNetTrainer_transfer@sacl nnUNetTrainer_transfer@supervised \
      --weights sacl="$SACL_W" supervised="$SUP_W" "$@"
}
study -o "$W/transfer/val"
study -o "$W/transfer/test" $TEST
