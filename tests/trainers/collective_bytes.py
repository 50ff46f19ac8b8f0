"""Bytes exchanged per SACL pretraining step at the BTCV-like plan (plans/), measured with 2 gloo ranks on the CPU.

    .venv/bin/python tests/trainers/collective_bytes.py

One step of SACLPretrainer_fixedbatch (a fixed random batch in the plan's patch size, organ labels 0..13) under
``torchrun --standalone --nproc_per_node 2 -m nnunet_sacl.train``; the plan needs no images for that, so a
preprocessed folder with only the plans and dataset.json is made in a temporary folder. Prints the counted bytes
per collective and the encoder + head parameter count.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from glob import glob
from os.path import dirname, join

HERE = dirname(os.path.abspath(__file__))
PLANS = join(dirname(dirname(HERE)), "plans")


def main() -> None:
    from nnunet_sacl import trainers_folder
    with tempfile.TemporaryDirectory() as tmp:
        dataset = join(tmp, "preprocessed", "Dataset017_BTCVLike")
        os.makedirs(join(dataset, "nnUNetPlans_3d_fullres"))
        shutil.copy(join(PLANS, "btcv_like_nnUNetPlans.json"), join(dataset, "nnUNetPlans.json"))
        shutil.copy(join(PLANS, "btcv_like_dataset.json"), join(dataset, "dataset.json"))
        json.dump({}, open(join(dataset, "dataset_fingerprint.json"), "w"))
        open(join(dataset, "nnUNetPlans_3d_fullres", "placeholder.b2nd"), "w").close()
        env = dict(os.environ, nnUNet_raw=join(tmp, "raw"), nnUNet_preprocessed=join(tmp, "preprocessed"),
                   nnUNet_results=join(tmp, "results"), nnUNet_n_proc_DA="0", nnUNet_compile="f",
                   nnUNet_extTrainer=os.pathsep.join([str(trainers_folder()), HERE]))
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "nnunet_sacl.cli", "train", "17", "3d_fullres", "0", "-tr", "SACLPretrainer_fixedbatch",
                        "-device", "cpu"], env=env, check=True, timeout=1800, stdout=subprocess.DEVNULL)
        log = "".join(open(f).read() for f in glob(join(tmp, "results", "*", "*", "fold_0", "training_log_*.txt")))
        print(re.search(r"collective payload of one pretraining step.*", log).group(0))
        print(re.search(r"SACL pretraining epoch 0: .*", log).group(0))
        import torch
        weights = torch.load(glob(join(tmp, "results", "*", "*", "fold_0", "checkpoint_final.pth"))[0],
                             weights_only=False, map_location="cpu")
        # nnU-Net's conv blocks register each module twice (all_modules): count every tensor once
        encoder = {v.data_ptr(): v.numel() for k, v in weights["network_weights"].items() if k.startswith("encoder.")}
        head = sum(v.numel() for v in weights["sacl"]["head"].values())
        print(f"encoder parameters {sum(encoder.values())}, projection head parameters {head}")


if __name__ == "__main__":
    main()
