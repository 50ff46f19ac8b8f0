"""Encoder files of nnunet-sacl through nnU-Net master's own fine-tuning path for pretrained checkpoints
(docs/results/nnunet-master-path.md).

Two steps, in two environments (nnU-Net master is not on PyPI; it has its own virtual environment):

  python benchmarks/nnunet_master_path.py product ROOT          # nnunet-sacl's environment
  MASTER_PYTHON benchmarks/nnunet_master_path.py master ROOT    # an environment with nnU-Net master installed

``product``: source dataset A (1 channel, 32x32x32 at 1 mm) planned with nnUNetPlans and nnUNetResEncUNetMPlans;
encoder files written by SACLPretrainer_smoke (Plain U-Net and ResEnc) and SACLTrainer_smoke (ResEnc); the files
copied to ROOT/files, then A's raw, preprocessed and results folders deleted. Targets: B (1 channel, 16x56x56 at
2.5x0.8x0.8 mm: another size and spacing, anisotropic), C (2 channels, 24x40x40 at 1.5 mm) and D (as C with 1
channel), each planned with both plans.
``master``: for every file and target of its plans, nnU-Net master's ``nnUNetv2_plan_like_dynamic``, then its
DynamicPretrainedTrainer built in this process with a short run (1 epoch of 2 iterations, CPU): which encoder tensors
arrived unchanged, how the stem was adapted, and whether training ran. SACLTrainer's ResEnc file also through
``nnUNetv2_preprocess_like_nnssl`` and PretrainedTrainer. Results: ROOT/results.json and a table on stdout.
"""
import glob
import json
import os
import shutil
import subprocess
import sys
import traceback
from pathlib import Path

A, B, C, D = 971, 972, 973, 974
TARGETS = {B: dict(name="MasterB", shape=(16, 56, 56), spacing=(2.5, 0.8, 0.8), seed=1, channels=1),
           C: dict(name="MasterC", shape=(24, 40, 40), spacing=(1.5, 1.5, 1.5), seed=3, channels=2),
           D: dict(name="MasterD", shape=(24, 40, 40), spacing=(1.5, 1.5, 1.5), seed=4, channels=1)}
# $ONLY="file:target,..." runs only those pairs (e.g. plain_SACLPretrainer:974)
ONLY = [tuple(p.split(":")) for p in os.environ.get("ONLY", "").split(",") if p]
PLANS = {"plain": "nnUNetPlans", "resenc": "nnUNetResEncUNetMPlans"}
FILES = {  # name: (trainer, plans)
    "plain_SACLPretrainer": ("SACLPretrainer_smoke", "plain"),
    "resenc_SACLPretrainer": ("SACLPretrainer_smoke", "resenc"),
    "resenc_SACLTrainer": ("SACLTrainer_smoke", "resenc"),
}


def environment(root: Path) -> dict:
    env = dict(os.environ)
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (root / key).mkdir(parents=True, exist_ok=True)
        env[key] = str(root / key)
    env.update(nnUNet_n_proc_DA="1", nnUNet_compile="f", nnUNet_def_n_proc="1")
    os.environ.update(env)
    return env


def run(cmd, env):
    print("$", " ".join(map(str, cmd)), flush=True)
    subprocess.run([str(c) for c in cmd], env=env, check=True)


def bin_of(name):
    return str(Path(sys.executable).parent / name)


def product(root: Path) -> None:
    import SimpleITK as sitk
    from nnunet_sacl.dataset_conversion.synthetic import make_synthetic_dataset
    env = environment(root)
    env["nnUNet_extTrainer"] = str(Path(__file__).resolve().parent.parent / "trainers")
    make_synthetic_dataset(env["nnUNet_raw"], A, name="MasterA", num_training=5, num_test=0, shape=(32, 32, 32),
                           spacing=(1.0, 1.0, 1.0))
    for dataset_id, target in TARGETS.items():
        raw = make_synthetic_dataset(env["nnUNet_raw"], dataset_id, name=target["name"], num_training=4, num_test=0,
                                     shape=target["shape"], spacing=target["spacing"], seed=target["seed"])
        if target["channels"] == 2:
            for image in raw.glob("imagesTr/*_0000.nii.gz"):
                second = sitk.Cast(sitk.ReadImage(str(image)), sitk.sitkFloat32) * 1.2 + 10
                sitk.WriteImage(second, str(image).replace("_0000.nii.gz", "_0001.nii.gz"))
            dataset = json.loads((raw / "dataset.json").read_text())
            dataset["channel_names"] = {"0": "CT", "1": "CT"}
            (raw / "dataset.json").write_text(json.dumps(dataset, indent=2))
    for dataset_id in (A, B, C, D):
        run([bin_of("nnUNetv2_plan_and_preprocess"), "-d", dataset_id, "-c", "3d_fullres", "-np", 1, "-npfp", 1], env)
        run([bin_of("nnUNetv2_plan_experiment"), "-d", dataset_id, "-pl", "nnUNetPlannerResEncM"], env)
    files = root / "files"
    files.mkdir(exist_ok=True)
    for name, (trainer, plans) in FILES.items():
        run([bin_of("nnUNetv2_train"), A, "3d_fullres", 0, "-tr", trainer, "-p", PLANS[plans], "-device", "cpu"], env)
        found = glob.glob(f"{env['nnUNet_results']}/Dataset{A}_MasterA/{trainer}__{PLANS[plans]}__3d_fullres/"
                          f"fold_0/**/checkpoint_sacl_encoder.pth", recursive=True)
        shutil.copy(found[0], files / f"{name}.pth")
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        shutil.rmtree(Path(env[key]) / f"Dataset{A}_MasterA")


def encoder_comparison(network, weights: dict, channels: int) -> dict:
    """Which of the target network's encoder tensors (encoder.*, the decoder's references left out) hold the file's
    values: unchanged, changed (of another shape than the file's: a kernel averaged, the stem adapted) or new (not in
    the file, or left as initialised)."""
    import torch
    state = network.state_dict()
    keys = [k for k in state if k.startswith("encoder.")]
    unchanged, changed, new = [], [], []
    for k in keys:
        w, t = weights.get(k), state[k].cpu()
        if w is not None and w.shape == t.shape and torch.equal(w, t):
            unchanged.append(k)
        elif w is not None and w.shape != t.shape:
            changed.append(k)          # adapted: a kernel averaged, the stem's channels
        else:
            new.append(k)              # not in the file, or of its shape but not loaded (as initialised)
    stem_key = network.keys_to_in_proj[0] + ".weight"
    w, s = weights[stem_key], state[stem_key].cpu()
    if w.shape == s.shape and torch.equal(w, s):
        stem = "unchanged"
    elif w.shape[1] == 1 and s.shape[1] == channels and s.shape[2:] == w.shape[2:] and \
            torch.allclose(s, w.repeat(1, channels, *[1] * (w.ndim - 2)) / channels):
        stem = f"repeated over {channels} channels and divided by {channels}"
    elif s.shape[2:] != w.shape[2:]:
        stem = f"kernel {list(w.shape[2:])} -> {list(s.shape[2:])}"
    else:
        stem = "other"
    # the file's tensors that reached the network at all (changed or not), by prefix
    return {"encoder_tensors": len(keys), "unchanged": len(unchanged), "changed": len(changed), "new": len(new),
            "fraction_unchanged": round(len(unchanged) / len(keys), 3), "stem": stem,
            "changed_keys": changed[:8], "new_keys": new[:8]}


def trainer_run(trainer_class, plans_file: Path, dataset_id: int, weights: dict, channels: int) -> dict:
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import convert_id_to_dataset_name
    name = convert_id_to_dataset_name(dataset_id)
    plans = dict(load_json(str(plans_file)), continue_training=False)    # as master's run_training sets it
    dataset_json = load_json(os.path.join(nnUNet_preprocessed, name, "dataset.json"))
    trainer = trainer_class(plans, "3d_fullres", 0, dataset_json, device=torch.device("cpu"))
    trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch = 1, 2, 1
    trainer.initialize()
    result = encoder_comparison(trainer.network, weights, channels)
    result["lr"], result["batch_size"] = trainer.initial_lr, trainer.batch_size
    trainer.run_training()
    losses = getattr(trainer.logger, "local_logger", trainer.logger).my_fantastic_logging["train_losses"]
    result["train_loss"] = [round(float(v), 4) for v in losses]
    return result


def master(root: Path) -> None:
    import torch
    import nnunetv2
    from nnunetv2.training.nnUNetTrainer.pretraining.dynamicPretrainedTrainer import DynamicPretrainedTrainer
    from nnunetv2.training.nnUNetTrainer.pretraining.pretrainedTrainer import PretrainedTrainer
    env = environment(root)
    for dataset_id, target in TARGETS.items():     # 4 cases: one fold of 3 training and 1 validation case (nnU-Net's
        folder = Path(env["nnUNet_preprocessed"]) / f"Dataset{dataset_id:03d}_{target['name']}"   # 5 folds need 5)
        cases = sorted(p.name[:-len(".nii.gz")] for p in (folder / "gt_segmentations").glob("*.nii.gz"))
        (folder / "splits_final.json").write_text(json.dumps([{"train": cases[1:], "val": cases[:1]}]))
    results = []
    for name, (trainer, plans) in FILES.items():
        file = root / "files" / f"{name}.pth"
        weights = torch.load(file, weights_only=True)["network_weights"]
        for dataset_id, target in TARGETS.items():
            folder = Path(env["nnUNet_preprocessed"]) / f"Dataset{dataset_id:03d}_{target['name']}"
            if ONLY and (name, str(dataset_id)) not in ONLY:
                continue
            row = {"file": name, "target": f"Dataset{dataset_id}_{target['name']}", "channels": target["channels"],
                   "plans": PLANS[plans]}
            for path in ("dynamic", "like_nnssl") if name == "resenc_SACLTrainer" else ("dynamic",):
                try:
                    if path == "dynamic":
                        run([bin_of("nnUNetv2_plan_like_dynamic"), "-d", dataset_id, "-n", name, "-pc", file,
                             "-pl", PLANS[plans], "-np", 1], env)
                        plans_file, cls = folder / f"ptPlans_dynamic__{name}.json", DynamicPretrainedTrainer
                    else:
                        run([bin_of("nnUNetv2_preprocess_like_nnssl"), "-d", dataset_id, "-n", name, "-pc", file,
                             "-np", 1], env)
                        plans_file = next(folder.glob(f"ptPlans__{name}____*.json"))
                        cls = PretrainedTrainer
                    row[path] = trainer_run(cls, plans_file, dataset_id, weights, target["channels"])
                except Exception as e:        # what master does with the file is the result
                    row[path] = {"error": f"{type(e).__name__}: {e}"[:400],
                                 "where": traceback.format_exc().splitlines()[-3][:200]}
                print(json.dumps(row[path]), flush=True)
            results.append(row)
    (root / "results.json").write_text(json.dumps({"nnunetv2": nnunetv2.__file__, "rows": results}, indent=1))
    for row in results:
        for path in ("dynamic", "like_nnssl"):
            r = row.get(path)
            if r is not None:
                print(f"| {row['file']} | {row['target']} ({row['channels']} ch) | {path} | "
                      + (f"{r['unchanged']}/{r['encoder_tensors']} ({r['fraction_unchanged']:.0%}) | {r['stem']} | "
                         f"{r['train_loss']}" if "error" not in r else f"failed: {r['error'][:160]} | | ") + " |")


if __name__ == "__main__":
    {"product": product, "master": master}[sys.argv[1]](Path(sys.argv[2]).resolve())
