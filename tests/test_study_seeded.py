"""``nnunet-sacl study --seeds`` and ``--dry-run``: seeded runs through nnU-Net's real commands (two arms of one
trainer under two names: equal runs per seed, other runs per seed, and a verdict of no difference on every endpoint),
the per-seed folders, printed lines and sbatch tasks, the refusal of a trainer that ignores the seed, and the plan
that prices a study without training or writing anything."""
import csv
import math
from pathlib import Path

import pytest
import torch

from nnunet_sacl.cli import main
from tests.helpers import DATASET_NAME, D, in_process, nnunet_bin, parse_with_nnunet, readme_model, run

CONFIG = "3d_fullres"
A, B = "nnUNetTrainer_tiny", "nnUNetTrainer_tiny_twin"      # one trainer, two names
SEEDS = (1, 2)


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def seed_folder(results, trainer, seed, fold=0):
    return Path(results) / DATASET_NAME / f"{trainer}__nnUNetPlans_seed{seed}__{CONFIG}" / f"fold_{fold}"


def weights(folder):
    """The run's weights from nnU-Net's own final checkpoint (made here; numpy values in its logging)."""
    return torch.load(folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)["network_weights"]


def files_of(root):
    return {str(p) for p in Path(root).rglob("*")} if Path(root).exists() else set()


@pytest.fixture(scope="module")
def seeded(readme_run, tmp_path_factory):
    readme_model(readme_run)
    env = dict(readme_run["env"], nnUNet_n_proc_DA="0")
    env.pop("SACL_SEED", None)
    out = tmp_path_factory.mktemp("seeded") / "out"
    cmd = [nnunet_bin("nnunet-sacl"), "study", "-d", D, "-c", CONFIG, "-tr", A, B, "-f", "0", "--seeds",
           *map(str, SEEDS), "-device", "cpu", "-o", str(out)]
    first = run(cmd, env, timeout=1800)
    return {"env": env, "out": out, "stdout": first.stdout}


@pytest.mark.slow
def test_two_names_of_one_trainer_are_level_on_every_endpoint(seeded):
    for name in ("comparison.csv", "comparison_nsd.csv"):
        rows = read_csv(seeded["out"] / name)
        assert rows and {r["verdict"] for r in rows} == {"level"}, name
        assert all(r["n_seeds"] == str(len(SEEDS)) for r in rows)
        assert all(float(r["mean_diff"]) == 0.0 for r in rows if r["mean_diff"] not in ("", "nan"))
    report = (seeded["out"] / "report.md").read_text()
    assert "- seeds 1 2: every arm x fold trained once per seed" in report


@pytest.mark.slow
def test_each_seed_is_its_own_run_and_the_same_seed_the_same_run(seeded):
    results = seeded["env"]["nnUNet_results"]
    w = {(t, s): weights(seed_folder(results, t, s)) for t in (A, B) for s in SEEDS}
    for s in SEEDS:   # the twin arms: bit-identical per seed
        assert all(torch.equal(w[(A, s)][k], w[(B, s)][k]) for k in w[(A, s)])
    assert any(not torch.equal(w[(A, 1)][k], w[(A, 2)][k]) for k in w[(A, 1)])   # another seed, another run
    for s in SEEDS:   # nnU-Net's own log says the seed reached the trainer
        log = next(seed_folder(results, A, s).glob("training_log_*.txt")).read_text()
        assert f"Seeded run: seed {s} " in log


@pytest.mark.slow
def test_per_case_and_cost_carry_the_seed(seeded):
    rows = read_csv(seeded["out"] / "per_case.csv")
    assert list(rows[0])[:3] == ["trainer", "fold", "seed"]
    assert {(r["trainer"], r["seed"]) for r in rows} == {(t, str(s)) for t in (A, B) for s in SEEDS}
    cost = read_csv(seeded["out"] / "cost.csv")
    assert sorted((r["trainer"], r["seed"]) for r in cost) == sorted((t, str(s)) for t in (A, B) for s in SEEDS)
    assert "seed 2" in seeded["stdout"] and "SACL_SEED=2" in seeded["stdout"]


@pytest.fixture
def empty_results(in_process_env, tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    monkeypatch.delenv("SACL_SEED", raising=False)
    return tmp_path / "results"


def study_args(*extra, trainers=(A, B), folds=("0", "1")):
    return ["study", "-d", D, "-c", CONFIG, "-tr", *trainers, "-f", *folds, "-device", "cpu", *extra]


def test_printed_and_sbatch_lines_set_the_seed_and_its_plans(empty_results, in_process_env, tmp_path, capsys,
                                                             monkeypatch):
    from nnunet_sacl.analysis.study_regimes import seed_plans_identifier
    preprocessed = Path(in_process_env["nnUNet_preprocessed"]) / DATASET_NAME
    assert main(study_args("--seeds", "3", "5", "--print-commands")) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 2 * 2 * 2
    parsed = set()
    for line in printed:
        prefix, _, command = line.partition(" ")
        assert prefix.startswith("SACL_SEED=")
        seed = prefix.split("=")[1]
        p = parse_with_nnunet(command, monkeypatch)
        assert p[4] == seed_plans_identifier("nnUNetPlans", int(seed))
        parsed.add((p[2], p[3], seed))
    assert parsed == {(str(f), t, str(s)) for f in (0, 1) for t in (A, B) for s in (3, 5)}
    for s in (3, 5):   # the seeds' plans: the base plans under their own name, the same data
        import json
        base = json.loads((preprocessed / "nnUNetPlans.json").read_text())
        mine = json.loads((preprocessed / f"nnUNetPlans_seed{s}.json").read_text())
        assert mine == dict(base, plans_name=f"nnUNetPlans_seed{s}")
    script = tmp_path / "runs.sbatch"
    assert main(study_args("--seeds", "3", "5", "--slurm-array", str(script))) == 0
    assert "#SBATCH --array=0-7" in script.read_text() and "  0) SACL_SEED=3 " in script.read_text()
    assert not empty_results.exists()


@pytest.mark.parametrize("seeds,message", [(["x"], "--seeds x: give whole numbers"), (["1", "1"], "--seeds 1: given twice"),
                                           (["-2"], "--seeds -2: give whole numbers")])
def test_bad_seeds_are_named(empty_results, capsys, seeds, message):
    assert main(study_args("--seeds", *seeds)) == 1
    assert message in capsys.readouterr().err
    assert not empty_results.exists()


def test_a_trainer_that_ignores_the_seed_is_refused(empty_results, capsys):
    # --print-commands: were it not refused, nothing would train either
    assert main(study_args("--seeds", "1", "2", "--print-commands", trainers=("nnUNetTrainer", A))) == 1
    err = capsys.readouterr().err
    assert "--seeds: trainer 'nnUNetTrainer' does not read $SACL_SEED" in err and "nnUNetTrainer_seeded" in err
    assert main(study_args("--seeds", "1", trainers=("nnUNetTrainer_seeded", A), folds=("0",)) + ["--dry-run",
                "--seconds-per-iteration", "1"]) == 0


def test_dry_run_lists_runs_iterations_hours_and_array_and_writes_nothing(empty_results, in_process_env, capsys):
    preprocessed = Path(in_process_env["nnUNet_preprocessed"]) / DATASET_NAME
    before = files_of(preprocessed)
    assert main(study_args("--seeds", "1", "2", "3", "--dry-run", "--seconds-per-iteration", "2",
                           trainers=("nnUNetTrainer_smoke", "SACLTrainer_smoke"))) == 0
    out = capsys.readouterr().out
    lines = [l.split() for l in out.splitlines() if l.startswith(("nnUNetTrainer_smoke ", "SACLTrainer_smoke "))]
    assert len(lines) == 2 * 2 * 3                          # arms x folds x seeds
    # nnUNetTrainer_smoke: 2 epochs x 4 iterations; SACLTrainer_smoke: 3 pretraining epochs on top
    assert {tuple(l[-3:]) for l in lines} == {("0", "8", f"{8 * 2 / 3600:.2f}"), ("12", "8", f"{20 * 2 / 3600:.2f}")}
    total = 6 * 8 + 6 * 20
    assert f"12 run(s), 12 to train: {total:,} iterations (72 pretraining), about {total * 2 / 3600:.1f} h at 2 s" in out
    assert "SLURM array (--slurm-array): 12 task(s), --array=0-11" in out and "Nothing was trained" in out
    assert not empty_results.exists() and files_of(preprocessed) == before     # no plans copies, no folders


def test_dry_run_probes_the_baseline_step_here(empty_results, capsys):
    assert main(study_args("--dry-run", folds=("0",))) == 0
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.startswith("2 run(s)"))
    seconds = float(line.split(" at ")[1].split(" s per")[0])
    assert 0 < seconds < 60 and "probe: 3 train steps of nnUNetTrainer_tiny on cpu here" in line
    assert not empty_results.exists()


def test_seconds_per_iteration_needs_dry_run(empty_results, capsys):
    assert main(study_args("--seconds-per-iteration", "1")) == 1
    assert "--seconds-per-iteration prices a --dry-run" in capsys.readouterr().err
