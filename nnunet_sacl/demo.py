"""The README demo: build the real-CT demo dataset (or the synthetic one), plan and preprocess it, pretrain +
fine-tune with SACL, predict the held-out case and evaluate it, each step with nnU-Net's own commands."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from nnunet_sacl.environment import planning_env, with_ext_trainer
from nnunet_sacl.evaluation import labels_from_dataset_json


def nnunet_command(name: str) -> str:
    """The console script next to this interpreter (the venv's), else whatever PATH finds."""
    local = Path(sys.executable).parent / name
    return str(local) if local.is_file() else name


def run(cmd, env):
    print("\n$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, env=env, check=True)


def demo_dataset(raw_folder: Path, dataset_id: int, synthetic: bool, sdist=None) -> Path:
    """The demo's raw dataset folder, built if it is not there yet."""
    if synthetic:
        from nnunet_sacl.synthetic import make_synthetic_dataset
        folder = raw_folder / f"Dataset{dataset_id:03d}_SACLSynthetic"
        return folder if folder.is_dir() else make_synthetic_dataset(raw_folder, dataset_id)
    from nnunet_sacl.demo_data import DATASET_NAME, build_demo_dataset
    folder = raw_folder / f"Dataset{dataset_id:03d}_{DATASET_NAME}"
    return folder if folder.is_dir() else build_demo_dataset(dataset_id, raw_folder, sdist=sdist)


def run_demo(workdir="sacl_demo", device="cpu", dataset_id=990, trainer="SACLTrainer_demo", fold=0,
             synthetic=False, sdist=None) -> dict:
    """Runs the whole pipeline in ``workdir`` (nnUNet_raw/preprocessed/results live there); returns nnU-Net's
    evaluation summary (summary.json) of the held-out case(s)."""
    work = Path(workdir).resolve()
    env = with_ext_trainer(os.environ)
    env.update(nnUNet_raw=str(work / "nnUNet_raw"), nnUNet_preprocessed=str(work / "nnUNet_preprocessed"),
               nnUNet_results=str(work / "nnUNet_results"))
    raw = demo_dataset(work / "nnUNet_raw", dataset_id, synthetic, sdist)
    print(f"dataset: {raw}")
    labels = labels_from_dataset_json(raw / "dataset.json")
    d = str(dataset_id)
    run([nnunet_command("nnUNetv2_plan_and_preprocess"), "-d", d, "-c", "3d_fullres", "-np", "2",
         "--verify_dataset_integrity"], planning_env(env))
    train_env = dict(env, nnUNet_n_proc_DA=env.get("nnUNet_n_proc_DA", "2"))
    run([nnunet_command("nnUNetv2_train"), d, "3d_fullres", str(fold), "-tr", trainer, "-device", device], train_env)
    pred = work / "predictions" / trainer
    run([nnunet_command("nnUNetv2_predict"), "-i", str(raw / "imagesTs"), "-o", str(pred), "-d", d,
         "-c", "3d_fullres", "-f", str(fold), "-tr", trainer, "-device", device], env)
    run([nnunet_command("nnUNetv2_evaluate_simple"), str(raw / "labelsTs"), str(pred),
         "-l", *[str(v) for v in labels.values()]], env)
    summary = json.loads((pred / "summary.json").read_text())
    model = work / "nnUNet_results" / raw.name / f"{trainer}__nnUNetPlans__3d_fullres"
    print(f"\nDice on the held-out case(s) ({trainer}; nan: organ in neither label nor prediction):")
    dice = {name: summary["mean"][str(label)]["Dice"] for name, label in labels.items()}
    for name, value in dice.items():
        print(f"  {name:32s} {value:.3f}")
    print(f"  {'mean':32s} {np.nanmean(list(dice.values())):.3f}")
    print_cluster_quality(model, fold, work / "nnUNet_preprocessed" / raw.name, device)
    print(f"\nEverything is under {work}; the trained model: {model}")
    if device == "cpu":
        print("A CPU demo trains for a few hundred iterations only: it shows the pipeline, not the accuracy that "
              "nnU-Net's 250,000 iterations reach. The silhouette above shows what SACL pretraining did.")
    return summary


def print_cluster_quality(model_folder: Path, fold, preprocessed_folder: Path, device: str) -> None:
    """The pretraining's visible effect: organ embeddings cluster (silhouette before vs after, t-SNE PNG)."""
    from nnunet_sacl.embeddings import embeddings_before_after
    png = model_folder / f"fold_{fold}" / "embeddings_tsne.png"
    scores = embeddings_before_after(str(model_folder), fold, "3d_fullres", str(preprocessed_folder),
                                     out_png=str(png), device=device)
    print("\nOrgan embeddings of the encoder (silhouette, cosine; higher = organs form tighter clusters):")
    for title, score in scores.items():
        print(f"  {title:20s} {score:.3f}")
    print(f"  t-SNE picture: {png}")
