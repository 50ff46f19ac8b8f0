"""The README demo: build the real-CT demo dataset (or the synthetic one), plan and preprocess it with nnU-Net, then
run a one-fold study (nnunet_sacl.analysis.study: nnU-Net's training of a stock baseline and SACL at equal total
iterations, nnU-Net's prediction of the held-out scan, the study's evaluation and report) and print their Dice side
by side with the paired difference, the silhouettes before/after pretraining and the wall time of each step.
Finished steps of an earlier run in the same work folder are reused (and said so), stopped trainings resume."""
import json
import math
import os
import subprocess
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from nnunet_sacl.analysis.study import nnunet_command
from nnunet_sacl.environment import planning_env, with_ext_trainer

DEFAULT_TRAINERS = ("nnUNetTrainer_demo", "SACLTrainer_demo")
DEFAULT_CONFIGURATION = "2d"
PLANS = "nnUNetPlans"
EMBEDDING_CASES = 2  # preprocessed training cases whose organ embeddings give the silhouettes (and t-SNE)


def run(cmd, env):
    print("\n$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, env=env, check=True)


@contextmanager
def nnunet_environment(work: Path):
    """nnU-Net's folders under ``work`` and SACL's trainers in this process's environment while the demo runs (the
    study's nnU-Net commands inherit it, and nnunetv2.paths reads os.environ when a folder is used), restored
    afterwards."""
    env = with_ext_trainer(os.environ)
    env.update({name: str(work / name) for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")})
    # nnU-Net's validation and prediction export through a pool of nnUNet_def_n_proc processes (default 8); on a
    # small machine starting eight interpreters costs more than the export itself
    env.setdefault("nnUNet_def_n_proc", str(min(8, os.cpu_count() or 1)))
    env.setdefault("nnUNet_n_proc_DA", "2")
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


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


def plan_and_preprocess(dataset_id: int, raw: Path, preprocessed_folder: Path, configuration: str):
    num_training = json.loads((raw / "dataset.json").read_text())["numTraining"]
    if preprocessed(preprocessed_folder, configuration, num_training):
        print(f"Reusing the plans and preprocessed {configuration} data in {preprocessed_folder}")
        return
    # nnU-Net starts -npfp processes (default 8) for the integrity check and again for the fingerprint, -np for the
    # preprocessing, each a fresh interpreter: never more than the cores or the cases (on 2 cores, 16 interpreter
    # starts for a handful of scans took longer than the planning itself)
    processes = str(max(1, min(8, os.cpu_count() or 1, num_training)))
    run([nnunet_command("nnUNetv2_plan_and_preprocess"), "-d", str(dataset_id), "-c", configuration,
         "-npfp", processes, "-np", processes, "--verify_dataset_integrity"], planning_env(os.environ))


NOT_SCORED = "-"


def dice_table(rows: list, trainers: list, organs: list) -> str:
    """Every arm's held-out Dice per organ side by side and each further arm's difference to the first (the
    baseline); organs absent from the reference label are marked, not scored; the mean is the case mean of the
    study's report (``stats.case_mean``: each case's mean over the organs in its reference label)."""
    from nnunet_sacl.analysis.stats import case_mean, in_reference, organ_mean
    base = trainers[0]
    dice = {t: {o: organ_mean(rows, t, o) for o in organs} for t in trainers}
    present = [o for o in organs if any(in_reference(r) for r in rows if r["organ"] == o)]
    widths = [max(len(t), 6) + 2 for t in trainers] + [len(f"{t} - baseline") + 2 for t in trainers[1:]]
    cells = lambda first, values: f"  {first:34s}" + "".join(f"{v:>{w}s}" for v, w in zip(values, widths))
    lines = [cells("organ", [*trainers, *(f"{t} - baseline" for t in trainers[1:])])]
    for o in organs:
        if o in present:
            lines.append(cells(o, [fmt(dice[t][o]) for t in trainers] +
                               [signed(dice[t][o] - dice[base][o]) for t in trainers[1:]]))
        else:
            lines.append(cells(o + " (absent)", [NOT_SCORED] * (2 * len(trainers) - 1)))
    means = {t: case_mean(rows, t, organs) for t in trainers}
    lines.append(cells("mean (organs present)", [fmt(means[t]) for t in trainers] +
                       [signed(means[t] - means[base]) for t in trainers[1:]]))
    lines.append(f"  baseline: {base}.")
    for t in trainers[1:]:
        diffs = [dice[t][o] - dice[base][o] for o in present]
        lines.append(f"  {t} - baseline: better on {sum(d > 0 for d in diffs)}, worse on "
                     f"{sum(d < 0 for d in diffs)} of the {len(diffs)} organs present.")
        lines.append(seed_caveat(t, means[t] - means[base]))
    if len(present) < len(organs):
        lines.append(f"  (absent): not in the held-out reference label, so Dice is undefined ('{NOT_SCORED}');\n"
                     f"  the mean is over the {len(present)} organs present, as in the study's report.md.")
    for t in trainers:
        false_positives = sorted({r["organ"] for r in rows if r["trainer"] == t and not in_reference(r)
                                  and float(r["dice"]) == 0})
        if false_positives:
            lines.append(f"  {t} labelled voxels as {', '.join(false_positives)}, absent from the reference\n"
                         "  (false positives; Dice does not score them).")
    return "\n".join(lines)


def fmt(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.3f}"


def signed(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:+.3f}"


def run_demo(workdir="sacl_demo", device="cpu", dataset_id=990, trainers=DEFAULT_TRAINERS,
             configuration=DEFAULT_CONFIGURATION, fold=0, synthetic=False, sdist=None) -> dict:
    """A one-fold study in ``workdir`` (nnUNet_raw/preprocessed/results and the study's report live there): the
    dataset, nnU-Net's planning, then the study's training, test-set prediction and evaluation, one trainer at a
    time for the timing; returns {"dice": {trainer: {organ: held-out Dice}}, "present": organs in the reference, ...}
    (Dice NaN: organ absent from every held-out reference label, not scored)."""
    work = Path(workdir).resolve()
    with nnunet_environment(work):
        return _run_demo(work, device, dataset_id, trainers, configuration, fold, synthetic, sdist)


def _run_demo(work: Path, device, dataset_id, trainers, configuration, fold, synthetic, sdist) -> dict:
    from nnunet_sacl.analysis import study as studies
    from nnunet_sacl.analysis.stats import in_reference, organ_mean
    timer = StepTimer()
    raw = timer("build the dataset", demo_dataset, work / "nnUNet_raw", dataset_id, synthetic, sdist)
    print(f"dataset: {raw}")
    preprocessed_folder = work / "nnUNet_preprocessed" / raw.name
    timer(f"plan and preprocess ({configuration})", plan_and_preprocess, dataset_id, raw, preprocessed_folder,
          configuration)
    study = studies.make_study(raw.name, configuration, trainers, [fold], device=device, out_dir=work / "study",
                               test_images=raw / "imagesTs", test_labels=raw / "labelsTs")
    for t in trainers:
        timer(f"train {t}", studies.train, replace(study, trainers=[t]))
    for t in trainers:
        timer(f"predict the test set with {t}", studies.predict_test_set, replace(study, trainers=[t]))
    report, rows = timer("evaluate and report", studies.evaluate_and_report, study, "nnunet-sacl demo")
    organs = list(study.labels)
    dice = {t: {organ: organ_mean(rows, t, organ) for organ in organs} for t in trainers}
    present = {r["organ"] for r in rows if in_reference(r)}
    print(f"\nDice on the held-out scan ({configuration}, fold {fold}):")
    print(dice_table(rows, list(trainers), organs))
    silhouettes = {}
    for run in study.runs:
        if (run.folder / "checkpoint_sacl_encoder.pth").is_file():
            silhouettes[run.trainer] = timer(f"silhouettes {run.trainer}", print_cluster_quality, run.trainer,
                                             run.folder.parent, fold, configuration, preprocessed_folder, device)
    print()
    print(timer.report())
    print(f"\nEverything is under {work}; the study's report (paired statistics, NSD, cost): {report}; the trained "
          f"models: {', '.join(str(r.folder) for r in study.runs)}")
    if device == "cpu":
        print("A CPU demo trains for a few hundred iterations only: it shows the pipeline and a first comparison, "
              "not the accuracy that nnU-Net's 250,000 iterations reach.")
    print(MEASURED)
    return {"dice": dice, "present": sorted(present), "silhouettes": silhouettes, "report": report}


# how far apart two seeds of stock nnU-Net alone put the held-out scan's mean Dice within one fold, on this data at
# 825 segmentation iterations (docs/studies/seeds: three seeds, 3 folds; the widest fold, sd over seeds 0.019)
HELD_OUT_SEED_SPREAD = 0.056


def seed_caveat(trainer: str, difference: float) -> str:
    """The demo's verdict on one run per arm: no difference is called one, and the line says why, in numbers."""
    if not math.isfinite(difference):
        return f"  {trainer} - baseline: no mean difference (no organ scored)."
    size = ("below" if abs(difference) < HELD_OUT_SEED_SPREAD else "not below")
    return (f"  {trainer} - baseline: {signed(difference)} mean Dice, one run of each: not called a difference. "
            f"Another seed of stock nnU-Net alone moved this scan's mean Dice by up to {HELD_OUT_SEED_SPREAD:.3f} "
            f"per fold here, and this difference is {size} that; a verdict needs several seeds "
            f"(nnunet-sacl study --seeds 1 2 3, docs/study.md).")


MEASURED = ("\nWhat was measured on this data (docs/studies/, 3 folds each, seeded, 825 segmentation iterations): "
            "over three seeds, two-phase SACL (SACLTrainer, 225 pretraining iterations) gained on the validation "
            "crops (+0.030, verdict gain) but not on the held-out scan (+0.009, below stock's seed spread of 0.019), "
            "and the joint trainer (SACLTrainer_joint) was level on both; at one seed, longer pretraining (up to "
            "3,600 iterations) did not help and the joint trainer was level to slightly below at 3,300 iterations. "
            "No trainer here has beaten stock nnU-Net on independent data yet.")


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
