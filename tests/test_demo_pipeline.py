"""The README demo on the real-CT dataset, on CPU, with the smoke trainer: nnunet-sacl demo runs nnU-Net's
plan/preprocess, train (both SACL phases), predict and evaluate, and reports a Dice per organ."""
import json
import re

from tests.conftest import nnunet_bin, run


def test_demo_pipeline_on_real_ct(nnunet_env, sdist, tmp_path):
    env = {k: v for k, v in nnunet_env.items() if k != "nnUNet_extTrainer"}  # the demo sets it itself
    env["nnUNet_n_proc_DA"] = "0"
    result = run([nnunet_bin("nnunet-sacl"), "demo", "--workdir", str(tmp_path), "-d", "995", "--device", "cpu",
                  "-tr", "SACLTrainer_smoke", "--sdist", str(sdist)], env, timeout=900)
    summary_file = tmp_path / "predictions" / "SACLTrainer_smoke" / "summary.json"
    summary = json.loads(summary_file.read_text())
    dataset_json = json.loads((tmp_path / "nnUNet_raw" / "Dataset995_SACLDemoCT" / "dataset.json").read_text())
    organs = [k for k in dataset_json["labels"] if k != "background"]
    assert len(organs) == 12 and set(summary["mean"]) == {str(dataset_json["labels"][o]) for o in organs}
    dice_block = result.stdout[result.stdout.index("Dice on the held-out"):result.stdout.index("Organ embeddings")]
    printed = re.findall(r"^  (\S.*?)\s+(nan|\d\.\d{3})$", dice_block, re.M)
    assert [name for name, _ in printed] == organs + ["mean"]
    assert re.search(r"after pretraining\s+-?\d\.\d{3}", result.stdout)
    assert (tmp_path / "nnUNet_results" / "Dataset995_SACLDemoCT" / "SACLTrainer_smoke__nnUNetPlans__3d_fullres"
            / "fold_0" / "embeddings_tsne.png").stat().st_size > 10_000
    assert "SACL pretraining done" in "".join(p.read_text() for p in tmp_path.rglob("training_log_*.txt"))
