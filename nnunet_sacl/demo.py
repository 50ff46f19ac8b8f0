"""The README demo: generate a small dataset, plan and preprocess it, pretrain + fine-tune with SACL, predict the
held-out cases and evaluate them, each step with nnU-Net's own commands."""
import json
import os
import subprocess
import sys
from pathlib import Path

from nnunet_sacl.environment import with_ext_trainer
from nnunet_sacl.synthetic import ORGANS, make_synthetic_dataset


def nnunet_command(name: str) -> str:
    """The console script next to this interpreter (the venv's), else whatever PATH finds."""
    local = Path(sys.executable).parent / name
    return str(local) if local.is_file() else name


def run(cmd, env):
    print("\n$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, env=env, check=True)


def run_demo(workdir="sacl_demo", device="cpu", dataset_id=990, trainer="SACLTrainer_demo", fold=0) -> dict:
    """Runs the whole pipeline in ``workdir`` (nnUNet_raw/preprocessed/results live there); returns the
    evaluation summary (nnU-Net's summary.json)."""
    work = Path(workdir).resolve()
    env = with_ext_trainer(os.environ)
    env.update(nnUNet_raw=str(work / "nnUNet_raw"), nnUNet_preprocessed=str(work / "nnUNet_preprocessed"),
               nnUNet_results=str(work / "nnUNet_results"))
    raw = work / "nnUNet_raw" / f"Dataset{dataset_id:03d}_SACLSynthetic"
    if not raw.is_dir():
        make_synthetic_dataset(work / "nnUNet_raw", dataset_id)
        print(f"generated {raw}")
    d = str(dataset_id)
    run([nnunet_command("nnUNetv2_plan_and_preprocess"), "-d", d, "-c", "3d_fullres", "-np", "2",
         "--verify_dataset_integrity"], env)
    train_env = dict(env, nnUNet_n_proc_DA=env.get("nnUNet_n_proc_DA", "2"))
    run([nnunet_command("nnUNetv2_train"), d, "3d_fullres", str(fold), "-tr", trainer, "-device", device], train_env)
    pred = work / "predictions" / trainer
    run([nnunet_command("nnUNetv2_predict"), "-i", str(raw / "imagesTs"), "-o", str(pred), "-d", d,
         "-c", "3d_fullres", "-f", str(fold), "-tr", trainer, "-device", device], env)
    run([nnunet_command("nnUNetv2_evaluate_simple"), str(raw / "labelsTs"), str(pred),
         "-l", *[str(v) for v in ORGANS.values()]], env)
    summary = json.loads((pred / "summary.json").read_text())
    print(f"\nDice on the held-out cases ({trainer}):")
    for name, label in ORGANS.items():
        print(f"  {name:10s} {summary['mean'][str(label)]['Dice']:.3f}")
    print(f"  {'mean':10s} {summary['foreground_mean']['Dice']:.3f}")
    print(f"\nEverything is under {work}; the trained model: "
          f"{work / 'nnUNet_results' / raw.name / (trainer + '__nnUNetPlans__3d_fullres')}")
    return summary
