"""``nnunet-sacl study --train-cases 1 2`` with a weights-file arm, through nnU-Net's real commands on the session's
dataset (one module-scoped run: 2 arms x 2 regimes x fold 0, a test trainer of two one-iteration epochs): the
printed and sbatch lines parse with nnU-Net's own argparse and one of them, run as printed, is the study's run; every
run's log shows K training cases from its regime's own splits (nested subsets, the same file for every trainer); the
weights arm loaded its file and has its own output folder; a second call trains nothing; p-values equal scipy on
per_case.csv; the regimes report, plots and budgets; the pseudo-Dice parser."""
import csv
import json
import math
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from nnunet_sacl.analysis.stats import MIN_PAIRS
from nnunet_sacl.analysis.study_regimes import SUBSET_MARKER, source_splits, subset_order, subset_splits
from nnunet_sacl.cli import main
from nnunet_sacl.analysis.training_cost import pseudo_dice_curve
from tests.helpers import DATASET_NAME, in_process, nnunet_bin, nnunet_folders, paired, parse_with_nnunet, run
from tests.helpers import D, with_test_trainers

# tests that train through nnU-Net's commands or torchrun are marked slow one by one; the rest run in the fast tier

CONFIG, BASELINE = "3d_fullres", "nnUNetTrainer_tiny"      # tests/trainers: 2 epochs of 1 iteration
ARM = f"{BASELINE}@init"
WEIGHTS_PLANS = "nnUNetPlans_weights_init"


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def files_and_mtimes(root):
    return {str(p): p.stat().st_mtime_ns for p in Path(root).rglob("*") if p.is_file()}


def _weights_file(env, path):
    """A network checkpoint in nnU-Net's format (``network_weights``) of the baseline's network."""
    from tests.helpers import make_trainer
    with nnunet_folders(env):
        trainer = make_trainer(BASELINE)
        trainer.initialize()
        torch.manual_seed(0)
        torch.save({"network_weights": trainer.network.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def regimes(nnunet_env, preprocessed, tmp_path_factory):
    """Print and sbatch first (nothing trained), run the weights arm's K=1 line as printed, then the study twice."""
    root = tmp_path_factory.mktemp("regimes")
    (root / "preprocessed").mkdir()
    source = Path(nnunet_env["nnUNet_preprocessed"]) / DATASET_NAME
    (root / "preprocessed" / DATASET_NAME).symlink_to(source, target_is_directory=True)   # derived datasets go here
    env = with_test_trainers(dict(nnunet_env, nnUNet_preprocessed=str(root / "preprocessed"),
                                  nnUNet_results=str(root / "results"), nnUNet_n_proc_DA="0"))
    weights = _weights_file(dict(env, nnUNet_results=str(root / "weights_results")), root / "init_weights.pth")
    cmd = [nnunet_bin("nnunet-sacl"), "study", "-d", D, "-c", CONFIG, "-tr", BASELINE, ARM, "--weights",
           f"init={weights}", "-f", "0", "-device", "cpu", "--train-cases", "1", "2", "-o", str(root / "out")]
    printed = in_process(cmd[1:] + ["--print-commands"], env).strip().splitlines()    # nothing trained: in process
    in_process(cmd[1:] + ["--slurm-array", str(root / "runs.sbatch")], env)
    by_hand = next(line for line in printed if f"-p {WEIGHTS_PLANS}" in line and "K1" in line.split()[1])
    manual = run([nnunet_bin("nnUNetv2_train"), *shlex.split(by_hand)[1:]], env, timeout=1200)
    first = run(cmd, env, timeout=2400)
    before = files_and_mtimes(env["nnUNet_results"])
    second = in_process(cmd[1:], env)                         # it starts no nnU-Net command: in this process
    derived = {json.loads((p / SUBSET_MARKER).read_text())["train_cases"]: p
               for p in (root / "preprocessed").iterdir() if (p / SUBSET_MARKER).is_file()}
    return {"env": env, "root": root, "out": root / "out", "weights": weights, "printed": printed,
            "sbatch": (root / "runs.sbatch").read_text(), "manual": manual.stdout + manual.stderr,
            "by_hand": by_hand, "first": first.stdout, "second": second, "before": before,
            "after": files_and_mtimes(env["nnUNet_results"]), "derived": derived, "source": source}


def run_folder(regimes, k, plans="nnUNetPlans"):
    return Path(regimes["env"]["nnUNet_results"]) / regimes["derived"][k].name / f"{BASELINE}__{plans}__{CONFIG}" / \
        "fold_0"


def training_logs(folder):
    return "".join(p.read_text() for p in sorted(folder.glob("training_log_*.txt")))


@pytest.mark.slow
def test_every_run_trains_k_cases_from_its_regimes_splits(regimes):
    source = source_splits(regimes["source"], "nnUNetPlans", CONFIG)   # nnU-Net's own 5-fold split
    assert set(regimes["derived"]) == {1, 2}
    train = {}
    for k, folder in regimes["derived"].items():
        splits = json.loads((folder / "splits_final.json").read_text())
        assert len(splits) == len(source)
        for fold, (s, src) in enumerate(zip(splits, source)):
            assert s["val"] == src["val"] and len(s["train"]) == k and set(s["train"]) <= set(src["train"])
        train[k] = splits
        for plans in ("nnUNetPlans", WEIGHTS_PLANS):      # both arms read this one file: the same cases
            log = training_logs(run_folder(regimes, k, plans))
            assert f"This split has {k} training and {len(source[0]['val'])} validation cases." in log, (k, plans)
            assert f"Using splits from existing split file: {folder / 'splits_final.json'}" in log
            assert (run_folder(regimes, k, plans) / "checkpoint_final.pth").is_file()
    for fold in range(len(source)):                        # nested: the K=1 case is one of K=2's
        assert set(train[1][fold]["train"]) <= set(train[2][fold]["train"])


def test_subsets_are_seeded_and_nested():
    splits = [{"train": [f"c{i}" for i in range(8)], "val": ["v"]}]
    orders = [subset_order(splits[0]["train"], 0, seed) for seed in (0, 0, 1)]
    assert orders[0] == orders[1] and orders[0] != orders[2]
    for k in range(1, 8):
        assert set(subset_splits(splits, k, 0)[0]["train"]) <= set(subset_splits(splits, k + 1, 0)[0]["train"])


@pytest.mark.slow
def test_weights_arm_loaded_its_file_in_its_own_folder(regimes):
    assert f"-pretrained_weights {regimes['weights']}" in regimes["by_hand"]
    assert f"Loading pretrained weights from file  {regimes['weights']}" in regimes["manual"]
    k2 = next(line for line in regimes["first"].splitlines() if line.startswith(f"{ARM} fold 0 (train cases 2): "
                                                                                 "training:"))
    assert f"-pretrained_weights {regimes['weights']}" in k2
    assert f"Loading pretrained weights from file  {regimes['weights']}" in regimes["first"]
    assert f"{ARM} fold 0 (train cases 1): finished, skipped" in regimes["first"]   # the printed line's run
    for k in (1, 2):
        assert run_folder(regimes, k) != run_folder(regimes, k, WEIGHTS_PLANS)
        plans = json.loads((run_folder(regimes, k, WEIGHTS_PLANS).parent / "plans.json").read_text())
        assert plans["plans_name"] == WEIGHTS_PLANS and plans["dataset_name"] == regimes["derived"][k].name


@pytest.mark.slow
def test_second_call_trains_nothing(regimes):
    assert regimes["second"].count("finished, skipped") == 4
    assert "training:" not in regimes["second"] and "resuming" not in regimes["second"]
    assert regimes["after"] == regimes["before"]


@pytest.mark.slow
def test_printed_and_sbatch_lines_are_nnunet_train_commands(regimes, monkeypatch):
    in_script = [line.strip().split(") ", 1)[1][:-len(" ;;")] for line in regimes["sbatch"].splitlines()
                 if line.strip()[:1].isdigit()]
    assert in_script == regimes["printed"] and "#SBATCH --array=0-3" in regimes["sbatch"]
    weights = str(regimes["weights"])
    expected = {(regimes["derived"][k].name, CONFIG, "0", BASELINE, plans, w, False)
                for k in (1, 2) for plans, w in (("nnUNetPlans", None), (WEIGHTS_PLANS, weights))}
    assert {parse_with_nnunet(line, monkeypatch) for line in regimes["printed"]} == expected


@pytest.mark.slow
def test_each_regime_p_values_equal_scipy_on_its_per_case_csv(regimes):
    organs = [k for k in json.loads((regimes["source"] / "dataset.json").read_text())["labels"]
              if k not in ("background", "ignore")]
    for k in (1, 2):
        out = regimes["out"] / f"K{k}"
        rows, table = read_csv(out / "per_case.csv"), read_csv(out / "comparison.csv")
        assert {r["trainer"] for r in rows} == {BASELINE, ARM}
        for r in table:
            a, b = paired(rows, ARM, BASELINE, organs, r["organ"])
            diff = a - b
            assert int(r["n_pairs"]) == len(a) and float(r["mean_diff"]) == pytest.approx(diff.mean(), abs=1e-12)
            if len(a) < MIN_PAIRS:     # fold 0's validation cases: too few for a test
                assert math.isnan(float(r["p_wilcoxon"])) and math.isnan(float(r["ci_low"]))
                continue
            expected = 1.0 if np.all(diff == 0) else stats.wilcoxon(a, b).pvalue
            assert float(r["p_wilcoxon"]) == pytest.approx(expected, rel=1e-12)


@pytest.mark.slow
def test_regimes_report_plots_and_budgets(regimes):
    out = regimes["out"]
    for name in ("report.md", "regimes.csv", "dice_diff_vs_train_cases.png", "K1/report.md", "K2/report.md",
                 "K1/pseudo_dice.png", "K2/pseudo_dice.png", "K1/budget.csv"):
        assert (out / name).is_file(), name
    rows = read_csv(out / "regimes.csv")
    assert [(r["train_cases"], r["trainer"]) for r in rows] == [("1", ARM), ("2", ARM)]
    for r in rows:
        mean = next(c for c in read_csv(out / f"K{r['train_cases']}" / "comparison.csv") if c["organ"] == "mean")
        assert r["mean_diff"] == mean["mean_diff"] and r["p_wilcoxon"] == mean["p_wilcoxon"]
        assert r["budget"].startswith("equal segmentation iterations (2)")      # 2 epochs x 1 iteration, 1 fold
    assert "| budget |" in (out / "K1" / "report.md").read_text() and "Budget of each comparison" in \
        (out / "K1" / "report.md").read_text()
    curve = pseudo_dice_curve(run_folder(regimes, 1))
    assert sorted(curve) == [0, 1] and all(0 <= v <= 1 for v in curve.values())


def test_pseudo_dice_curve_reads_nnunet_log_lines(tmp_path):
    (tmp_path / "training_log_a.txt").write_text(
        "2026-12-01 00:00:00.000000: Epoch 0 \n"
        "2026-12-01 00:00:01.000000: Pseudo dice [np.float32(0.5), np.float32(0.25), np.float32(nan)] \n"
        "2026-12-01 00:00:02.000000: Epoch 1 \n"
        "2026-12-01 00:00:03.000000: Pseudo dice [0.1, 0.3] \n")
    (tmp_path / "training_log_b.txt").write_text(                    # --c ran epoch 1 again
        "2026-12-01 01:00:02.000000: Epoch 1 \n"
        "2026-12-01 01:00:03.000000: Pseudo dice [np.float32(0.6), np.float32(1e-1)] \n")
    assert pseudo_dice_curve(tmp_path) == pytest.approx({0: 0.375, 1: 0.35})


def test_cost_and_pseudo_dice_come_from_the_final_checkpoints_logging(tmp_path):
    """With a checkpoint_final.pth, epochs, epoch times and the pseudo-Dice curve are its nnU-Net logging's (exact,
    one entry per epoch), whatever the logs print; the wall time still spans the logs; a phase-1 checkpoint ('sacl'
    phase 'pretraining') counts as pretraining."""
    from nnunet_sacl.analysis.training_cost import run_cost
    (tmp_path / "training_log_a.txt").write_text(
        "2026-12-01 00:00:00.000000: Epoch 0 \n"
        "2026-12-01 00:00:01.000000: Pseudo dice [0.9] \n"
        "2026-12-01 00:00:02.000000: Epoch time: 99.0 s \n"
        "2026-12-01 00:01:40.000000: Training done. \n")
    (tmp_path / "debug.json").write_text(json.dumps({"num_iterations_per_epoch": 3}))
    logging = {"epoch_start_timestamps": [10.0, 20.5], "epoch_end_timestamps": [12.25, 21.5],
               "mean_fg_dice": [np.float64(0.5), np.float64(np.nan)]}
    torch.save({"network_weights": {}, "logging": logging}, tmp_path / "checkpoint_final.pth")
    cost = run_cost(tmp_path)
    assert (cost["pretrain_epochs"], cost["epochs"], cost["iterations"]) == (0, 2, 6)
    assert cost["epoch_seconds"] == pytest.approx(3.25) and cost["wall_seconds"] == pytest.approx(100.0)
    curve = pseudo_dice_curve(tmp_path)
    assert list(curve) == [0, 1] and curve[0] == 0.5 and math.isnan(curve[1])
    torch.save({"network_weights": {}, "logging": logging, "sacl": {"phase": "pretraining"}},
               tmp_path / "checkpoint_final.pth")
    cost = run_cost(tmp_path)
    assert (cost["pretrain_epochs"], cost["epochs"], cost["pretrain_seconds"]) == (2, 0, pytest.approx(3.25))


def test_regimes_and_weights_arms_in_nnunet_files_without_training(in_process_env, tmp_path, monkeypatch, capsys):
    """--print-commands alone (in process, nothing trained): each K's derived dataset holds K training cases per fold
    of the source's split, nested, validation unchanged, with plans of its own dataset_name and the weights arm's
    plans; every printed line parses with nnU-Net's argparse, the weights arm's with -pretrained_weights."""
    (tmp_path / "pre").mkdir()
    source = Path(in_process_env["nnUNet_preprocessed"]) / DATASET_NAME
    (tmp_path / "pre" / DATASET_NAME).symlink_to(source, target_is_directory=True)
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    monkeypatch.setenv("nnUNet_extTrainer", with_test_trainers(in_process_env)["nnUNet_extTrainer"])
    weights = tmp_path / "w_{fold}.pth"
    args = ["study", "-d", D, "-c", CONFIG, "-tr", BASELINE, ARM, "--weights", f"init={weights}", "-f", "0", "1",
            "-device", "cpu", "--train-cases", "1", "3", "all", "--print-commands"]
    assert main(args) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert main(args) == 0 and capsys.readouterr().out.strip().splitlines() == printed     # found again, same
    splits = source_splits(source, "nnUNetPlans", CONFIG)
    derived = {}
    for folder in (tmp_path / "pre").iterdir():
        if (folder / SUBSET_MARKER).is_file():
            derived[json.loads((folder / SUBSET_MARKER).read_text())["train_cases"]] = folder
    assert set(derived) == {1, 3}
    for k, folder in derived.items():
        sub = json.loads((folder / "splits_final.json").read_text())
        for fold in range(len(splits)):
            assert sub[fold]["val"] == splits[fold]["val"] and len(sub[fold]["train"]) == k
            assert set(sub[fold]["train"]) <= set(splits[fold]["train"])
        for plans in ("nnUNetPlans", WEIGHTS_PLANS):
            content = json.loads((folder / f"{plans}.json").read_text())
            assert content["dataset_name"] == folder.name and content["plans_name"] == plans
    for fold in range(len(splits)):
        assert set(json.loads((derived[1] / "splits_final.json").read_text())[fold]["train"]) <= \
            set(json.loads((derived[3] / "splits_final.json").read_text())[fold]["train"])
    expected = {(name, CONFIG, str(f), BASELINE, plans, w, False)
                for name in (derived[1].name, derived[3].name, DATASET_NAME) for f in (0, 1)
                for plans, w in (("nnUNetPlans", None), (WEIGHTS_PLANS, str(weights).format(fold=f)))}
    parsed = [parse_with_nnunet(line, monkeypatch) for line in printed]
    assert len(parsed) == 12 and set(parsed) == expected
    assert main(args[:-1] + ["-o", str(tmp_path / "out")]) == 1        # training needs the weights files
    assert "weights file" in capsys.readouterr().err
