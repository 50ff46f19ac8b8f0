"""``nnunet-sacl study``: trainers x folds through nnU-Net's own commands, then a case-paired comparison with the
first trainer (the baseline) and each run's cost. Finished runs are skipped, stopped runs resume with ``--c``, so
calling it again (or after a cluster ran the printed commands) only evaluates. See docs/study.md."""
import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from nnunet_sacl.defaults import DEFAULT_TOLERANCE_MM
from nnunet_sacl.analysis.study_regimes import (Arm, RegimeError, check_weights_files, parse_arms, parse_seeds,
                                                parse_train_cases, parse_weights, seed_plans_identifier,
                                                subset_dataset, write_seed_plans, write_weights_plans)

DEFAULT_FOLDS = 5          # nnU-Net's split when the dataset has no splits_final.json


class StudyError(Exception):
    """A bad input, named; raised before anything is trained."""


@dataclass(frozen=True)
class Run:
    trainer: str           # the arm's name (TRAINER or TRAINER@LABEL)
    fold: int
    folder: Path           # nnU-Net's fold_X output folder
    trainer_class: str = None
    plans: str = None      # the arm's plans identifier
    weights: str = None    # -pretrained_weights file of this fold, if any
    seed: int = None       # --seeds: the run's $SACL_SEED (None: the trainer's own seed, as without --seeds)

    def environment(self) -> dict:
        """What the run's nnUNetv2_train needs in its environment besides the caller's: the seed."""
        from nnunet_sacl.nnunet.seeding import SEED_VARIABLE
        return {} if self.seed is None else {SEED_VARIABLE: str(self.seed)}

    def state(self) -> str:
        """'finished' (final checkpoint and validation summary), 'stopped' (a checkpoint to resume) or 'new'."""
        if (self.folder / "checkpoint_final.pth").is_file() and (self.folder / "validation" / "summary.json").is_file():
            return "finished"
        if (self.folder / "checkpoint_latest.pth").is_file() or (self.folder / "checkpoint_final.pth").is_file():
            return "stopped"
        return "new"


@dataclass
class Study:
    dataset: str           # DatasetXXX_Name
    configuration: str
    plans: str
    trainers: list
    folds: list
    device: str
    out_dir: Path
    preprocessed: Path     # nnUNet_preprocessed/DatasetXXX_Name
    file_ending: str
    labels: dict
    test_images: Path = None
    test_labels: Path = None
    tolerance: float = DEFAULT_TOLERANCE_MM
    nsd_method: str = "voxel"
    arms: list = field(default_factory=list)   # Arm per name in trainers (default: plain trainers)
    train_cases: object = None                 # K of this regime (int or 'all'); None: no --train-cases
    seeds: list = None                         # --seeds; None: one run per arm and fold, the trainer's own seed

    def arm(self, name: str) -> Arm:
        return next((a for a in self.arms if a.name == name), Arm(name, name))

    @property
    def runs(self) -> list:
        from nnunetv2.utilities.file_path_utilities import get_output_folder
        runs = []
        for t in self.trainers:
            arm = self.arm(t)
            for seed in self.seeds or [None]:
                plans = seed_plans_identifier(arm.plans(self.plans), seed)
                runs += [Run(t, f, Path(get_output_folder(self.dataset, arm.trainer, plans, self.configuration, f)),
                             arm.trainer, plans, arm.weights_file(f), seed) for f in self.folds]
        return runs

    def train_command(self, run: Run, executable: str = "nnUNetv2_train") -> list:
        cmd = [executable, self.dataset, self.configuration, str(run.fold), "-tr", run.trainer_class or run.trainer,
               "-p", run.plans or self.plans, "-device", self.device]
        state = run.state()
        if run.weights is not None and state == "new":     # nnU-Net refuses weights together with --c
            cmd += ["-pretrained_weights", str(run.weights)]
        return cmd + (["--c"] if state == "stopped" else [])

    def predict_command(self, run: Run, out: Path, cases: int, executable: str = "nnUNetv2_predict") -> list:
        return [executable, "-i", str(self.test_images), "-o", str(out), "-d", self.dataset, "-c", self.configuration,
                "-f", str(run.fold), "-tr", run.trainer_class or run.trainer, "-p", run.plans or self.plans,
                "-device", self.device, "-npp", prediction_processes("nnUNet_npp", cases),
                "-nps", prediction_processes("nnUNet_nps", cases)]


def shell_line(run: Run, cmd: list) -> str:
    """The command as one shell line, with the run's environment in front (``SACL_SEED=2 nnUNetv2_train ...``)."""
    return " ".join([f"{k}={shlex.quote(v)}" for k, v in run.environment().items()] + [shlex.join(cmd)])


def prediction_processes(variable: str, cases: int) -> str:
    """nnUNetv2_predict's own default for -npp / -nps ($nnUNet_npp / $nnUNet_nps, else 3), but no more processes
    than cases: its export pool starts every process, a fresh interpreter, whether it gets a case or not."""
    try:
        default = int(os.environ.get(variable) or 3)
    except ValueError:
        default = 3
    return str(max(1, min(default, cases)))


# ---------------------------------------------------------------- checks before anything runs

def _env_folder(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise StudyError(f"{name} is not set: export it as for nnUNetv2_train")
    return value


def _dataset_name(dataset: str) -> str:
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    try:
        return maybe_convert_to_dataset_name(dataset)
    except (RuntimeError, ValueError) as e:
        raise StudyError(f"dataset {dataset!r}: {e}") from None


def _check_trainers(trainers: list, classes: list = None, seeded: bool = False) -> None:
    """Two or more different arms, every trainer found by nnU-Net; with --seeds, every trainer one that reads the
    seed (``SeededMixin``): another trainer would train unseeded runs under a seed's name."""
    from contextlib import redirect_stdout
    from io import StringIO

    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunet_sacl.nnunet.seeding import SEED_VARIABLE, SeededMixin
    if len(trainers) < 2 or len(set(trainers)) != len(trainers):
        raise StudyError(f"-tr {' '.join(trainers)}: give at least two different trainers (the first is the baseline)")
    for name in dict.fromkeys(classes or trainers):
        try:
            with redirect_stdout(StringIO()):   # nnU-Net narrates its search
                cls = recursive_find_trainer_class_by_name(name)
        except (RuntimeError, ImportError) as e:
            raise StudyError(f"trainer {name!r} not found by nnU-Net (nnUNet_extTrainer="
                             f"{os.environ.get('nnUNet_extTrainer', '<not set>')}): {str(e).splitlines()[0]}") from None
        if seeded and not issubclass(cls, SeededMixin):
            stock = " (stock nnU-Net, seeded: -tr nnUNetTrainer_seeded)" if name == "nnUNetTrainer" else ""
            raise StudyError(f"--seeds: trainer {name!r} does not read ${SEED_VARIABLE}, so its runs would not be "
                             f"the seeds they are named after; use a seeded trainer{stock} or put "
                             f"nnunet_sacl.nnunet.seeding.SeededMixin in front of {name}'s bases")


def _available_folds(preprocessed: Path) -> list:
    splits = preprocessed / "splits_final.json"
    if not splits.is_file():
        return list(range(DEFAULT_FOLDS))
    try:
        return list(range(len(json.loads(splits.read_text()))))
    except (OSError, json.JSONDecodeError, TypeError) as e:
        raise StudyError(f"{splits}: cannot read the splits ({e})") from None


def _test_cases(images: Path, labels: Path, file_ending: str) -> list:
    """Case names of the test images; each needs a label file of the same case name."""
    if labels is None:
        raise StudyError(f"--test-images {images} needs --test-labels: the study compares trainers on labelled cases")
    for folder, option in ((images, "--test-images"), (labels, "--test-labels")):
        if not folder.is_dir():
            raise StudyError(f"{option} {folder} is not a folder")
    cases = sorted({p.name[:-len(file_ending)].rsplit("_", 1)[0] for p in images.iterdir()
                    if p.name.endswith(file_ending)})
    if not cases:
        raise StudyError(f"--test-images {images} holds no image (*_0000{file_ending})")
    missing = [c for c in cases if not (labels / (c + file_ending)).is_file()]
    if missing:
        raise StudyError(f"--test-labels {labels}: no label for test case(s) {', '.join(missing[:10])} "
                         f"(expected {labels / (missing[0] + file_ending)})")
    return cases


def make_study(dataset, configuration: str, trainers: list, folds: list = tuple(range(DEFAULT_FOLDS)),
               plans: str = "nnUNetPlans", device: str = "cuda", out_dir="study", test_images=None, test_labels=None,
               tolerance: float = DEFAULT_TOLERANCE_MM, nsd_method: str = "voxel", weights: list = None, train_cases: list = None,
               weights_files_needed: bool = True, seeds: list = None) -> Study:
    """Every check of the study's settings against the nnU-Net folders, before anything is trained (StudyError
    names what is wrong). The arguments are ``nnunet-sacl study``'s options: ``weights`` its LABEL=FILE items,
    ``train_cases`` its K values, ``seeds`` its --seeds; ``weights_files_needed=False`` for commands a cluster runs later (the weights
    files may not be written yet)."""
    from nnunet_sacl.analysis.evaluation import labels_from_dataset_json
    from nnunet_sacl.nnunet.plans import read_plans
    trainers, folds = list(trainers), list(folds)
    _env_folder("nnUNet_results")
    dataset = _dataset_name(dataset)
    preprocessed = Path(_env_folder("nnUNet_preprocessed")) / dataset
    try:
        read_plans(preprocessed, plans, configuration)
    except (FileNotFoundError, ValueError) as e:
        raise StudyError(str(e)) from None
    try:
        arms = parse_arms(trainers, parse_weights(weights))
        if weights_files_needed:
            check_weights_files(arms, folds)
        if train_cases:
            parse_train_cases(train_cases)
        seeds = parse_seeds(seeds)
    except RegimeError as e:
        raise StudyError(str(e)) from None
    _check_trainers(trainers, [a.trainer for a in arms], seeded=seeds is not None)
    available = _available_folds(preprocessed)
    bad = [f for f in folds if f not in available]
    if bad or len(set(folds)) != len(folds):
        raise StudyError(f"fold(s) {' '.join(map(str, bad or folds))}: {dataset} has folds "
                         f"{available[0]}..{available[-1]} ({'splits_final.json' if (preprocessed / 'splits_final.json').is_file() else 'nnU-Net default 5-fold split'}), each once")
    dataset_json = json.loads((preprocessed / "dataset.json").read_text())
    file_ending = dataset_json.get("file_ending", ".nii.gz")
    test_images = Path(test_images) if test_images else None
    test_labels = Path(test_labels) if test_labels else None
    if test_labels is not None and test_images is None:
        raise StudyError("--test-labels needs --test-images")
    if test_images is not None:
        _test_cases(test_images, test_labels, file_ending)
    if device not in ("cuda", "cpu", "mps"):
        raise StudyError(f"-device {device}: use cuda, cpu or mps (as nnUNetv2_train)")
    return Study(dataset, configuration, plans, trainers, folds, device, Path(out_dir), preprocessed,
                 file_ending, labels_from_dataset_json(preprocessed / "dataset.json"), test_images, test_labels,
                 tolerance, nsd_method, arms, seeds=seeds)


def regime_studies(study: Study, train_cases, seed: int = 0) -> list:
    """One study per --train-cases value, each in its own STUDY_DIR/K<k> folder (K='all': the dataset itself);
    derived datasets and the weights arms' plans are written here, after every check."""
    if not train_cases:
        write_weights_plans(study.preprocessed, study.plans, study.arms)
        write_seed_plans(study.preprocessed, study.plans, study.arms, study.seeds)
        return [study]
    studies = []
    try:
        for k in parse_train_cases(train_cases):
            if k == "all":
                regime = replace(study, out_dir=study.out_dir / "Kall", train_cases=k)
            else:
                folder = subset_dataset(study.preprocessed, study.dataset, study.plans, study.configuration,
                                        study.folds, k, seed)
                regime = replace(study, dataset=folder.name, preprocessed=folder, out_dir=study.out_dir / f"K{k}",
                                 train_cases=k)
            write_weights_plans(regime.preprocessed, regime.plans, regime.arms)
            write_seed_plans(regime.preprocessed, regime.plans, regime.arms, regime.seeds)
            studies.append(regime)
    except RegimeError as e:
        raise StudyError(str(e)) from None
    return studies


def planned_regimes(study: Study, train_cases, seed: int = 0) -> list:
    """``regime_studies`` without writing anything (for --dry-run): a regime whose derived dataset does not exist
    yet gets a placeholder dataset name, so that its runs are all new."""
    from nnunet_sacl.analysis.study_regimes import find_subset_dataset
    if not train_cases:
        return [study]
    studies = []
    try:
        ks = parse_train_cases(train_cases)
    except RegimeError as e:
        raise StudyError(str(e)) from None
    for k in ks:
        if k == "all":
            studies.append(replace(study, out_dir=study.out_dir / "Kall", train_cases=k))
            continue
        found = find_subset_dataset(study.preprocessed.parent, {"source": study.dataset, "train_cases": k,
                                                                "seed": seed})
        name = found.name if found is not None else f"{study.dataset}_K{k}_not_derived_yet"
        studies.append(replace(study, dataset=name, preprocessed=found or study.preprocessed,
                               out_dir=study.out_dir / f"K{k}", train_cases=k))
    return studies


# ---------------------------------------------------------------- running nnU-Net

def nnunet_command(name: str) -> str:
    """nnU-Net's console script of the running Python's environment (a venv need not be activated), else whatever
    PATH finds."""
    local = Path(sys.executable).parent / name
    return str(local) if local.is_file() else name


def pending_commands(study) -> list:
    """One ``nnUNetv2_train`` command line per run that is not finished (with ``--c`` where it stopped); a list of
    studies (regimes) gives theirs one after the other."""
    if isinstance(study, list):
        return [c for s in study for c in pending_commands(s)]
    return [shell_line(r, study.train_command(r)) for r in study.runs if r.state() != "finished"]


def slurm_array_script(study: Study, commands: list) -> str:
    lines = ["#!/bin/bash",
             f"#SBATCH --job-name=sacl-study-{study.dataset}",
             f"#SBATCH --array=0-{len(commands) - 1}",
             *(["#SBATCH --gres=gpu:1"] if study.device == "cuda" else []),
             "# One nnU-Net training run per array task. Add your site's --time/--partition/--mem lines.",
             "# Needs nnUNet_raw, nnUNet_preprocessed, nnUNet_results and nnUNet_extTrainer (nnunet-sacl env) set.",
             "# When every task has finished, run the same nnunet-sacl study command again to evaluate.",
             'case "$SLURM_ARRAY_TASK_ID" in']
    lines += [f"  {i}) {cmd} ;;" for i, cmd in enumerate(commands)]
    lines += ['  *) echo "no run for array task $SLURM_ARRAY_TASK_ID" >&2; exit 1 ;;', "esac"]
    return "\n".join(lines) + "\n"


def _say(message: str) -> None:
    print(message, flush=True)   # before the subprocess's own output


def _regime(study: Study) -> str:
    return "" if study.train_cases is None else f" (train cases {study.train_cases})"


def run_name(run: Run) -> str:
    return f"{run.trainer} fold {run.fold}" + ("" if run.seed is None else f" seed {run.seed}")


def train(study: Study, log=_say) -> None:
    for run in study.runs:
        state = run.state()
        if state == "finished":
            log(f"{run_name(run)}{_regime(study)}: finished, skipped ({run.folder}; delete it to train again)")
            continue
        cmd = study.train_command(run, nnunet_command("nnUNetv2_train"))
        log(f"{run_name(run)}{_regime(study)}: {'resuming with --c' if state == 'stopped' else 'training'}: "
            f"{shell_line(run, cmd)}")
        if subprocess.run(cmd, env={**os.environ, **run.environment()}).returncode != 0 or run.state() != "finished":
            raise RuntimeError(f"{run_name(run)}: nnUNetv2_train did not finish; see the training log "
                               f"in {run.folder} (calling study again resumes it)")


def predict_test_set(study: Study, log=_say) -> None:
    """nnU-Net's prediction of the test images by each run's own fold model; predictions of every case that are
    newer than the run's final checkpoint are reused (said so)."""
    cases = _test_cases(study.test_images, study.test_labels, study.file_ending)
    for run in study.runs:
        out = prediction_folder(study, run)
        if predictions_current(run, [out / (c + study.file_ending) for c in cases]):
            log(f"{run_name(run)}: reusing the test set predictions in {out}")
            continue
        cmd = study.predict_command(run, out, len(cases), nnunet_command("nnUNetv2_predict"))
        log(f"{run_name(run)}: predicting the test set: {shlex.join(cmd)}")
        if subprocess.run(cmd).returncode != 0:
            raise RuntimeError(f"{run_name(run)}: nnUNetv2_predict failed ({shlex.join(cmd)})")


def predictions_current(run: Run, files: list) -> bool:
    """Every file is there and newer than the run's final checkpoint (a model trained again predicts again)."""
    model = (run.folder / "checkpoint_final.pth").stat().st_mtime_ns
    return all(f.is_file() and f.stat().st_mtime_ns > model for f in files)


def prediction_folder(study: Study, run: Run) -> Path:
    if study.test_images is None:
        return run.folder / "validation"
    seed = [] if run.seed is None else [f"seed_{run.seed}"]
    return study.out_dir.joinpath("predictions", run.trainer, *seed, f"fold_{run.fold}")


# ---------------------------------------------------------------- evaluation (the one call site)

def evaluated_cases(study: Study, run: Run) -> list:
    if study.test_images is not None:
        return _test_cases(study.test_images, study.test_labels, study.file_ending)
    splits = json.loads((study.preprocessed / "splits_final.json").read_text())
    return sorted(splits[run.fold]["val"])


def reference_folder(study: Study) -> Path:
    if study.test_labels is not None:
        return study.test_labels
    gt = study.preprocessed / "gt_segmentations"
    return gt if gt.is_dir() else Path(_env_folder("nnUNet_raw")) / study.dataset / "labelsTr"


def evaluate(study: Study) -> list:
    """Rows (trainer, fold, seed, case, organ, dice, nsd, reference_voxels) for every run, case and organ."""
    from nnunet_sacl.analysis.evaluation import evaluate_cases
    reference, rows = reference_folder(study), []
    for run in study.runs:
        for r in evaluate_cases(prediction_folder(study, run), reference, evaluated_cases(study, run), study.labels,
                                study.tolerance, study.file_ending, study.nsd_method):
            rows.append({"trainer": run.trainer, "fold": run.fold, "seed": run.seed, "case": r["case"], "organ": r["organ"],
                         "dice": r["dice"], "nsd": r["nsd"],
                         "reference_voxels": r["reference_voxels"]})
    return rows


def run_study(study: Study, command: str = None, log=_say) -> Path:
    train(study, log)
    if study.test_images is not None:
        predict_test_set(study, log)
    return evaluate_and_report(study, command)[0]


def evaluate_and_report(study: Study, command: str = None) -> tuple:
    """The evaluation's rows and each run's cost, written as the study's report; returns (report file, rows)."""
    from nnunet_sacl.analysis.study_report import write_report
    from nnunet_sacl.analysis.training_cost import run_cost
    rows = evaluate(study)
    costs = [{"trainer": r.trainer, "fold": r.fold, "seed": r.seed, **run_cost(r.folder)} for r in study.runs]
    return write_report(study, rows, costs, command), rows


def run_regimes(studies: list, command: str = None, log=_say) -> Path:
    """Every regime's study (trained, evaluated, reported in its own folder), then the summary over regimes."""
    if len(studies) == 1 and studies[0].train_cases is None:
        return run_study(studies[0], command, log)
    from nnunet_sacl.analysis.study_report import write_regimes_report
    reports = [run_study(s, command, log) for s in studies]
    return write_regimes_report(studies, reports, command)
