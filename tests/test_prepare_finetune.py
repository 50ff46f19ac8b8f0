"""An encoder file anyone can fine-tune from: ``nnunet-sacl prepare-finetune`` with nothing from the source but the
file. Dataset A (README's dataset) is pretrained by README's SACLTrainer_smoke run in README's own folders; only its
encoder file is kept, in folders that never held A; B (other image size, spacing and labels) and C (two input
channels) are prepared from it and trained with the printed nnUNetv2_train line (real nnU-Net subprocesses). The
refusals, and a file whose unpickling would run code, in the fast tier (nothing trains)."""
import json
import os
import pickle
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunet_sacl.dataset_conversion.synthetic import make_synthetic_dataset
from tests.helpers import DATASET_ID, DATASET_NAME, NNUNET_PROCESSES as P, correlation, encoder_keys, in_process, \
    make_nnunet_env, nnunet_bin, nnunet_folders, nothing_written, prepare_cli, pretrained_weights, printed_line, \
    pretraining_folder, printed_train_line, readme_model, refused, run, train_env

A_ID, B_ID, C_ID, FLAT_ID, PLAIN_ID = DATASET_ID, 982, 983, 984, 985     # A: README's dataset, README's run
A_NAME, B_NAME, C_NAME = DATASET_NAME, f"Dataset{B_ID}_FinetuneB", f"Dataset{C_ID}_FinetuneC"
PLANS = f"nnUNetPlans_from{A_ID}"
TRAINING_TIMEOUT = 1800     # a smoke training takes about 30 s; on a machine shared with other trainings, minutes
B_LABELS = {"background": 0, "box": 1, "tube": 2}     # A's ellipsoid (1) is background in B; box 2->1, tube 3->2


# ------------------------------------------------------------------------------------------------ the method
def test_stem_for_channels_keeps_the_response_to_a_repeated_image():
    """Independent of the implementation: the adapted stem is the file's stem copied to every channel and halved
    (two channels), and a conv with it on an image repeated over the channels equals the file's conv on the image."""
    from nnunet_sacl.nnunet.prepare_finetune import stem_for_channels
    torch.manual_seed(0)
    w = torch.randn(8, 1, 3, 3, 3)
    adapted = stem_for_channels(w, 2)
    assert torch.equal(adapted, torch.cat([w, w], 1) / 2)
    x = torch.randn(1, 1, 6, 6, 6)
    assert torch.allclose(torch.nn.functional.conv3d(x.repeat(1, 2, 1, 1, 1), adapted),
                          torch.nn.functional.conv3d(x, w), atol=1e-5)
    two = torch.randn(8, 2, 3, 3)      # two channels to three: the sum over the file's channels, spread
    assert torch.allclose(stem_for_channels(two, 3), (two[:, :1] + two[:, 1:]).repeat(1, 3, 1, 1) / 3)


# ------------------------------------------------------------------------------------------------ refusals (fast)
@pytest.fixture(scope="module")
def refusal_env(tmp_path_factory, preprocessed, nnunet_env):
    """Targets in a raw folder of this module's own: a 3D dataset and one of 2D images; nnUNet_preprocessed empty.
    A file with plans: the session dataset's nnUNetPlans and a network built from them."""
    root = tmp_path_factory.mktemp("prepare_refusals")
    env = make_nnunet_env(root)
    make_synthetic_dataset(env["nnUNet_raw"], PLAIN_ID, name="Target", num_training=2, num_test=0, shape=(8, 24, 24))
    flat = Path(env["nnUNet_raw"]) / f"Dataset{FLAT_ID}_Flat"
    for sub in ("imagesTr", "labelsTr"):
        (flat / sub).mkdir(parents=True)
    for i in range(2):
        for array, path in ((np.zeros((24, 24), np.float32), flat / "imagesTr" / f"flat_{i}_0000.nii.gz"),
                            (np.eye(24, dtype=np.uint8), flat / "labelsTr" / f"flat_{i}.nii.gz")):
            sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    (flat / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0, "a": 1},
                                                   "numTraining": 2, "file_ending": ".nii.gz"}))
    folder = Path(nnunet_env["nnUNet_preprocessed"]) / DATASET_NAME
    plans = json.loads((folder / "nnUNetPlans.json").read_text())
    dataset_json = json.loads((folder / "dataset.json").read_text())
    with nnunet_folders(nnunet_env):
        from nnunet_sacl.nnunet.weights import load_target_plans
        from nnunet_sacl.nnunet.network import build_nnunet_network
        manager, config, _ = load_target_plans(DATASET_NAME, "3d_fullres", "nnUNetPlans")
        weights = build_nnunet_network(manager, config, dataset_json, True).state_dict()
    file = root / "received" / "fold_0" / "checkpoint_final.pth"
    file.parent.mkdir(parents=True)
    torch.save({"network_weights": weights, "init_args": {"plans": plans, "configuration": "3d_fullres",
                                                          "dataset_json": dataset_json}}, file)
    return dict(env, file=str(file), weights=weights, root=str(root))


def test_refusals_name_what_is_wrong_and_leave_nothing_behind(refusal_env, tmp_path):
    env, target = refusal_env, str(PLAIN_ID)
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    refused(env, r"notes.pth: it is not a torch file", str(tmp_path / "notes.pth"), "-d", target, "-c", "3d_fullres")
    torch.save({"state_dict": refusal_env["weights"]}, tmp_path / "other.pth")
    refused(env, r"other.pth is not an nnU-Net checkpoint \(no 'network_weights' entry\)", str(tmp_path / "other.pth"),
            "-d", target, "-c", "3d_fullres")
    torch.save({"network_weights": refusal_env["weights"], "trainer_name": "X"}, tmp_path / "bare.pth")
    refused(env, r"bare.pth holds no plans: it has no 'init_args' entry with 'plans' \(its entries: "
                 r"network_weights, trainer_name\) and there is no plans.json two folders up",
            str(tmp_path / "bare.pth"), "-d", target, "-c", "3d_fullres")
    refused(env, r"configuration '3d_lowres' is not in the plans of .*checkpoint_final.pth \(they have 2d, "
                 r"3d_fullres; it was trained as 3d_fullres\)", env["file"], "-d", target, "-c", "3d_lowres")
    refused(env, rf"Dataset{FLAT_ID}_Flat has 2D images, the file's network is 3D \(3d_fullres",
            env["file"], "-d", str(FLAT_ID), "-c", "3d_fullres")
    refused(env, r"the weights of .* do not fit the network its own plans build for 2d .* it was trained as "
                 r"3d_fullres", env["file"], "-d", target, "-c", "2d")
    refused(env, r"target dataset 977: Could not find a dataset with the ID 977", env["file"], "-d", "977", "-c",
            "3d_fullres")
    taken = Path(env["nnUNet_preprocessed"]) / f"Dataset{PLAIN_ID}_Target" / "nnUNetPlans_from991.json"
    taken.parent.mkdir(parents=True)
    taken.write_text('{"configurations": {}}')
    code, out, err = prepare_cli(env, "prepare-finetune", env["file"], "-d", target, "-c", "3d_fullres")
    assert code == 1 and re.search(r"error: .*nnUNetPlans_from991.json exists and holds other plans than those of "
                                   r".*checkpoint_final.pth: choose another name with -p\n$", err), err
    assert [p.name for p in taken.parent.iterdir()] == [taken.name] and taken.read_text() == '{"configurations": {}}'
    shutil.rmtree(taken.parent)


class WritesAMarker:
    """Unpickling this runs code: it writes the marker file."""
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "code from the file ran"))


def test_a_file_that_would_run_code_is_refused_unopened(refusal_env, tmp_path, monkeypatch):
    marker = tmp_path / "marker.txt"
    file = tmp_path / "gift.pth"
    torch.save({"network_weights": refusal_env["weights"], "init_args": {"plans": {}}, "extra": WritesAMarker(marker)},
               file)
    for command in ("prepare-finetune", "check-weights"):
        err = refused(refusal_env, r"gift.pth is not loaded: it needs more than tensors and plain values "
                                   r"\(.*pathlib.PosixPath.*\), and unpickling such a file can run any code it carries\. "
                                   r"If you trust its source, keep only its weights and plans: python -c",
                      str(file), "-d", str(PLAIN_ID), "-c", "3d_fullres", command=command)
        assert not marker.exists()
    # the way on that the message gives works (the user trusts the file): a plain copy, which loads safely
    way_on = re.search(r'python -c "(.*)" and pass', err).group(1)
    monkeypatch.chdir(tmp_path)
    exec(way_on, {})
    assert marker.exists()      # the trusted load ran the file's code, as the message warned
    assert set(torch.load(tmp_path / "plain.pth", weights_only=True)) == {"network_weights", "init_args"}


# ------------------------------------------------------------------------------------------------ end to end (slow)
@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return make_nnunet_env(tmp_path_factory.mktemp("prepare_finetune"))


@pytest.fixture(scope="module")
def received(env, readme_run, nnunet_env, resenc_plans, tmp_path_factory) -> dict:
    """A: README's dataset 991 (3 organs, 20x48x48 at 3x1x1 mm), pretrained by README's SACLTrainer_smoke run in
    README's own nnU-Net folders, which this module's ``env`` never sees. What is kept: its encoder file, nnU-Net's
    checkpoint_final.pth of the same pretraining (phase 1), and nnU-Net checkpoints (that format) of A's 2d and ResEnc
    networks, randomly initialised (the ResEnc plans of the session's copy of dataset 991)."""
    from nnunet_sacl.nnunet.weights import load_target_plans
    from nnunet_sacl.nnunet.network import build_nnunet_network
    folder = Path(readme_model(readme_run))
    kept = tmp_path_factory.mktemp("received")
    files = {"encoder": str(kept / "checkpoint_sacl_encoder.pth"), "final": str(kept / "checkpoint_final.pth")}
    shutil.copy(folder / "checkpoint_sacl_encoder.pth", files["encoder"])
    shutil.copy(Path(pretraining_folder(folder)) / "checkpoint_final.pth", files["final"])
    final = torch.load(files["final"], weights_only=False)
    for name, plans_name, configuration, source in (("2d", "nnUNetPlans", "2d", readme_run["env"]),
                                                    ("resenc", resenc_plans, "3d_fullres", nnunet_env)):
        with nnunet_folders(source):
            manager, config, dataset_json = load_target_plans(A_ID, configuration, plans_name)
            network = build_nnunet_network(manager, config, dataset_json, True)
        files[name] = str(kept / f"{name}_checkpoint_final.pth")
        torch.save(dict(final, network_weights=network.state_dict(), init_args=dict(
            final["init_args"], plans=manager.plans, configuration=configuration)), files[name])
    assert not any((Path(env[key]) / A_NAME).exists() for key in ("nnUNet_raw", "nnUNet_preprocessed",
                                                                    "nnUNet_results"))
    return files


def remap_labels(raw: Path, labels: dict, remap: np.ndarray) -> None:
    for label_file in raw.glob("labels*/*.nii.gz"):
        image = sitk.ReadImage(str(label_file))
        relabelled = sitk.GetImageFromArray(remap[sitk.GetArrayFromImage(image)])
        relabelled.CopyInformation(image)
        sitk.WriteImage(relabelled, str(label_file))
    dataset = json.loads((raw / "dataset.json").read_text())
    (raw / "dataset.json").write_text(json.dumps(dict(dataset, labels=labels), indent=2))


@pytest.fixture(scope="module")
def raw_b(env) -> Path:
    """B: two organs (box 1, tube 2), 16x56x56 at 2.5x0.8x0.8 mm; nothing planned."""
    raw = make_synthetic_dataset(env["nnUNet_raw"], B_ID, name="FinetuneB", num_training=5, num_test=1,
                                 shape=(16, 56, 56), spacing=(2.5, 0.8, 0.8), seed=1)
    remap_labels(raw, B_LABELS, np.array([0, 0, 1, 2], np.uint8))
    return raw


@pytest.fixture(scope="module")
def raw_c(env) -> Path:
    """C: A's organs in two input channels (the second a brighter copy of the first)."""
    raw = make_synthetic_dataset(env["nnUNet_raw"], C_ID, name="FinetuneC", num_training=5, num_test=0, seed=3)
    for image in raw.glob("imagesTr/*_0000.nii.gz"):
        second = sitk.Cast(sitk.ReadImage(str(image)), sitk.sitkFloat32) * 1.2 + 10
        sitk.WriteImage(second, str(image).replace("_0000.nii.gz", "_0001.nii.gz"))
    dataset = json.loads((raw / "dataset.json").read_text())
    (raw / "dataset.json").write_text(json.dumps(dict(dataset, channel_names={"0": "CT", "1": "CT"}), indent=2))
    return raw


def prepare(env, *args):
    return run([nnunet_bin("nnunet-sacl"), "prepare-finetune", *args, "-np", P], env)


def fine_tune(env, stdout: str, name: str) -> dict:
    """The printed line run (nnUNetTrainer_smoke on the CPU): its output and final checkpoint."""
    trained = run(printed_train_line(stdout), train_env(env), timeout=TRAINING_TIMEOUT)
    final = Path(env["nnUNet_results"]) / name / f"nnUNetTrainer_smoke__{PLANS}__3d_fullres" / "fold_0" / \
        "checkpoint_final.pth"
    return {"stdout": trained.stdout, "final": torch.load(final, weights_only=False)["network_weights"]}


@pytest.fixture(scope="module")
def prepared_b(env, received, raw_b) -> dict:
    result = prepare(env, received["encoder"], "-d", str(B_ID), "-c", "3d_fullres")
    return {"stdout": result.stdout, "weights": pretrained_weights(printed_line(result.stdout))}


@pytest.fixture(scope="module")
def prepared_c(env, received, raw_c) -> dict:
    result = prepare(env, received["encoder"], "-d", str(C_ID), "-c", "3d_fullres")
    return {"stdout": result.stdout, "weights": pretrained_weights(printed_line(result.stdout))}


def loaded_by_nnunet(env, dataset, weights_file):
    """The network nnUNetv2_train builds for the target with the printed plans, after nnU-Net's own
    load_pretrained_weights (what -pretrained_weights does before the first step)."""
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights
    from nnunetv2.run.run_training import get_trainer_from_args
    with nnunet_folders(env):
        trainer = get_trainer_from_args(str(dataset), "3d_fullres", 0, "nnUNetTrainer", PLANS,
                                        device=torch.device("cpu"))
        trainer.initialize()
        load_pretrained_weights(trainer.network, weights_file)
    return trainer.network.state_dict()


@pytest.mark.slow
def test_the_encoder_file_is_self_describing(env, received, prepared_b):
    encoder = torch.load(received["encoder"], weights_only=True)
    assert encoder["trainer_name"] == "SACLTrainer_smoke"
    assert encoder["init_args"]["plans"]["dataset_name"] == A_NAME and encoder["init_args"]["configuration"] == \
        "3d_fullres"
    assert encoder["init_args"]["dataset_json"]["channel_names"] == {"0": "CT"}
    assert set(encoder["init_args"]["dataset_json"]["labels"]) == {"background", "ellipsoid", "box", "tube"}
    assert encoder["sacl"]["pretraining"]["epochs"] == 3 and encoder["sacl"]["versions"]["nnunetv2"]
    r = subprocess.run([nnunet_bin("nnunet-sacl"), "check-weights", received["encoder"], "-d", str(B_ID), "-c",
                        "3d_fullres", "-p", PLANS], env=env, capture_output=True, text=True)
    for expected in ("recorded: trainer: SACLTrainer_smoke (nnunet_sacl", f"recorded: trained on: {A_NAME}, "
                     "plans nnUNetPlans, configuration 3d_fullres, fold 0", "recorded: channels: 0: CT",
                     "recorded: labels: background 0, ellipsoid 1, box 2, tube 3", "recorded: pretraining: "):
        assert expected in r.stdout, r.stdout + r.stderr


@pytest.mark.slow
def test_b_prepared_from_the_file_alone_trains_from_it(env, received, prepared_b, raw_b):
    out = prepared_b["stdout"]
    print(out)
    assert f"nnUNetv2_train {B_ID} 3d_fullres 0 -tr nnUNetTrainer -p {PLANS} -pretrained_weights " in out
    assert f"nnUNetv2_predict -i INPUT_FOLDER -o OUTPUT_FOLDER -d {B_ID} -c 3d_fullres -f 0 -tr nnUNetTrainer " \
           f"-p {PLANS} -device cpu" in out                 # no CUDA device here: lines that run here
    assert re.search(r"-pretrained_weights \S+ -device cpu\n", out) and "-tr nnUNetTrainer_5epochs" in out
    assert "YES: the weights fit" in out and "recorded: trainer: SACLTrainer_smoke" in out
    assert "resampled to the file's spacing 3x1x1 mm (the target's median: 2.5x0.8x0.8 mm)" in out
    assert re.search(r"channel 0 \(CT\): CTNormalization as the file's channel 0 \(CT\), with the CT statistics of the "
                     r"file's channel 0", out)
    assert "Input channels" not in out
    folder = Path(env["nnUNet_preprocessed"]) / B_NAME
    plans = json.loads((folder / f"{PLANS}.json").read_text())
    assert plans["dataset_name"] == B_NAME and plans["plans_name"] == PLANS
    assert plans["configurations"]["3d_fullres"]["data_identifier"] == f"{PLANS}_3d_fullres"
    assert len(list((folder / f"{PLANS}_3d_fullres").glob("*.pkl"))) == 5
    assert (folder / "dataset_fingerprint.json").is_file() and (folder / "dataset.json").is_file()
    # the weights nnU-Net loads are the file's, exactly; the received file is untouched
    a = torch.load(received["encoder"], weights_only=True)["network_weights"]
    handed = torch.load(prepared_b["weights"], weights_only=True)["network_weights"]
    assert handed.keys() == a.keys() and all(torch.equal(handed[k], a[k]) for k in a)
    loaded = loaded_by_nnunet(env, B_ID, prepared_b["weights"])
    assert all(torch.equal(loaded[k], a[k]) for k in encoder_keys(a))
    # nnUNetv2_train with the printed line loads them and trains on B from them
    trained = fine_tune(env, out, B_NAME)
    assert f"Loading pretrained weights from file  {prepared_b['weights']}" in trained["stdout"]
    convs = [k for k in encoder_keys(a) if k.endswith("conv.weight")]
    assert convs and all(correlation(trained["final"][k], a[k]) > 0.9 for k in convs)


@pytest.mark.slow
def test_c_two_channels_get_the_channel_averaged_stem(env, received, prepared_c):
    out = prepared_c["stdout"]
    print(out)
    assert re.search(r"Input channels: the file's network takes 1, Dataset983_FinetuneC has 2: the stem's weights "
                     r"\(encoder.stages.0.0.convs.0.conv.weight, .*\) are summed over the file's 1 channels, repeated over the 2 channels "
                     r"and divided by 2 in the new weights file; every other weight is the file's own, and "
                     r"checkpoint_sacl_encoder.pth itself is unchanged", out), out
    assert "channel 1 (CT): CTNormalization as the file's channel 0 (CT)" in out and "YES: the weights fit" in out
    a = torch.load(received["encoder"], weights_only=True)["network_weights"]
    stem = [k for k in a if a[k].ndim == 5 and a[k].shape[1] == 1]
    assert stem and all(".stages.0.0.convs.0." in k for k in stem)
    expected = {k: torch.cat([a[k], a[k]], dim=1) / 2 for k in stem}       # independent of stem_for_channels
    loaded = loaded_by_nnunet(env, C_ID, prepared_c["weights"])
    for key in encoder_keys(a):
        assert torch.equal(loaded[key], expected[key] if key in stem else a[key]), key
    plans = json.loads((Path(env["nnUNet_preprocessed"]) / C_NAME / f"{PLANS}.json").read_text())
    assert plans["configurations"]["3d_fullres"]["normalization_schemes"] == ["CTNormalization"] * 2
    # the new channel: the target's own intensity properties (its fingerprint), never the file's channel 0
    fingerprint = json.loads((Path(env["nnUNet_preprocessed"]) / C_NAME / "dataset_fingerprint.json").read_text())
    own = fingerprint["foreground_intensity_properties_per_channel"]["1"]
    assert plans["foreground_intensity_properties_per_channel"]["1"] == own
    assert own != plans["foreground_intensity_properties_per_channel"]["0"]     # the copy is brighter
    assert "channel 1 (CT): CTNormalization as the file's channel 0 (CT), with the CT statistics of the target's " \
           "own (its fingerprint; the file has no channel 1)" in out
    trained = fine_tune(env, out, C_NAME)
    assert f"Loading pretrained weights from file  {prepared_c['weights']}" in trained["stdout"]
    for key in [k for k in encoder_keys(a) if k.endswith("conv.weight")]:
        assert correlation(trained["final"][key], expected.get(key, a[key])) > 0.9, key


@pytest.mark.slow
def test_a_second_call_reuses_what_is_done(env, received, prepared_b):
    folder = Path(env["nnUNet_preprocessed"]) / B_NAME
    files = [folder / f"{PLANS}.json", Path(prepared_b["weights"]), folder / "dataset_fingerprint.json",
             *sorted((folder / f"{PLANS}_3d_fullres").iterdir())]
    before = [f.stat().st_mtime_ns for f in files]
    out = in_process(["prepare-finetune", received["encoder"], "-d", str(B_ID), "-c", "3d_fullres"], env)
    assert f"{PLANS}.json: there already" in out and "preprocessed already" in out and "there already" in out
    assert [f.stat().st_mtime_ns for f in files] == before
    # nnU-Net's own checkpoint_final.pth of the same run (numpy values in its log) carries the same plans: reused,
    # its weights (the same encoder) written beside them
    out = in_process(["prepare-finetune", received["final"], "-d", str(B_ID), "-c", "3d_fullres"], env)
    assert f"{PLANS}.json: there already" in out and "YES: the weights fit" in out
    assert [f.stat().st_mtime_ns for f in files] == before


@pytest.mark.slow
@pytest.mark.parametrize("kind,configuration,plans", [("2d", "2d", PLANS),
                                                      ("resenc", "3d_fullres", f"nnUNetResEncUNetMPlans_from{A_ID}")])
def test_2d_and_resenc_files_prepare_a_target(env, received, raw_b, kind, configuration, plans):
    out = in_process(["prepare-finetune", received[kind], "-d", str(B_ID), "-c", configuration, "-np", P], env)
    assert f"-c {configuration}" in out and f"-p {plans}" in out and "YES: the weights fit" in out, out
    plans_file = json.loads((Path(env["nnUNet_preprocessed"]) / B_NAME / f"{plans}.json").read_text())
    assert (Path(env["nnUNet_preprocessed"]) / B_NAME / plans_file["configurations"][configuration]
            ["data_identifier"]).is_dir()
    if kind == "resenc":
        assert "ResidualEncoderUNet" in out
