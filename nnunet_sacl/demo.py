"""The README demo: build the real-CT demo dataset (or the synthetic one), plan and preprocess it, train a stock
nnU-Net baseline and SACL at equal total iterations, predict the held-out scan with each and print their Dice side
by side with the paired difference and the silhouette before/after pretraining; each step is nnU-Net's own command.
Finished steps of an earlier run in the same work folder are reused (and said so), stopped trainings resume."""
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_TRAINERS = ("nnUNetTrainer_demo", "SACLTrainer_demo")
DEFAULT_CONFIGURATION = "2d"
PLANS = "nnUNetPlans"
EMBEDDING_CASES = 2  # preprocessed training cases whose organ embeddings give the silhouettes (and t-SNE)


def nnunet_command(name: str) -> str:
    """The console script next to this interpreter (the venv's), else whatever PATH finds."""
    local = Path(sys.executable).parent / name
    return str(local) if local.is_file() else name


def run(cmd, env):
    print("\n$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, env=env, check=True)


class StepTimer:
    """Wall time of each demo step, printed as a table at the end (the demo's cost on this machine)."""

    def __init__(self):
        self.start, self.steps = time.monotonic(), []

    def __call__(self, name, fn, *args, **kwargs):
        t = time.monotonic()
        result = fn(*args, **kwargs)
        self.steps.append((name, time.monotonic() - t))
        return result

    def report(self) -> str:
        rows = [f"  {name:52s} {minutes(s)}" for name, s in self.steps]
        return "\n".join(["Wall time per step:", *rows, f"  {'total':52s} {minutes(time.monotonic() - self.start)}"])


def minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {seconds % 60:04.1f} s"


def demo_dataset(raw_folder: Path, dataset_id: int, synthetic: bool, sdist=None) -> Path:
    """The demo's raw dataset folder, built if it is not there yet."""
    if synthetic:
        from nnunet_sacl.dataset_conversion.synthetic import make_synthetic_dataset
        folder = raw_folder / f"Dataset{dataset_id:03d}_SACLSynthetic"
        return folder if folder.is_dir() else make_synthetic_dataset(raw_folder, dataset_id)
    from nnunet_sacl.dataset_conversion.demo_data import DATASET_NAME, build_demo_dataset
    folder = raw_folder / f"Dataset{dataset_id:03d}_{DATASET_NAME}"
    if folder.is_dir():
        print(f"Reusing the dataset {folder} (delete it to build it again)")
        return folder
    return build_demo_dataset(dataset_id, raw_folder, sdist=sdist)


def preprocessed(preprocessed_folder: Path, configuration: str, num_training: int) -> bool:
    """Whether nnU-Net's plans and every training case of the configuration are there already."""
    plans = preprocessed_folder / f"{PLANS}.json"
    if not plans.is_file():
        return False
    data_identifier = json.loads(plans.read_text())["configurations"].get(configuration, {}).get("data_identifier")
    folder = preprocessed_folder / str(data_identifier)
    return data_identifier is not None and folder.is_dir() and len(list(folder.glob("*.pkl"))) == num_training


def plan_and_preprocess(dataset_id: int, raw: Path, preprocessed_folder: Path, configuration: str, env: dict):
    from nnunet_sacl.environment import planning_env
    num_training = json.loads((raw / "dataset.json").read_text())["numTraining"]
    if preprocessed(preprocessed_folder, configuration, num_training):
        print(f"Reusing the plans and preprocessed {configuration} data in {preprocessed_folder}")
        return
    run([nnunet_command("nnUNetv2_plan_and_preprocess"), "-d", str(dataset_id), "-c", configuration, "-np", "2",
         "--verify_dataset_integrity"], planning_env(env))


def train(dataset_id: int, configuration: str, fold: int, trainer: str, model: Path, device: str, env: dict):
    """nnUNetv2_train, unless the fold finished already (reused, said so); a stopped run resumes with --c."""
    fold_folder = model / f"fold_{fold}"
    if (fold_folder / "checkpoint_final.pth").is_file():
        print(f"\nReusing the finished training of {trainer} in {fold_folder} (delete that folder to train again)")
        return
    resume = ["--c"] if (fold_folder / "checkpoint_latest.pth").is_file() else []
    if resume:
        print(f"\n{trainer} stopped before it finished: resuming it from {fold_folder / 'checkpoint_latest.pth'}")
    run([nnunet_command("nnUNetv2_train"), str(dataset_id), configuration, str(fold), "-tr", trainer,
         "-device", device, *resume], dict(env, nnUNet_n_proc_DA=env.get("nnUNet_n_proc_DA", "2")))


def predict_and_evaluate(raw: Path, dataset_id: int, configuration: str, fold: int, trainer: str, model: Path,
                         pred: Path, labels: dict, device: str, env: dict) -> dict:
    """Predicts imagesTs and evaluates it against labelsTs; returns nnU-Net's summary.json. Predictions newer
    than the model are reused."""
    summary_file = pred / "summary.json"
    checkpoint = model / f"fold_{fold}" / "checkpoint_final.pth"
    if summary_file.is_file() and summary_file.stat().st_mtime > checkpoint.stat().st_mtime:
        print(f"\nReusing the predictions and evaluation of {trainer} in {pred}")
    else:
        run([nnunet_command("nnUNetv2_predict"), "-i", str(raw / "imagesTs"), "-o", str(pred), "-d", str(dataset_id),
             "-c", configuration, "-f", str(fold), "-tr", trainer, "-device", device], env)
        run([nnunet_command("nnUNetv2_evaluate_simple"), str(raw / "labelsTs"), str(pred),
             "-l", *[str(v) for v in labels.values()]], env)
    return json.loads(summary_file.read_text())


def organs_in_test_labels(raw: Path, labels: dict) -> set:
    """Names of the organs that occur in at least one held-out label file."""
    import numpy as np
    import SimpleITK as sitk
    present = set()
    for f in sorted((raw / "labelsTs").glob("*.nii.gz")):
        present |= {int(v) for v in np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(f))))}
    return {name for name, label in labels.items() if label in present}


def dice_table(dice: dict, present: set) -> str:
    """Every arm's Dice per organ side by side; every further arm's difference to the first (the baseline),
    paired by organ; the means are over the organs present in the held-out labels."""
    arms = list(dice)
    base = arms[0]
    w = max(len(a) for a in arms) + 2
    head = f"  {'organ':30s}" + "".join(f"{a:>{w}s}" for a in arms) + "".join(f"{'diff ' + str(i + 1):>10s}"
                                                                           for i in range(1, len(arms)))
    lines = [head]
    for organ in dice[base]:
        row = f"  {organ + ('' if organ in present else ' (absent)'):30s}"
        row += "".join(f"{fmt(dice[a][organ]):>{w}s}" for a in arms)
        row += "".join(f"{signed(dice[a][organ] - dice[base][organ]):>10s}" for a in arms[1:])
        lines.append(row)
    means = {a: sum(dice[a][o] for o in present) / len(present) for a in arms}
    row = f"  {'mean (organs present)':30s}" + "".join(f"{fmt(means[a]):>{w}s}" for a in arms)
    lines.append(row + "".join(f"{signed(means[a] - means[base]):>10s}" for a in arms[1:]))
    for i, a in enumerate(arms[1:], 2):
        diffs = [dice[a][o] - dice[base][o] for o in present]
        wins = sum(d > 0 for d in diffs)
        lines.append(f"  diff {i}: {a} - {base}; better on {wins}, worse on {sum(d < 0 for d in diffs)} "
                     f"of the {len(diffs)} organs present")
    return "\n".join(lines)


def fmt(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.3f}"


def signed(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:+.3f}"


def run_demo(workdir="sacl_demo", device="cpu", dataset_id=990, trainers=DEFAULT_TRAINERS,
             configuration=DEFAULT_CONFIGURATION, fold=0, synthetic=False, sdist=None) -> dict:
    """Runs the whole pipeline in ``workdir`` (nnUNet_raw/preprocessed/results live there); returns
    {trainer: {organ: held-out Dice}} (nan: organ in neither label nor prediction)."""
    from nnunet_sacl.environment import with_ext_trainer
    from nnunet_sacl.analysis.evaluation import labels_from_dataset_json
    timer = StepTimer()
    work = Path(workdir).resolve()
    env = with_ext_trainer(os.environ)
    # nnU-Net's validation and prediction export through a pool of nnUNet_def_n_proc processes (default 8); on a
    # small machine starting eight interpreters costs more than the export itself
    env.setdefault("nnUNet_def_n_proc", str(min(8, os.cpu_count() or 1)))
    env.update(nnUNet_raw=str(work / "nnUNet_raw"), nnUNet_preprocessed=str(work / "nnUNet_preprocessed"),
               nnUNet_results=str(work / "nnUNet_results"))
    raw = timer("build the dataset", demo_dataset, work / "nnUNet_raw", dataset_id, synthetic, sdist)
    print(f"dataset: {raw}")
    labels = labels_from_dataset_json(raw / "dataset.json")
    preprocessed_folder = work / "nnUNet_preprocessed" / raw.name
    timer(f"plan and preprocess ({configuration})", plan_and_preprocess, dataset_id, raw, preprocessed_folder,
          configuration, env)
    models = {t: work / "nnUNet_results" / raw.name / f"{t}__{PLANS}__{configuration}" for t in trainers}
    for t in trainers:
        timer(f"train {t}", train, dataset_id, configuration, fold, t, models[t], device, env)
    dice = {}
    for t in trainers:
        summary = timer(f"predict + evaluate {t}", predict_and_evaluate, raw, dataset_id, configuration, fold, t,
                        models[t], work / "predictions" / t, labels, device, env)
        dice[t] = {name: float(summary["mean"][str(label)]["Dice"]) for name, label in labels.items()}
    present = organs_in_test_labels(raw, labels)
    print(f"\nDice on the held-out scan ({configuration}, fold {fold}; absent: organ not in the held-out label, "
          f"nan: in neither label nor prediction):")
    print(dice_table(dice, present))
    silhouettes = {}
    for t in trainers:
        if (models[t] / f"fold_{fold}" / "checkpoint_sacl_encoder.pth").is_file():
            silhouettes[t] = timer(f"silhouettes {t}", print_cluster_quality, t, models[t], fold, configuration,
                                   preprocessed_folder, device)
    print()
    print(timer.report())
    print(f"\nEverything is under {work}; the trained models: {', '.join(str(m) for m in models.values())}")
    if device == "cpu":
        print("A CPU demo trains for a few hundred iterations only: it shows the pipeline and a first comparison, "
              "not the accuracy that nnU-Net's 250,000 iterations reach.")
    print(MEASURED)
    return {"dice": dice, "present": sorted(present), "silhouettes": silhouettes}


MEASURED = ("\nWhat was measured on this data (docs/study.md, 3 folds each): at equal iterations two-phase SACL "
            "(SACLTrainer) is level with stock nnU-Net at best. The joint trainer (SACLTrainer_joint: the "
            "contrastive term added to nnU-Net's loss, no pretraining phase) beat stock nnU-Net at 825 iterations "
            "(11 of 12 validation crops, all 3 folds on the held-out scan, +0.03 to +0.05 mean Dice, no extra cost) "
            "and was level at this demo's 1,200 (-tr nnUNetTrainer_demo SACLTrainer_joint_demo runs that pair).")


def print_cluster_quality(trainer: str, model_folder: Path, fold, configuration: str, preprocessed_folder: Path,
                          device: str) -> dict:
    """The pretraining's visible effect: organ embeddings cluster (silhouette before vs after, t-SNE PNG). Scores
    computed for this very encoder file (same size and modification time) are reused, said so."""
    from nnunet_sacl.analysis.embeddings import embeddings_before_after
    folder = model_folder / f"fold_{fold}"
    png, cache = folder / "embeddings_tsne.png", folder / "embeddings_silhouettes.json"
    encoder = folder / "checkpoint_sacl_encoder.pth"
    key = {"encoder_bytes": encoder.stat().st_size, "encoder_mtime_ns": encoder.stat().st_mtime_ns,
           "cases": EMBEDDING_CASES, "configuration": configuration}
    cached = json.loads(cache.read_text()) if cache.is_file() else {}
    if cached.get("key") == key and png.is_file():
        scores = cached["scores"]
        print(f"\nReusing the silhouettes of {trainer}'s encoder from {cache}")
    else:
        scores = embeddings_before_after(str(model_folder), fold, configuration, str(preprocessed_folder),
                                         max_cases=EMBEDDING_CASES, out_png=str(png), device=device)
        cache.write_text(json.dumps({"key": key, "scores": scores}, indent=1))
    print(f"\nOrgan embeddings of {trainer}'s encoder (silhouette, cosine; higher = organs form tighter clusters):")
    for title, score in scores.items():
        print(f"  {title:20s} {score:.3f}")
    print(f"  t-SNE picture: {png}")
    return scores
