"""``nnunet-sacl study`` with nnU-Net's real commands: two smoke trainers x two folds of README's dataset (README's
own SACL run reused, one run killed beforehand and resumed by the study), outputs checked against scipy and the splits, a second call that
trains nothing; refusals before training; printed and sbatch commands parsed back by nnU-Net's own argparse."""
import csv
import glob
import json
import math
from os.path import join
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from nnunet_sacl.cli import main
from nnunet_sacl.analysis.stats import MIN_PAIRS, bootstrap_ci
from tests.helpers import DATASET_NAME, nnunet_bin, paired, parse_with_nnunet, run
from tests.helpers import D, has_epoch_line, in_process, kill_when, readme_model

# tests that train through nnU-Net's commands or torchrun are marked slow one by one; the rest run in the fast tier

CONFIG = "3d_fullres"
BASELINE, SACL = "nnUNetTrainer_smoke", "SACLTrainer_smoke"


def run_folder(results, trainer, fold):
    return Path(results) / DATASET_NAME / f"{trainer}__nnUNetPlans__{CONFIG}" / f"fold_{fold}"


def logs_of(folder):
    return sorted(glob.glob(str(Path(folder) / "training_log_*.txt")))


def files_and_mtimes(root):
    return {str(p): p.stat().st_mtime_ns for p in Path(root).rglob("*") if p.is_file()}


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def study(readme_run, tmp_path_factory):
    """In README's folders (conftest's readme_run): its SACLTrainer_smoke fold 0, trained by hand with
    nnUNetv2_train, is reused; a stopped run (killed after its first epoch) is resumed; then the study once more."""
    readme_model(readme_run)                                # README's block ran
    root = tmp_path_factory.mktemp("study")
    env = dict(readme_run["env"], nnUNet_n_proc_DA="0")
    stopped = run_folder(env["nnUNet_results"], BASELINE, 0)
    kill_when([nnunet_bin("nnUNetv2_train"), D, CONFIG, "0", "-tr", BASELINE, "-device", "cpu"], env,
              lambda: any(has_epoch_line(open(f).read(), 1) for f in logs_of(stopped)), timeout=1800)
    assert (stopped / "checkpoint_latest.pth").is_file() and not (stopped / "checkpoint_final.pth").is_file()
    cmd = [nnunet_bin("nnunet-sacl"), "study", "-d", D, "-c", CONFIG, "-tr", BASELINE, SACL, "-f", "0", "1",
           "-device", "cpu", "-o", str(root / "out")]
    first = run(cmd, env, timeout=3000)
    before = files_and_mtimes(env["nnUNet_results"])
    second = in_process(cmd[1:], env)                         # it starts no nnU-Net command: in this process
    return {"env": env, "out": root / "out", "first": first.stdout, "second": second, "stopped": stopped,
            "before": before, "after": files_and_mtimes(env["nnUNet_results"])}


def organs(env):
    labels = json.load(open(join(env["nnUNet_preprocessed"], DATASET_NAME, "dataset.json")))["labels"]
    return [k for k in labels if k not in ("background", "ignore")]


@pytest.mark.slow
def test_outputs_exist_and_every_row_is_present(study):
    out = study["out"]
    for name in ("report.md", "per_case.csv", "comparison.csv", "comparison_nsd.csv", "cost.csv",
                 "dice_boxplot.png", "case_mean_pairs.png"):
        assert (out / name).is_file(), name
    splits = json.load(open(join(study["env"]["nnUNet_preprocessed"], DATASET_NAME, "splits_final.json")))
    expected = {(t, str(f), case, o) for t in (BASELINE, SACL) for f in (0, 1) for case in splits[f]["val"]
                for o in organs(study["env"])}
    rows = read_csv(out / "per_case.csv")
    assert list(rows[0]) == ["trainer", "fold", "seed", "case", "organ", "dice", "nsd", "reference_voxels"]
    assert {r["seed"] for r in rows} == {""}, "a study without --seeds names no seed"
    got = [(r["trainer"], r["fold"], r["case"], r["organ"]) for r in rows]
    assert len(got) == len(set(got)) and set(got) == expected
    assert all(0 <= float(r["dice"]) <= 1 or math.isnan(float(r["dice"])) for r in rows)
    report = (out / "report.md").read_text()
    assert "nnunet-sacl study -d 991" in report and "Cost" in report and "95% CI" in report


@pytest.mark.slow
def test_dice_equals_nnunet_validation_summary(study):
    """The study's evaluator and nnU-Net's (fold_X/validation/summary.json, written by nnUNetv2_train) give the same
    Dice for every run, case and organ (NaN for both masks empty)."""
    labels = json.load(open(join(study["env"]["nnUNet_preprocessed"], DATASET_NAME, "dataset.json")))["labels"]
    ours = {(r["trainer"], r["fold"], r["case"], r["organ"]): float(r["dice"])
            for r in read_csv(study["out"] / "per_case.csv")}
    compared = 0
    for trainer in (BASELINE, SACL):
        for fold in (0, 1):
            summary = json.load(open(run_folder(study["env"]["nnUNet_results"], trainer, fold) / "validation" /
                                     "summary.json"))
            for case in summary["metric_per_case"]:
                name = Path(case["reference_file"]).name[:-len(".nii.gz")]
                for organ in organs(study["env"]):
                    theirs = case["metrics"][str(labels[organ])]["Dice"]
                    mine = ours[(trainer, str(fold), name, organ)]
                    assert mine == pytest.approx(theirs, abs=1e-9, nan_ok=True), (trainer, fold, name, organ)
                    compared += 1
    assert compared == len(ours)


@pytest.mark.slow
def test_comparison_equals_scipy_on_the_csv_pairs(study):
    rows = read_csv(study["out"] / "per_case.csv")
    table = read_csv(study["out"] / "comparison.csv")
    assert list(table[0]) == ["trainer", "baseline", "organ", "n_pairs", "mean_diff", "ci_low", "ci_high",
                              "p_wilcoxon", "wins", "ties", "losses", "n_seeds", "fold_gains", "seed_sd_baseline",
                              "seed_sd_arm", "verdict"]
    names = organs(study["env"])
    assert [r["organ"] for r in table] == names + ["mean"]
    report = (study["out"] / "report.md").read_text()
    for r in table:
        assert (r["trainer"], r["baseline"]) == (SACL, BASELINE)
        a, b = paired(rows, SACL, BASELINE, names, r["organ"])
        diff = a - b
        assert int(r["n_pairs"]) == len(a)
        assert float(r["mean_diff"]) == pytest.approx(diff.mean(), abs=1e-12)
        assert (int(r["wins"]), int(r["ties"]), int(r["losses"])) == \
            ((diff > 0).sum(), (diff == 0).sum(), (diff < 0).sum())
        if len(a) < MIN_PAIRS:     # 2 folds x 2 validation cases: too few for a test (scipy's: test_evaluation)
            assert math.isnan(float(r["p_wilcoxon"])) and math.isnan(float(r["ci_low"]))
            assert f"| {SACL} | {r['organ']} | {len(a)} | " in report and f"n = {len(a)}: no test" in report
            continue
        assert float(r["ci_low"]) <= diff.mean() + 1e-12 and diff.mean() - 1e-12 <= float(r["ci_high"])
        if np.all(diff == 0):
            assert float(r["p_wilcoxon"]) == 1.0
        else:
            assert float(r["p_wilcoxon"]) == pytest.approx(stats.wilcoxon(a, b).pvalue, rel=1e-12)


@pytest.mark.slow
def test_stopped_run_was_resumed_not_restarted(study):
    assert f"{BASELINE} fold 0: resuming with --c" in study["first"]
    logs = logs_of(study["stopped"])
    assert len(logs) == 2, logs
    resumed = open(logs[-1]).read()
    assert not has_epoch_line(resumed, 0) and has_epoch_line(resumed, 1) and "Training done." in resumed
    for trainer, fold in ((BASELINE, 1), (SACL, 1)):
        assert f"{trainer} fold {fold}: training:" in study["first"]
    assert f"{SACL} fold 0: finished, skipped" in study["first"]    # README's run, trained by hand


@pytest.mark.slow
def test_second_call_trains_nothing(study):
    assert study["second"].count("finished, skipped") == 4
    assert "training:" not in study["second"] and "resuming" not in study["second"]
    assert study["after"] == study["before"]


@pytest.mark.slow
def test_cost_from_the_training_logs(study):
    cost = {(r["trainer"], r["fold"]): r for r in read_csv(study["out"] / "cost.csv")}
    assert set(cost) == {(t, f) for t in (BASELINE, SACL) for f in ("0", "1")}
    for (trainer, _), c in cost.items():
        pretrain = 3 if trainer == SACL else 0   # SACLTrainer_smoke: 3 + 2 epochs; nnUNetTrainer_smoke: 2; 4 iterations
        assert (int(c["pretrain_epochs"]), int(c["epochs"])) == (pretrain, 2)
        assert float(c["iterations"]) == 4 * (pretrain + 2)
        assert float(c["epoch_seconds"]) > 0 and (float(c["pretrain_seconds"]) > 0) == (pretrain > 0)
        assert float(c["wall_seconds"]) >= float(c["epoch_seconds"]) + float(c["pretrain_seconds"])


def test_bootstrap_interval():
    assert bootstrap_ci(np.full(7, 0.25)) == (0.25, 0.25)
    assert all(math.isnan(v) for v in bootstrap_ci(np.array([])))
    x = np.random.default_rng(1).normal(0.1, 1.0, 400)
    low, high = bootstrap_ci(x)
    half = 1.96 * x.std(ddof=1) / math.sqrt(x.size)    # normal approximation of the mean's 95% interval
    assert low == pytest.approx(x.mean() - half, abs=0.15 * half)
    assert high == pytest.approx(x.mean() + half, abs=0.15 * half)
    assert bootstrap_ci(x) == (low, high)              # seeded


# ---------------------------------------------------------------- refusals and cluster commands (no training)

@pytest.fixture
def empty_results(in_process_env, tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    return tmp_path / "results"


def study_args(*extra, trainers=(BASELINE, SACL), folds=("0", "1")):
    return ["study", "-d", D, "-c", CONFIG, "-tr", *trainers, "-f", *folds, "-device", "cpu", *extra]


@pytest.mark.parametrize("change,message", [
    (lambda a, t: a.__setitem__(a.index(SACL), "NoSuchTrainer"), "trainer 'NoSuchTrainer' not found by nnU-Net"),
    (lambda a, t: a.__setitem__(2, "997"), "dataset '997'"),
    (lambda a, t: a.__setitem__(a.index("-device"), "-p") or a.__setitem__(a.index("-p") + 1, "NoPlans"),
     "plans 'NoPlans'"),
    (lambda a, t: a.__setitem__(a.index("1"), "7"), "fold(s) 7"),
    (lambda a, t: a.extend(["--test-images", str(t)]), "needs --test-labels"),
], ids=["unknown trainer", "missing dataset", "missing plans", "fold outside the splits", "test images without labels"])
def test_bad_input_is_named_before_any_training(empty_results, tmp_path, capsys, change, message):
    args = study_args()
    change(args, tmp_path)
    assert main(args) == 1
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("nnunet-sacl study: error: ") and message in line], err
    assert not empty_results.exists()


def test_test_case_without_a_label_is_named(empty_results, tmp_path, capsys):
    images, labels = tmp_path / "imagesTs", tmp_path / "labelsTs"
    images.mkdir()
    labels.mkdir()
    for case in ("a_001", "a_002"):
        (images / f"{case}_0000.nii.gz").write_bytes(b"")
    (labels / "a_001.nii.gz").write_bytes(b"")
    assert main(study_args("--test-images", str(images), "--test-labels", str(labels))) == 1
    assert "no label for test case(s) a_002" in capsys.readouterr().err


def test_printed_and_sbatch_commands_are_nnunet_train_commands(empty_results, tmp_path, capsys, monkeypatch):
    stopped = run_folder(empty_results, SACL, 1)
    stopped.mkdir(parents=True)
    (stopped / "checkpoint_latest.pth").write_bytes(b"")     # a stopped run: resumed with --c
    assert main(study_args("--print-commands")) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    script = tmp_path / "runs.sbatch"
    assert main(study_args("--slurm-array", str(script))) == 0
    text = script.read_text()
    assert text.startswith("#!/bin/bash") and "#SBATCH --array=0-3" in text
    in_script = [line.strip()[len(f"{i}) "):-len(" ;;")] for i, line in
                 enumerate(l for l in text.splitlines() if l.strip()[:1].isdigit())]
    assert in_script == printed
    expected = {(DATASET_NAME, CONFIG, str(f), t, "nnUNetPlans", None, (t, f) == (SACL, 1))
                for t in (BASELINE, SACL) for f in (0, 1)}
    assert {parse_with_nnunet(line, monkeypatch) for line in printed} == expected
    assert not (run_folder(empty_results, BASELINE, 0)).exists()    # nothing trained
    # a GPU only for GPU runs
    assert "--gres" not in text
    args = study_args("--slurm-array", str(script))
    args[args.index("-device") + 1] = "cuda"
    assert main(args) == 0 and "#SBATCH --gres=gpu:1" in script.read_text()


def test_predictions_older_than_the_model_are_predicted_again(tmp_path):
    """A test-set prediction is reused only when every case is there and newer than the run's final checkpoint."""
    import os
    from nnunet_sacl.analysis.study import Run, predictions_current
    run_ = Run(BASELINE, 0, tmp_path / "fold_0")
    run_.folder.mkdir()
    (run_.folder / "checkpoint_final.pth").write_bytes(b"model")
    files = [tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"]
    files[0].write_bytes(b"")
    assert not predictions_current(run_, files)                 # a case missing
    files[1].write_bytes(b"")
    model = (run_.folder / "checkpoint_final.pth").stat().st_mtime_ns
    for f in files:
        os.utime(f, ns=(model + 10**9, model + 10**9))
    assert predictions_current(run_, files)
    os.utime(files[1], ns=(model - 10**9, model - 10**9))       # trained again after this prediction
    assert not predictions_current(run_, files)


@pytest.mark.parametrize("npp, cases, expected", [(None, 1, "1"), (None, 2, "2"), (None, 5, "3"), ("1", 5, "1"),
                                                  ("8", 5, "5"), ("x", 5, "3")])
def test_prediction_processes_are_nnunets_default_but_no_more_than_cases(monkeypatch, npp, cases, expected):
    from nnunet_sacl.analysis.study import prediction_processes
    if npp is None:
        monkeypatch.delenv("nnUNet_npp", raising=False)
    else:
        monkeypatch.setenv("nnUNet_npp", npp)
    assert prediction_processes("nnUNet_npp", cases) == expected
