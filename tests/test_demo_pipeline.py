"""The README demo on the real-CT dataset, on CPU, at the demo trainers' smoke length: nnunet-sacl demo runs
nnU-Net's plan/preprocess, then a one-fold study (nnU-Net trains a stock baseline and SACL and predicts the held-out
scan with each, the study evaluates and reports) and prints their Dice side by side with the paired difference and
the silhouettes; the Dice equal nnU-Net's own evaluation of the same predictions; a second call reuses everything."""
import csv
import json
import math
import re

import numpy as np
import pytest
import SimpleITK as sitk
from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerNoMirroring import \
    nnUNetTrainerNoMirroring

from nnunet_sacl.nnunet import short_runs
from tests.helpers import TEST_TRAINERS, in_process, nnunet_bin, run
from tests.trainers import torchrun_test_trainers

# tests that train through nnU-Net's commands or torchrun are marked slow one by one; the rest run in the fast tier

ARMS = ["nnUNetTrainer_demo_smoke", "SACLTrainer_demo_smoke"]
NUMBER = r"(nan|-?\d\.\d{3})"
SIGNED = r"(nan|[+-]\d\.\d{3})"


@pytest.mark.parametrize("arms", [("nnUNetTrainer_demo", "SACLTrainer_demo", "SACLTrainer_joint_demo"), ARMS])
def test_demo_arms_train_equal_total_iterations_without_mirroring(arms):
    baseline, sacl, *joint = (getattr(short_runs, a, None) or getattr(torchrun_test_trainers, a) for a in arms)
    assert baseline.run_epochs * baseline.run_iterations == \
        (sacl.pretrain_epochs + sacl.run_epochs) * sacl.run_iterations
    assert sacl.pretrain_epochs > 0 and baseline.run_batch_size == sacl.run_batch_size
    for j in joint:
        assert not hasattr(j, "pretrain_epochs")          # one phase
        assert (j.run_epochs, j.run_iterations, j.run_batch_size) == \
            (baseline.run_epochs, baseline.run_iterations, baseline.run_batch_size)
    assert all(issubclass(a, nnUNetTrainerNoMirroring) for a in (baseline, sacl, sacl.pretrainer_class, *joint))


def printed_table(stdout: str) -> dict:
    """organ -> (values of both arms, difference) from the demo's side-by-side table; None for an organ marked
    absent (not scored)."""
    block = stdout[stdout.index("Dice on the held-out"):stdout.index("  baseline: ")]
    assert block.splitlines()[1].split() == ["organ", *ARMS, ARMS[1], "-", "baseline"]
    rows = re.findall(rf"^  (\S.*?)\s+(?:{NUMBER}\s+{NUMBER}\s+{SIGNED}|-\s+-\s+-)$", block, re.M)
    return {name.replace(" (absent)", ""): (float(a), float(b), float(d)) if a else None
            for name, a, b, d in rows}


@pytest.mark.slow
def test_demo_compares_baseline_and_sacl_on_real_ct(nnunet_env, sdist, tmp_path):
    # the demo adds the package's trainers itself; the tests' (the _demo_smoke arms) are in the user's folder
    env = dict(nnunet_env, nnUNet_extTrainer=str(TEST_TRAINERS))
    env["nnUNet_n_proc_DA"] = "0"
    cmd = [nnunet_bin("nnunet-sacl"), "demo", "--workdir", str(tmp_path), "-d", "995", "--device", "cpu",
           "-tr", *ARMS, "--sdist", str(sdist)]
    first = run(cmd, env, timeout=900).stdout
    table = check_first_run(tmp_path, first)

    logs = sorted(tmp_path.rglob("training_log_*.txt"))
    second = in_process(cmd[1:], env)      # it starts no nnU-Net command: in this process
    check_second_run(tmp_path, first, second, logs, table)


def nnunet_evaluation(raw, predictions, labels: dict) -> dict:
    """nnU-Net's own evaluation of a prediction folder against labelsTs: its summary.json's per-label means."""
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    result = compute_metrics_on_folder(str(raw / "labelsTs"), str(predictions), None, SimpleITKIO(), ".nii.gz",
                                       list(labels.values()), num_processes=1)
    return {str(k): v for k, v in result["mean"].items()}


def check_first_run(workdir, first: str) -> dict:
    """Both arms' Dice (the study's evaluator), the differences and the means as printed equal nnU-Net's own
    evaluation of the same predictions; the study's report; silhouettes."""
    raw = workdir / "nnUNet_raw" / "Dataset995_SACLDemoCT"
    labels = {k: v for k, v in json.loads((raw / "dataset.json").read_text())["labels"].items() if k != "background"}
    in_test_label = set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(raw / "labelsTs" /
                                                                               "sacldemoct_100.nii.gz")))))
    present = {o for o, v in labels.items() if v in in_test_label}
    assert {"liver", "spleen"} <= present

    table = printed_table(first)
    assert list(table) == list(labels) + ["mean (organs present)"]
    summaries = {a: nnunet_evaluation(raw, workdir / "study" / "predictions" / a / "fold_0", labels) for a in ARMS}
    for organ, label in labels.items():
        dice = [summaries[a][str(label)]["Dice"] for a in ARMS]
        if organ in present:  # an organ in the label has a Dice, whatever was predicted
            assert all(math.isfinite(d) for d in dice), (organ, dice)
            assert all(abs(shown - d) < 6e-4 for shown, d in zip(table[organ][:2], dice))
            assert abs(table[organ][2] - (dice[1] - dice[0])) < 6e-4
        else:                 # absent from the label: not scored, shown alike whatever was predicted
            assert table[organ] is None and f"{organ} (absent)" in first
    means = [np.mean([summaries[a][str(labels[o])]["Dice"] for o in present]) for a in ARMS]
    assert abs(table["mean (organs present)"][0] - means[0]) < 6e-4
    assert abs(table["mean (organs present)"][1] - means[1]) < 6e-4
    report = (workdir / "study" / "report.md").read_text()   # the same mean; one case: no test, no pairs plot
    for arm, mean in zip(ARMS, means):
        row = next(line for line in report.splitlines()
                   if line.startswith(f"| {arm} |") and line.count("|") == len(labels) + 3)
        assert abs(float(row.split("|")[-2]) - mean) < 6e-5, row
    assert "n = 1: no test" in report and "no CI" in report and "no case_mean_pairs.png" in report
    assert not (workdir / "study" / "case_mean_pairs.png").exists()

    diff = table["mean (organs present)"][2]    # one run per arm: the seed caveat, in numbers
    caveat = re.search(rf"SACLTrainer_demo_smoke - baseline: ([+-]\d\.\d{{3}}) mean Dice, one run of each: not called a "
                       rf"difference\. Another seed of stock nnU-Net alone moved this scan's mean Dice by up to 0\.056 "
                       rf"per fold here, and this difference is (below|not below) that", first)
    assert caveat and abs(float(caveat.group(1)) - diff) < 6e-4, first
    assert caveat.group(2) == ("below" if abs(diff) < 0.056 else "not below")   # docs/studies/seeds
    assert "Dice on the held-out scan" in first and (workdir / "study" / "report.md").is_file()
    assert {r["trainer"] for r in csv.DictReader(open(workdir / "study" / "per_case.csv"))} == set(ARMS)
    before = float(re.search(rf"before pretraining\s+{NUMBER}", first).group(1))
    after = float(re.search(rf"after pretraining\s+{NUMBER}", first).group(1))
    assert after > before, (before, after)
    model = workdir / "nnUNet_results" / raw.name / "SACLTrainer_demo_smoke__nnUNetPlans__2d" / "fold_0"
    assert (model / "embeddings_tsne.png").stat().st_size > 10_000
    assert "SACL pretraining done" in "".join(p.read_text() for p in model.glob("training_log_*.txt"))
    assert re.search(r"^  total\s+\d+ min \d+\.\d s$", first, re.M)
    return table


def check_second_run(workdir, first: str, second: str, logs_before: list, table: dict):
    """Nothing trained again (no new training log), the same table printed."""
    assert second.count("finished, skipped") == 2 and "nnUNetv2_train" not in second
    assert second.count("reusing the test set predictions") == 2 and "nnUNetv2_predict" not in second
    assert "Reusing the silhouettes of SACLTrainer_demo_smoke's encoder" in second    # not computed again
    for line in ("before pretraining", "after pretraining"):
        assert re.search(rf"{line}\s+{NUMBER}", second).group(1) == re.search(rf"{line}\s+{NUMBER}", first).group(1)
    assert sorted(workdir.rglob("training_log_*.txt")) == logs_before
    again = printed_table(second)
    assert again == table      # the same values, None for the same absent organs (no NaN is printed)


def test_the_caveats_seed_spread_is_the_seeds_studys_widest_fold():
    """demo.HELD_OUT_SEED_SPREAD against the seeds study's committed per-case results: the largest distance between
    two seeds of stock nnU-Net within one fold, in the held-out scan's mean Dice over the organs its label holds."""
    from collections import defaultdict
    from pathlib import Path
    from nnunet_sacl.demo import HELD_OUT_SEED_SPREAD
    path = Path(__file__).parent.parent / "docs/studies/seeds/outputs/seeds_1_2_3_test/per_case.csv"
    values = defaultdict(list)
    for r in csv.DictReader(open(path)):
        if r["trainer"] == "nnUNetTrainer_len825" and int(r["reference_voxels"]) > 0:
            values[r["fold"], r["seed"]].append(float(r["dice"]))
    by_fold = defaultdict(list)
    for (fold, _), v in values.items():
        by_fold[fold].append(np.mean(v))
    assert len(by_fold) == 3 and all(len(v) == 3 for v in by_fold.values())
    assert HELD_OUT_SEED_SPREAD == pytest.approx(max(max(v) - min(v) for v in by_fold.values()), abs=5e-4)
