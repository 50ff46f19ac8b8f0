#!/bin/bash
# The FLARE22 recipe (docs/flare22.md) at CPU scale on the real-CT demo data: a few training crops as the labelled
# set, the other crops with their labels withheld as the unlabelled pool, the held-out scan as the test (never
# pretrained on). The demo trainers' settings at fewer iterations (pseudo_label_recipe/recipe_trainers.py). A
# demonstration of the path, not evidence.
#   bash benchmarks/pseudo_label_recipe_demo.sh WORK_FOLDER [LABELLED_CROPS]
# Each command is printed with its wall time (seconds) in WORK_FOLDER/steps.tsv; run again, it skips the steps done.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=$(realpath -m "${1:?give a work folder}")
LABELLED=${2:-4}
mkdir -p "$WORK"
cd "$WORK"
export nnUNet_raw="$WORK/nnUNet_raw" nnUNet_preprocessed="$WORK/nnUNet_preprocessed" nnUNet_results="$WORK/nnUNet_results"
export nnUNet_extTrainer="$(python -c 'import nnunet_sacl; print(nnunet_sacl.trainers_folder())'):$HERE/pseudo_label_recipe"
export nnUNet_def_n_proc=${nnUNet_def_n_proc:-1} nnUNet_n_proc_DA=${nnUNet_n_proc_DA:-2} nnUNet_compile=f
touch steps.tsv
step() {   # step NAME COMMAND...: run it, print and record its wall time; a step recorded already is skipped
    local name=$1; shift
    if grep -q "^$name	" steps.tsv; then echo "$name: done already (steps.tsv)"; return; fi
    echo "\$ $*"
    local t0=$(date +%s.%N)
    "$@"
    local t1=$(date +%s.%N)
    printf '%s\t%.0f\t%s\n' "$name" "$(echo "$t1 - $t0" | bc)" "$*" | tee -a steps.tsv
}

step demo-data nnunet-sacl demo-data -d 992
DEMO=$nnUNet_raw/Dataset992_SACLDemoCT
# the labelled set (dataset 60): the first LABELLED crops with their labels, and the held-out scan as imagesTs;
# the pool (unlabelled/): the other crops' images only
L=$nnUNet_raw/Dataset060_DemoLabelled
mkdir -p "$L/imagesTr" "$L/labelsTr" "$L/imagesTs" "$L/labelsTs" unlabelled
CASES=$(ls "$DEMO/labelsTr" | sed 's/.nii.gz$//' | sort)
i=0
for c in $CASES; do
    if [ $i -lt "$LABELLED" ]; then
        cp "$DEMO/imagesTr/${c}_0000.nii.gz" "$L/imagesTr/"; cp "$DEMO/labelsTr/$c.nii.gz" "$L/labelsTr/"
    else
        cp "$DEMO/imagesTr/${c}_0000.nii.gz" unlabelled/
    fi
    i=$((i + 1))
done
cp "$DEMO"/imagesTs/* "$L/imagesTs/"; cp "$DEMO"/labelsTs/* "$L/labelsTs/"
python - "$DEMO/dataset.json" "$L/dataset.json" "$LABELLED" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1])); d.update(numTraining=int(sys.argv[3]), name="DemoLabelled")
json.dump(d, open(sys.argv[2], "w"), indent=2)
EOF
echo "labelled: $(ls "$L/labelsTr" | wc -l) crops; pool: $(ls unlabelled | wc -l) crops; test: $(ls "$L/imagesTs")"

step plan-labelled nnUNetv2_plan_and_preprocess -d 60 -c 2d -npfp 1 -np 1
step stock-model nnUNetv2_train 60 2d all -tr nnUNetTrainer_recipe -device cpu
step pseudo-label nnunet-sacl pseudo-label -i unlabelled -d 60 -c 2d -tr nnUNetTrainer_recipe -f all --to 61 -device cpu
step merge nnunet-sacl merge-datasets -d 60 61 -o 62 --name DemoPool
step plan-merge nnUNetv2_plan_and_preprocess -d 62 -c 2d -npfp 1 -np 1
step pretrain nnUNetv2_train 62 2d all -tr SACLPretrainer_recipe -device cpu
ENC=$nnUNet_results/Dataset062_DemoPool/SACLPretrainer_recipe__nnUNetPlans__2d/fold_all/checkpoint_sacl_encoder.pth
step prepare-finetune nnunet-sacl prepare-finetune "$ENC" -d 60 -c 2d --fold all -np 1 | tee -a prepare.txt   # -a: a rerun that skips it keeps the line
LINE=$(grep -m1 '^ *nnUNetv2_train ' prepare.txt)      # the printed line: its plans and weights file
WEIGHTS=$(echo "$LINE" | sed -E 's/.* -pretrained_weights ([^ ]+).*/\1/')
PLANS=$(echo "$LINE" | sed -E 's/.* -p ([^ ]+).*/\1/')
step fine-tune nnUNetv2_train 60 2d all -tr nnUNetTrainer_recipe -p "$PLANS" -pretrained_weights "$WEIGHTS" -device cpu
step predict-stock nnUNetv2_predict -i "$L/imagesTs" -o pred_stock -d 60 -c 2d -f all -tr nnUNetTrainer_recipe -device cpu -npp 1 -nps 1
step predict-pool nnUNetv2_predict -i "$L/imagesTs" -o pred_pool -d 60 -c 2d -f all -tr nnUNetTrainer_recipe -p "$PLANS" -device cpu -npp 1 -nps 1
step export nnunet-sacl export-submission -i pred_pool -o submission --challenge flare22 --images "$L/imagesTs"
step evaluate-stock nnunet-sacl evaluate -p pred_stock -r "$L/labelsTs" -d "$L/dataset.json" -o dice_stock.csv
step evaluate-pool nnunet-sacl evaluate -p pred_pool -r "$L/labelsTs" -d "$L/dataset.json" -o dice_pool.csv
ls submission
