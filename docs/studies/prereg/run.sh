#!/usr/bin/env bash
# The pre-registered study of where SACL pays off (docs/studies/prereg/README.md; its arms in arms/), every stage in order, with
# the pre-registered choices of S and B read from the stage-1/2 comparison tables. Resumable: run it again after
# an interruption and it trains only what is missing.
#   bash docs/studies/prereg/run.sh WORKDIR
#   bash docs/studies/prereg/run.sh WORKDIR --stage3 B    # stage 3 only (K = 1, 2), with B as chosen earlier
# (stage 3 in a later sitting on a fresh machine: the K = all models are not needed there, see the amendments)
set -euo pipefail
W=$(realpath -m "${1:-sacl_study}"); mkdir -p "$W"
STAGE3_B=""; [ "${2:-}" = "--stage3" ] && STAGE3_B="${3:?--stage3 needs the arm B}"
export nnUNet_raw=$W/nnUNet_raw nnUNet_preprocessed=$W/nnUNet_preprocessed nnUNet_results=$W/nnUNet_results
export nnUNet_extTrainer="$(python -c 'import nnunet_sacl; print(nnunet_sacl.trainers_folder())'):$(cd "$(dirname "$0")" && pwd)/arms"
[ -d "$nnUNet_raw/Dataset990_SACLDemoCT" ] || nnunet-sacl demo-data -d 990
[ -f "$nnUNet_preprocessed/Dataset990_SACLDemoCT/nnUNetPlans.json" ] || nnUNetv2_plan_and_preprocess -d 990 -c 2d -np 2
P=$W/prereg
ALL="nnUNetTrainer_prereg SACLTrainer_prereg SACLTrainer_prereg_eqseg SACLTrainer_prereg_eqseg_ftconvention
     SACLTrainer_prereg_eqseg_splitlr SACLTrainer_joint_prereg SACLTrainer_joint_prereg_w05"
TEST="--test-images $nnUNet_raw/Dataset990_SACLDemoCT/imagesTs --test-labels $nnUNet_raw/Dataset990_SACLDemoCT/labelsTs"
study() { nnunet-sacl study -d 990 -c 2d -f 0 1 2 -device cpu "$@"; }

best() {  # best(table, arms...): the arm with the largest validation case-mean difference; ties to the first
  python - "$@" <<'PY'
import csv, sys
table, arms = sys.argv[1], sys.argv[2:]
diff = {r["trainer"]: float(r["mean_diff"]) for r in csv.DictReader(open(table)) if r["organ"] == "mean"}
print(max(arms, key=lambda a: (diff[a], -arms.index(a))))
PY
}

stage3() {  # stage3(B, train cases...): baseline, B, joint 0.1
  local B=$1; shift
  study -tr nnUNetTrainer_prereg "$B" SACLTrainer_joint_prereg --train-cases "$@" -o "$P/k_val"
  study -tr nnUNetTrainer_prereg "$B" SACLTrainer_joint_prereg --train-cases "$@" -o "$P/k_test" $TEST
}
if [ -n "$STAGE3_B" ]; then stage3 "$STAGE3_B" 1 2; exit 0; fi

# stage 1 (K = all): arms 1-5, 7, 8
study -tr $ALL --train-cases all -o "$P/stage1"
S=$(best "$P/stage1/Kall/comparison.csv" SACLTrainer_prereg_eqseg SACLTrainer_prereg_eqseg_ftconvention \
         SACLTrainer_prereg_eqseg_splitlr)
ARM6=${S/_eqseg/}                      # S at equal total iterations (S = default: arm 6 is arm 2)
echo "S = $S, arm 6 = $ARM6"
# stage 2 (K = all): arm 6, then B of arms 2-6 and arm 9 (B at temperature 0.1)
EXTRA=""; [ "$ARM6" != SACLTrainer_prereg ] && EXTRA=$ARM6
study -tr $ALL $EXTRA --train-cases all -o "$P/stage2"
B=$(best "$P/stage2/Kall/comparison.csv" SACLTrainer_prereg SACLTrainer_prereg_eqseg \
         SACLTrainer_prereg_eqseg_ftconvention SACLTrainer_prereg_eqseg_splitlr $EXTRA)
echo "B = $B, arm 9 = ${B}_t01" | tee "$P/choices.txt"; echo "S = $S, arm 6 = $ARM6" >> "$P/choices.txt"
study -tr $ALL $EXTRA "${B}_t01" --train-cases all -o "$P/all_val"
study -tr $ALL $EXTRA "${B}_t01" --train-cases all -o "$P/all_test" $TEST
# stage 3 (K = 1, 2, all): baseline, B, joint 0.1
stage3 "$B" 1 2 all
