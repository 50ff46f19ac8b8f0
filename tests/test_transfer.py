"""Pretrain once, fine-tune anywhere: dataset A is a merge (``nnunet-sacl merge-datasets``) of two sources that
name and number their organs differently and label different organs (partial labels); SACL pretraining on A,
fine-tuning on dataset B with other organs and another image size. B's own plans do not fit A's encoder
(check-weights says why); A's plans moved to B do, nnU-Net's -pretrained_weights training starts from the pretrained
encoder (weights compared) and prediction works on B. Real nnU-Net commands as subprocesses."""
import glob
import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunet_sacl.dataset_conversion.synthetic import make_synthetic_dataset
from nnunet_sacl.nnunet.weights import check_weights
from tests.helpers import NNUNET_PROCESSES as P, make_nnunet_env, nnunet_bin, nnunet_folders, run

# tests that train through nnU-Net's commands or torchrun are marked slow one by one; the rest run in the fast tier

A_ID, B_ID = 993, 994
A_NAME, B_NAME = f"Dataset{A_ID}_TransferA", f"Dataset{B_ID}_TransferB"
MOVED_PLANS = f"nnUNetPlans_from{A_ID}"
B_LABELS = {"background": 0, "box": 1, "tube": 2}    # A's ellipsoid (1) is background in B; box 2->1, tube 3->2
A_TO_B = np.array([0, 0, 1, 2], np.uint8)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """nnU-Net's folders for this module only (not conftest's dataset 991)."""
    return make_nnunet_env(tmp_path_factory.mktemp("transfer"))


def train_env(env) -> dict:
    """Single-process augmentation: fast on 2 cores."""
    return dict(env, nnUNet_n_proc_DA="0")


@pytest.fixture
def in_process(env):
    """nnU-Net reads its paths from os.environ when used: in-process checks see this module's folders."""
    with nnunet_folders(env):
        yield env


def keep_two_organs(raw: Path) -> None:
    """B's label set: box and tube only, renumbered 1, 2 (A has ellipsoid 1, box 2, tube 3)."""
    rename_and_drop(raw, B_LABELS, A_TO_B)


def rename_and_drop(raw: Path, labels: dict, remap: np.ndarray) -> None:
    """A source's own label names and ids: every label file remapped voxel-wise, dataset.json's labels replaced."""
    for label_file in glob.glob(str(raw / "labels*" / "*.nii.gz")):
        image = sitk.ReadImage(label_file)
        relabelled = sitk.GetImageFromArray(remap[sitk.GetArrayFromImage(image)])
        relabelled.CopyInformation(image)
        sitk.WriteImage(relabelled, label_file)
    dataset = json.loads((raw / "dataset.json").read_text())
    dataset["labels"] = labels
    (raw / "dataset.json").write_text(json.dumps(dataset, indent=2))


@pytest.fixture(scope="module")
def merged_a(env) -> Path:
    """Dataset A = merge of source 995 (ellipsoid 1, box 2, tube 3) and source 996 ('Box' 1, 'Ellipsoid' 2, no
    tube: partial labels), both 20x48x48; unknown organ names kept as organs of their own."""
    from nnunet_sacl.dataset_conversion.merge import merge_datasets
    make_synthetic_dataset(env["nnUNet_raw"], 995, name="SourceOne", num_training=3, num_test=0)
    two = make_synthetic_dataset(env["nnUNet_raw"], 996, name="SourceTwo", num_training=3, num_test=0, seed=2)
    rename_and_drop(two, {"background": 0, "Box": 1, "Ellipsoid": 2}, np.array([0, 2, 1, 0], np.uint8))
    return merge_datasets([995, 996], A_ID, "TransferA", keep_unknown=True, raw_folder=env["nnUNet_raw"])


def test_merged_a_has_partial_labels_and_one_id_per_organ(merged_a):
    dataset = json.loads((merged_a / "dataset.json").read_text())
    assert dataset["labels"] == {"background": 0, "box": 1, "ellipsoid": 2, "tube": 3}
    assert dataset["sacl_partial_labels"] is True and dataset["numTraining"] == 6


@pytest.fixture(scope="module")
def pretrained(env, merged_a) -> dict:
    """Dataset A (the merge: 3 organs, 20x48x48) planned and preprocessed, then SACLPretrainer_smoke (partial
    labels are fine for pretraining): its fold folder and what nnUNetv2_train printed."""
    run([nnunet_bin("nnUNetv2_plan_and_preprocess"), "-d", str(A_ID), "-c", "3d_fullres", "-np", P, "-npfp", P],
        env)
    result = run([nnunet_bin("nnUNetv2_train"), str(A_ID), "3d_fullres", "0", "-tr", "SACLPretrainer_smoke",
                  "-device", "cpu"], train_env(env))
    return {"folder": Path(env["nnUNet_results"]) / A_NAME / "SACLPretrainer_smoke__nnUNetPlans__3d_fullres" / "fold_0",
            "stdout": result.stdout}


@pytest.fixture(scope="module")
def encoder_file(pretrained) -> str:
    return str(pretrained["folder"] / "checkpoint_sacl_encoder.pth")


@pytest.mark.slow
def test_pretrainer_ends_with_the_encoder_file(pretrained):
    folder = pretrained["folder"]
    log = "\n".join(p.read_text() for p in sorted(folder.glob("training_log_*.txt")))
    assert sorted(int(e) for e in re.findall(r"SACL pretraining epoch (\d+): contrastive loss", log)) == [0, 1, 2]
    # an nnU-Net training of its own: its epochs, validation (contrastive loss, nearest-neighbour organ F1), no
    # final validation
    assert len(re.findall(r"Pseudo dice \[", log)) == 3 and "Training done." in log
    assert "nothing to validate" in pretrained["stdout"] and not (folder / "validation").exists()
    encoder = torch.load(folder / "checkpoint_sacl_encoder.pth", weights_only=False)
    assert encoder["sacl"]["pretrain_epochs"] == 3 and encoder["trainer_name"] == "SACLPretrainer_smoke"
    assert all(v.device.type == "cpu" for v in encoder["network_weights"].values())
    assert (folder / "checkpoint_final.pth").is_file() and not (folder / "checkpoint_latest.pth").is_file()


@pytest.fixture(scope="module")
def planned_b(env) -> Path:
    """Dataset B (2 organs, 16x64x64: nnU-Net plans 5 stages here, 4 for A) with its own plans, not preprocessed."""
    raw = make_synthetic_dataset(env["nnUNet_raw"], B_ID, name="TransferB", num_training=5, num_test=1,
                                 shape=(16, 64, 64), seed=1)
    keep_two_organs(raw)
    run([nnunet_bin("nnUNetv2_plan_and_preprocess"), "-d", str(B_ID), "--no_pp", "-npfp", P], env)
    return raw


@pytest.fixture(scope="module")
def moved_plans(env, encoder_file, planned_b) -> str:
    """nnU-Net's way across datasets: A's plans copied to B under a new name, B preprocessed with them."""
    run([nnunet_bin("nnUNetv2_move_plans_between_datasets"), "-s", str(A_ID), "-t", str(B_ID), "-sp", "nnUNetPlans",
         "-tp", MOVED_PLANS], env)
    run([nnunet_bin("nnUNetv2_preprocess"), "-d", str(B_ID), "-plans_name", MOVED_PLANS, "-c", "3d_fullres",
         "-np", P], env)
    return MOVED_PLANS


def check_weights_cli(env, *args):
    return subprocess.run([nnunet_bin("nnunet-sacl"), "check-weights", *args], env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
def test_b_own_plans_do_not_fit_and_the_report_says_why(env, encoder_file, planned_b):
    r = check_weights_cli(env, encoder_file, "-d", str(B_ID), "-c", "3d_fullres")
    print(r.stdout)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "NO: the weights do not fit" in r.stdout
    mismatched = re.findall(r"^  (\S+): (missing|\([\d, ]+\)) -> (\([\d, ]+\))$", r.stdout, re.M)
    assert mismatched, r.stdout
    assert any(file_shape == "missing" for _, file_shape, _ in mismatched)         # B has one stage more
    assert any(file_shape != "missing" for _, file_shape, _ in mismatched)         # and other decoder shapes
    assert all(".seg_layers." not in key for key, _, _ in mismatched)
    stages = re.search(r"n_stages: file (\d+), target (\d+)", r.stdout)
    assert "other plans" in r.stdout and stages and stages.group(1) != stages.group(2), r.stdout
    assert f"-tp {MOVED_PLANS}" in r.stdout                                        # the fix names nnU-Net's recipe


@pytest.mark.slow
def test_report_agrees_with_nnunets_loader(in_process, encoder_file, planned_b):
    """nnU-Net's own load_pretrained_weights refuses B's network on a key that the report lists."""
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunet_sacl.nnunet.weights import load_target_plans
    plans_manager, config, dataset_json = load_target_plans(B_ID, "3d_fullres", "nnUNetPlans")
    network = nnUNetTrainer.build_network_architecture(plans_manager, config, 1, 3)
    with pytest.raises(AssertionError) as refused:
        load_pretrained_weights(network, encoder_file)
    report = check_weights(encoder_file, B_ID, "3d_fullres")
    first_bad_key = re.search(r"[Kk]ey (\S+) ", str(refused.value)).group(1)
    assert first_bad_key in {m.key for m in report.mismatches}


@pytest.mark.slow
def test_moved_plans_fit_fine_tune_and_predict_in_b_label_range(env, encoder_file, moved_plans, planned_b):
    r = check_weights_cli(env, encoder_file, "-d", str(B_ID), "-c", "3d_fullres", "-p", moved_plans)
    print(r.stdout)
    assert r.returncode == 0 and "YES: the weights fit" in r.stdout, r.stdout + r.stderr

    trained = run([nnunet_bin("nnUNetv2_train"), str(B_ID), "3d_fullres", "0", "-tr", "nnUNetTrainer_smoke",
                   "-p", moved_plans, "-device", "cpu", "-pretrained_weights", encoder_file], train_env(env))
    assert "Loading pretrained weights" in trained.stdout
    # the run's final validation is nnU-Net's predictor with the moved plans on B's own images
    validation = Path(env["nnUNet_results"]) / B_NAME / f"nnUNetTrainer_smoke__{moved_plans}__3d_fullres" / \
        "fold_0" / "validation"
    predictions = sorted(validation.glob("*.nii.gz"))
    assert predictions
    for prediction in predictions:
        pred = sitk.ReadImage(str(prediction))
        assert pred.GetSize() == sitk.ReadImage(str(planned_b / "labelsTr" / prediction.name)).GetSize() == (64, 64, 16)
        assert set(np.unique(sitk.GetArrayFromImage(pred)).tolist()) <= set(B_LABELS.values())


@pytest.mark.slow
def test_the_fine_tuned_run_started_from_the_pretrained_encoder(env, encoder_file, moved_plans):
    """After 8 SGD steps from the merged encoder (the previous test's run), every encoder convolution is still
    almost the pretrained one (correlation > 0.9), while nnU-Net's own random initialisation of the same network
    is unrelated to it (|correlation| < 0.3): the run started from the file, not from scratch."""
    from nnunet_sacl.nnunet.weights import load_target_plans
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    pretrained = torch.load(encoder_file, weights_only=False, map_location="cpu")["network_weights"]
    final = torch.load(os.path.join(env["nnUNet_results"], B_NAME, f"nnUNetTrainer_smoke__{moved_plans}__3d_fullres",
                                    "fold_0", "checkpoint_final.pth"), weights_only=False, map_location="cpu")
    with nnunet_folders(env):
        plans_manager, config, _ = load_target_plans(B_ID, "3d_fullres", moved_plans)
        torch.manual_seed(0)
        fresh = nnUNetTrainer.build_network_architecture(plans_manager, config, 1, 3).state_dict()
    convs = [k for k, w in pretrained.items() if k.startswith("encoder.stages.") and k.endswith("conv.weight")]
    assert convs

    def corr(a, b):
        return float(torch.corrcoef(torch.stack([a.flatten().double(), b.flatten().double()]))[0, 1])
    for key in convs:
        assert corr(final["network_weights"][key], pretrained[key]) > 0.9, key
        assert abs(corr(fresh[key], pretrained[key])) < 0.3, key


@pytest.mark.slow
def test_2d_configuration_against_a_3d_file_is_named(in_process, encoder_file):
    report = check_weights(encoder_file, A_ID, "2d")
    assert not report.fits
    assert any(c.startswith("2d vs 3d") for c in report.causes), report.causes
    assert "rank 5" in str(report) and "rank 4" in str(report)


def hand_made_file(tmp_path, weights: dict) -> str:
    """A weights file outside any results folder: no plans.json next to it, so the report infers from shapes."""
    path = str(tmp_path / "weights.pth")
    torch.save({"network_weights": weights}, path)
    return path


@pytest.mark.slow
def test_other_number_of_input_channels_is_named(in_process, encoder_file, tmp_path):
    weights = torch.load(encoder_file, weights_only=False)["network_weights"]
    for key, w in list(weights.items()):
        if w.ndim == 5 and w.shape[1] == 1:          # the first conv (and its aliases) of a 1-channel network
            weights[key] = torch.zeros(w.shape[0], 2, *w.shape[2:])
    report = check_weights(hand_made_file(tmp_path, weights), A_ID, "3d_fullres")
    assert not report.fits
    assert report.causes == ["other number of input channels: the file's first conv takes 2, the target's 1 "
                             "(dataset.json channel_names, or a cascade stage); nnunet-sacl prepare-finetune FILE -d "
                             "TARGET -c CONFIGURATION writes weights with the stem adapted to the target's channels"]
    assert all(m.file_shape[1] == 2 and m.target_shape[1] == 1 for m in report.mismatches)


@pytest.mark.slow
def test_ddp_or_compile_prefixes_are_named(in_process, encoder_file, tmp_path):
    weights = torch.load(encoder_file, weights_only=False)["network_weights"]
    report = check_weights(hand_made_file(tmp_path, {f"module._orig_mod.{k}": v for k, v in weights.items()}),
                           A_ID, "3d_fullres")
    assert not report.fits and len(report.causes) == 1 and "'module.' (DDP)" in report.causes[0], report.causes


@pytest.mark.slow
def test_other_architecture_class_is_named(in_process, encoder_file, tmp_path):
    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet
    resenc = ResidualEncoderUNet(1, 4, [32, 64, 128, 256], torch.nn.Conv3d, 3, [1, 2, 2, 2], [1, 1, 1, 1], 4,
                                 [1, 1, 1], True, torch.nn.InstanceNorm3d)
    report = check_weights(hand_made_file(tmp_path, resenc.state_dict()), A_ID, "3d_fullres")
    assert not report.fits
    assert any(c.startswith("other architecture class: the file is a ResidualEncoderUNet, the target a "
                            "PlainConvUNet") for c in report.causes), report.causes


@pytest.mark.slow
def test_errors_name_the_file_and_the_choices(in_process, encoder_file, tmp_path):
    with pytest.raises(FileNotFoundError, match="Checkpoint .*nope.pth does not exist"):
        check_weights(str(tmp_path / "nope.pth"), A_ID, "3d_fullres")
    (tmp_path / "broken.pth").write_bytes(b"PK\x03\x04 a zip archive cut short")
    with pytest.raises(RuntimeError, match="Cannot read checkpoint .*broken.pth: it is truncated"):
        check_weights(str(tmp_path / "broken.pth"), A_ID, "3d_fullres")
    (tmp_path / "notes.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="notes.pth: it is not a torch file"):
        check_weights(str(tmp_path / "notes.pth"), A_ID, "3d_fullres")
    with pytest.raises(FileNotFoundError, match=rf"plans 'nnUNetPlans_x' of {A_NAME}: no plans file "
                                                rf".*nnUNetPlans_x\.json \(its plans: nnUNetPlans"):
        check_weights(encoder_file, A_ID, "3d_fullres", "nnUNetPlans_x")
    with pytest.raises(ValueError, match=r"configuration '3d_lowres' is not in .*nnUNetPlans\.json \(it has "
                                         r".*3d_fullres"):
        check_weights(encoder_file, A_ID, "3d_lowres")


@pytest.mark.slow
def test_cli_help_and_error_exit_code(env, tmp_path):
    r = check_weights_cli(env, "--help")
    assert r.returncode == 0 and "nnunet-sacl check-weights" in r.stdout
    r = check_weights_cli(env, str(tmp_path / "nope.pth"), "-d", str(A_ID), "-c", "3d_fullres")
    assert r.returncode == 1 and "does not exist" in r.stderr


def test_one_plans_check_names_the_file_and_the_choices(tmp_path):
    """nnunet.plans.read_plans, the one plans/configuration check of train, study and check-weights (no training)."""
    from nnunet_sacl.nnunet.plans import available_plans, read_plans
    folder = tmp_path / "Dataset042_X"
    folder.mkdir()
    (folder / "nnUNetPlans.json").write_text(json.dumps({"configurations": {"2d": {}, "3d_fullres": {}}}))
    (folder / "dataset.json").write_text(json.dumps({"labels": {"background": 0}}))
    assert available_plans(folder) == ["nnUNetPlans"]
    plans_file, plans = read_plans(folder, "nnUNetPlans", "2d")
    assert plans_file == str(folder / "nnUNetPlans.json") and set(plans["configurations"]) == {"2d", "3d_fullres"}
    with pytest.raises(FileNotFoundError, match=r"plans 'Other' of Dataset042_X: no plans file .*Other\.json \(its "
                                                r"plans: nnUNetPlans; plan with nnUNetv2_plan_and_preprocess -d "
                                                r"Dataset042_X"):
        read_plans(folder, "Other", "2d")
    with pytest.raises(ValueError, match=r"configuration '3d_lowres' is not in .*nnUNetPlans\.json \(it has 2d, "
                                         r"3d_fullres\)"):
        read_plans(folder, "nnUNetPlans", "3d_lowres")
