"""FLARE22 downloads (tiny fakes in the layout public sources show) -> one nnU-Net raw dataset with the labelled
scans, the validation scans and the unlabelled pool; malformed downloads refused with nothing written; the
submission keeps FLARE22's names; segmentation training on pseudo-labels is refused unless asked for."""
import json
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_sacl.cli import main
from nnunet_sacl.dataset_conversion.converters import ChallengeLayoutError, convert_flare22
from nnunet_sacl.dataset_conversion.submission import export_submission
from tests.helpers import NNUNET_PROCESSES as P, correlation, ct, encoder_keys, make_nnunet_env, nnunet_bin, \
    nnunet_folders, organ_boxes, pretrained_weights, printed_line, printed_train_line, run, train_env, write_image


def make_flare22_tree(root: Path, train=(1, 2), unlabelled=(1, 2, 1001), test=(1,), prefix="FLARE22") -> Path:
    """``root/FLARE22`` with Training/FLARE22_LabeledCase50/{images,labels}, the unlabelled folders split at 1000,
    and Validation."""
    src = root / "FLARE22"
    lab = src / "Training" / f"{prefix}_LabeledCase50"
    for i in train:
        write_image(ct(i), lab / "images" / f"FLARE22_Tr_{i:04d}_0000.nii.gz")
        write_image(organ_boxes(13, i), lab / "labels" / f"FLARE22_Tr_{i:04d}.nii.gz")
    for i in unlabelled:
        part = "1-1000" if i <= 1000 else "1001-2000"
        write_image(ct(200 + i), src / "Training" / f"{prefix}_UnlabeledCase{part}" / f"Case_{i:05d}_0000.nii.gz")
    for i in test:
        write_image(ct(100 + i), src / "Validation" / f"FLARE22_Ts_{i:04d}_0000.nii.gz")
    return src


def test_flare22_converts_labelled_validation_and_unlabelled(tmp_path):
    src = make_flare22_tree(tmp_path)
    raw = tmp_path / "raw"
    assert main(["convert-flare22", str(src), "-d", "22", "--raw", str(raw)]) == 0
    out = raw / "Dataset022_FLARE22"
    assert sorted(p.name for p in raw.iterdir()) == [out.name]
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == ["FLARE22_Tr_0001_0000.nii.gz",
                                                                    "FLARE22_Tr_0002_0000.nii.gz"]
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == ["FLARE22_Tr_0001.nii.gz", "FLARE22_Tr_0002.nii.gz"]
    assert sorted(p.name for p in (out / "imagesTs").iterdir()) == ["FLARE22_Ts_0001_0000.nii.gz"]
    assert sorted(p.name for p in (out / "imagesUnlabelled").iterdir()) == [
        "Case_00001_0000.nii.gz", "Case_00002_0000.nii.gz", "Case_01001_0000.nii.gz"]
    lab = src / "Training" / "FLARE22_LabeledCase50"
    assert (out / "labelsTr" / "FLARE22_Tr_0002.nii.gz").read_bytes() == \
        (lab / "labels" / "FLARE22_Tr_0002.nii.gz").read_bytes()
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["numTraining"] == 2 and ds["numUnlabelled"] == 3 and len(ds["labels"]) == 14
    assert ds["labels"]["liver"] == 1 and ds["labels"]["right kidney"] == 2 and ds["labels"]["duodenum"] == 12
    assert ds["labels"]["left kidney"] == 13 and ds["labels"]["gallbladder"] == 9


def test_flare22_accepts_the_folder_names_without_22(tmp_path):
    src = make_flare22_tree(tmp_path, train=(1,), unlabelled=(5,), prefix="FLARE")
    out = convert_flare22(src, 23, raw_folder=tmp_path / "raw")
    assert [p.name for p in (out / "imagesUnlabelled").iterdir()] == ["Case_00005_0000.nii.gz"]


@pytest.mark.parametrize("break_it, named", [
    (lambda s: (s / "Training/FLARE22_LabeledCase50/labels/FLARE22_Tr_0002.nii.gz").unlink(), "FLARE22_Tr_0002"),
    (lambda s: write_image(organ_boxes(13, 1) * 0 + 14,
                           s / "Training/FLARE22_LabeledCase50/labels/FLARE22_Tr_0001.nii.gz"), "FLARE22_Tr_0001"),
    (lambda s: (s / "Training/FLARE22_UnlabeledCase1-1000/notes.txt").write_text("x"), "notes.txt"),
    (lambda s: (s / "Training/FLARE22_UnlabeledCase1001-2000/Case_01001_0000.nii.gz").write_bytes(b"junk"),
     "Case_01001_0000.nii.gz"),
    (lambda s: shutil.rmtree(s / "Validation"), "Validation"),
])
def test_malformed_flare22_is_refused_naming_the_file_with_nothing_written(tmp_path, break_it, named):
    src = make_flare22_tree(tmp_path)
    break_it(src)
    raw = tmp_path / "raw"
    with pytest.raises(ChallengeLayoutError, match=named):
        convert_flare22(src, 22, raw_folder=raw)
    assert not raw.exists() or not any(raw.iterdir())


def test_flare22_submission_keeps_the_validation_names(tmp_path):
    out = convert_flare22(make_flare22_tree(tmp_path, train=(1,), unlabelled=(), test=(1, 2)), 22,
                          raw_folder=tmp_path / "raw")
    pred = tmp_path / "pred"
    pred.mkdir()
    for i in (1, 2):
        like = sitk.ReadImage(str(out / "imagesTs" / f"FLARE22_Ts_{i:04d}_0000.nii.gz"))
        seg = sitk.GetImageFromArray(organ_boxes(13, i).astype(np.uint8))
        seg.CopyInformation(like)
        sitk.WriteImage(seg, str(pred / f"FLARE22_Ts_{i:04d}.nii.gz"))
    sub = export_submission(pred, tmp_path / "sub", "flare22", out / "imagesTs")
    assert sorted(p.name for p in sub.iterdir()) == ["FLARE22_Ts_0001.nii.gz", "FLARE22_Ts_0002.nii.gz"]
    got = sitk.GetArrayFromImage(sitk.ReadImage(str(sub / "FLARE22_Ts_0002.nii.gz")))
    assert np.array_equal(got, organ_boxes(13, 2)) and got.max() == 13


def test_segmentation_on_pseudo_labels_is_refused_unless_asked_for(monkeypatch, capsys):
    from nnunet_sacl.nnunet.partial_labels import ALLOW_PSEUDO_ENV, PSEUDO_KEY, refuse_partial_labels
    ds = {PSEUDO_KEY: {"model": "Dataset022_FLARE22 nnUNetTrainer 3d_fullres folds 0"}}
    monkeypatch.delenv(ALLOW_PSEUDO_ENV, raising=False)
    with pytest.raises(RuntimeError, match=rf"nnUNetTrainer: D has pseudo-labels .*SACLPretrainer.*"
                                           rf"{ALLOW_PSEUDO_ENV}=1"):
        refuse_partial_labels(ds, "D", "nnUNetTrainer", announce=True)
    assert capsys.readouterr().err.startswith("error: nnUNetTrainer: D has pseudo-labels")
    refuse_partial_labels({}, "D", "nnUNetTrainer")
    monkeypatch.setenv(ALLOW_PSEUDO_ENV, "1")
    refuse_partial_labels(ds, "D", "nnUNetTrainer")          # self-training, asked for


@pytest.fixture(scope="session")
def pseudo_labelled(readme_run, tmp_path_factory):
    """README's trained SACLTrainer_smoke (fold 0 of dataset 991) pseudo-labels the test images of 991 into a new
    raw dataset (in its own nnUNet_raw), once with and once without a softmax threshold."""
    from tests.helpers import in_process, readme_model
    readme_model(readme_run)
    env = dict(readme_run["env"], nnUNet_raw=str(tmp_path_factory.mktemp("pseudo_raw")))
    images = Path(readme_run["env"]["nnUNet_raw"]) / "Dataset991_SACLSynthetic" / "imagesTs"
    args = ["pseudo-label", "-i", str(images), "-d", "991", "-c", "3d_fullres", "-tr", "SACLTrainer_smoke",
            "-f", "0", "-device", "cpu"]
    first = in_process(args + ["--to", "501"], env)
    plain = Path(env["nnUNet_raw"]) / "Dataset501_PseudoLabelled"
    stamps = {p: p.stat().st_mtime_ns for p in plain.rglob("*")}
    second = in_process(args + ["--to", "501"], env)
    after = {p: p.stat().st_mtime_ns for p in plain.rglob("*")}
    thresholded = in_process(args + ["--to", "502", "--threshold", "0.9"], env)
    return {"env": env, "images": images, "first": first, "second": second, "thresholded": thresholded,
            "plain": Path(env["nnUNet_raw"]) / "Dataset501_PseudoLabelled",
            "unsure": Path(env["nnUNet_raw"]) / "Dataset502_PseudoLabelled",
            "predicted": Path(readme_run["folder"]) / "pred", "stamps": stamps, "after": after}


@pytest.mark.slow   # README's trained model, nnU-Net's predictor
def test_pseudo_labels_equal_nnunet_predict_and_are_recorded(pseudo_labelled):
    out, pred = pseudo_labelled["plain"], pseudo_labelled["predicted"]
    cases = sorted(p.name for p in pred.glob("*.nii.gz"))
    assert cases and sorted(p.name for p in (out / "labelsTr").iterdir()) == cases
    for case in cases:      # voxel-equal to README's nnUNetv2_predict of the same model and fold
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelsTr" / case)))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(pred / case)))
        assert np.array_equal(a, b), case
        assert (out / "imagesTr" / case.replace(".nii.gz", "_0000.nii.gz")).read_bytes() == \
            (pseudo_labelled["images"] / case.replace(".nii.gz", "_0000.nii.gz")).read_bytes()
    ds = json.loads((out / "dataset.json").read_text())
    record = ds["sacl_pseudo_labels"]
    assert record["trainer"] == "SACLTrainer_smoke" and record["folds"] == [0] and record["threshold"] is None
    assert record["model"].endswith("SACLTrainer_smoke__nnUNetPlans__3d_fullres")
    assert record["version"] and record["date"][:4].isdigit() and ds["numTraining"] == len(cases)
    assert "ignore" not in ds["labels"]


@pytest.mark.slow
def test_a_second_call_does_no_work(pseudo_labelled):
    out = pseudo_labelled["plain"]
    n = len(list((out / "labelsTr").iterdir()))
    assert pseudo_labelled["second"].startswith(f"{n} of {n} cases labelled already; 0 to predict")
    assert "0 to predict" in pseudo_labelled["second"] and "predicted" not in pseudo_labelled["second"]
    assert not (out / ".pseudo-label-work").exists()
    assert pseudo_labelled["after"] == pseudo_labelled["stamps"]       # nothing written, nothing removed


@pytest.mark.slow
def test_unsure_voxels_get_the_ignore_label(pseudo_labelled):
    plain, unsure = pseudo_labelled["plain"], pseudo_labelled["unsure"]
    ds = json.loads((unsure / "dataset.json").read_text())
    ignore = ds["labels"]["ignore"]
    assert ignore == max(v for k, v in ds["labels"].items() if k != "ignore") + 1
    changed = 0
    for f in sorted((plain / "labelsTr").iterdir()):
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(f)))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(unsure / "labelsTr" / f.name)))
        assert np.array_equal(b[b != ignore], a[b != ignore])     # sure voxels keep the prediction
        changed += int((b == ignore).sum())
    assert changed > 0      # a 5-epoch smoke model is unsure somewhere at 0.9


def test_pseudo_label_refuses_a_missing_model(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    (tmp_path / "raw" / "Dataset044_X").mkdir(parents=True)
    assert main(["pseudo-label", "-i", str(tmp_path), "-d", "44", "-c", "3d_fullres", "-f", "0",
                 "--to", "45"]) == 1
    assert "no trained model in" in capsys.readouterr().err
    assert not (tmp_path / "raw" / "Dataset045_PseudoLabelled").exists()


# ------------------------------------------------------------------------------------------------ the recipe, end to end
RECIPE_POOL_ID, RECIPE_POOL = 503, "Dataset503_Pool"


@pytest.fixture(scope="session")
def recipe(readme_run, pseudo_labelled, tmp_path_factory):
    """docs/flare22.md's recipe as its commands, each a real nnU-Net or nnunet-sacl subprocess, on the generated
    dataset 991 (the labelled scans) and the pool that ``pseudo_labelled`` labelled with README's trained model
    (991's two test images, with --threshold: an ignore label): merge-datasets -> nnUNetv2_plan_and_preprocess ->
    SACLPretrainer_smoke on the merge -> prepare-finetune for 991 -> its printed nnUNetv2_train line
    (nnUNetTrainer_smoke) -> nnUNetv2_predict of test images named as FLARE22's validation scans ->
    export-submission --challenge flare22. Its own nnU-Net folders; the two sources are linked into its raw folder.
    The test images are the pool's images (the path, not a measurement: no held-out scan is needed to check it)."""
    root = tmp_path_factory.mktemp("recipe")
    env = make_nnunet_env(root)
    raw = Path(env["nnUNet_raw"])
    raw.mkdir()
    labelled = Path(readme_run["env"]["nnUNet_raw"]) / "Dataset991_SACLSynthetic"
    (raw / labelled.name).symlink_to(labelled)
    (raw / pseudo_labelled["unsure"].name).symlink_to(pseudo_labelled["unsure"])
    sacl = nnunet_bin("nnunet-sacl")
    run([sacl, "merge-datasets", "-d", "991", "502", "-o", str(RECIPE_POOL_ID),
         "--name", "Pool", "--keep-unknown"], env)
    run([nnunet_bin("nnUNetv2_plan_and_preprocess"), "-d", str(RECIPE_POOL_ID), "-c", "3d_fullres", "-np", P,
         "-npfp", P], env)
    run([nnunet_bin("nnUNetv2_train"), str(RECIPE_POOL_ID), "3d_fullres", "all", "-tr", "SACLPretrainer_smoke",
         "-device", "cpu"], train_env(env), timeout=1800)
    encoder = Path(env["nnUNet_results"]) / RECIPE_POOL / "SACLPretrainer_smoke__nnUNetPlans__3d_fullres" / \
        "fold_all" / "checkpoint_sacl_encoder.pth"
    prepared = run([sacl, "prepare-finetune", str(encoder), "-d", "991", "-c", "3d_fullres", "-np", P], env).stdout
    weights = pretrained_weights(printed_line(prepared))
    fine_tuned = run(printed_train_line(prepared), train_env(env), timeout=1800).stdout
    plans = shlex.split(printed_line(prepared))[shlex.split(printed_line(prepared)).index("-p") + 1]
    test_images, test_labels = root / "validation", root / "validation_labels"   # FLARE22's validation names
    test_images.mkdir()
    test_labels.mkdir()
    for i, case in enumerate(sorted(p.name[:-len("_0000.nii.gz")] for p in (labelled / "imagesTs").iterdir()), 1):
        shutil.copy(labelled / "imagesTs" / f"{case}_0000.nii.gz", test_images / f"FLARE22_Ts_{i:04d}_0000.nii.gz")
        shutil.copy(labelled / "labelsTs" / f"{case}.nii.gz", test_labels / f"FLARE22_Ts_{i:04d}.nii.gz")
    run([nnunet_bin("nnUNetv2_predict"), "-i", str(test_images), "-o", str(root / "pred"), "-d", "991", "-c",
         "3d_fullres", "-f", "0", "-tr", "nnUNetTrainer_smoke", "-p", plans, "-device", "cpu"], env)
    run([sacl, "export-submission", "-i", str(root / "pred"), "-o", str(root / "submission"), "--challenge",
         "flare22", "--images", str(test_images)], env)
    return {"env": env, "raw": raw, "encoder": encoder, "weights": weights, "prepared": prepared, "plans": plans,
            "fine_tuned": fine_tuned, "submission": root / "submission", "test_images": test_images,
            "test_labels": test_labels, "labelled": labelled, "unsure": pseudo_labelled["unsure"],
            "fine_tuned_final": Path(env["nnUNet_results"]) / "Dataset991_SACLSynthetic" /
            f"nnUNetTrainer_smoke__{plans}__3d_fullres" / "fold_0" / "checkpoint_final.pth"}


@pytest.mark.slow   # README's model, pseudo_labelled's pool, three nnU-Net runs of the recipe
def test_recipe_merges_the_pseudo_labelled_pool_with_its_unsure_voxels_and_refuses_segmentation_on_it(recipe):
    from nnunet_sacl.nnunet.partial_labels import PSEUDO_KEY, refuse_partial_labels
    merged = recipe["raw"] / RECIPE_POOL
    ds = json.loads((merged / "dataset.json").read_text())
    n_labelled, n_pseudo = len(list((recipe["labelled"] / "labelsTr").iterdir())), \
        len(list((recipe["unsure"] / "labelsTr").iterdir()))
    assert ds["numTraining"] == n_labelled + n_pseudo == len(list((merged / "labelsTr").iterdir()))
    assert ds[PSEUDO_KEY]["labelled_cases"] == n_labelled and ds[PSEUDO_KEY]["pseudo_labelled_cases"] == n_pseudo
    assert ds["labels"]["ignore"] == max(v for k, v in ds["labels"].items() if k != "ignore") + 1 == 4
    unsure_ignore = json.loads((recipe["unsure"] / "dataset.json").read_text())["labels"]["ignore"]
    for f in sorted((recipe["unsure"] / "labelsTr").iterdir()):      # the unsure voxels stay unsure, voxel for voxel
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(f)))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(merged / "labelsTr" / f"D502_{f.name}")))
        assert (a == unsure_ignore).any() and np.array_equal(a == unsure_ignore, b == ds["labels"]["ignore"])
    # nnU-Net's copy of dataset.json (what the trainers read) refuses segmentation training, as on the source
    preprocessed = json.loads((Path(recipe["env"]["nnUNet_preprocessed"]) / RECIPE_POOL / "dataset.json").read_text())
    with pytest.raises(RuntimeError, match=f"{RECIPE_POOL} has pseudo-labels"):
        refuse_partial_labels(preprocessed, RECIPE_POOL, "SACLTrainer")


@pytest.mark.slow
def test_recipe_pretrains_on_the_pool_and_fine_tunes_from_that_encoder(recipe):
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args
    encoder = torch.load(recipe["encoder"], weights_only=True)
    pretrained = encoder["network_weights"]
    assert encoder["init_args"]["dataset_json"]["numTraining"] == 12 and encoder["init_args"]["fold"] == "all"
    # the run's initial network, rebuilt (seeded as the run was): the decoder is still it, the encoder is not
    with nnunet_folders(dict(recipe["env"], nnUNet_results=str(recipe["raw"].parent / "init"))):
        trainer = get_trainer_from_args(str(RECIPE_POOL_ID), "3d_fullres", "all", "SACLPretrainer_smoke",
                                        device=torch.device("cpu"))
        trainer.initialize()
        init = {k: v.detach().cpu() for k, v in trainer.network.state_dict().items()}
    convs = [k for k in encoder_keys(pretrained) if k.endswith("conv.weight")]
    decoder = [k for k in pretrained if k.startswith("decoder.") and k not in encoder_keys(pretrained)]
    assert convs and decoder and all(torch.equal(pretrained[k], init[k]) for k in decoder)
    assert all(not torch.allclose(pretrained[k], init[k]) for k in convs)
    # the printed line loads exactly those weights, and fine-tuning starts from them
    handed = torch.load(recipe["weights"], weights_only=True)["network_weights"]
    assert all(torch.equal(handed[k], pretrained[k]) for k in encoder_keys(pretrained))
    assert f"Loading pretrained weights from file  {recipe['weights']}" in recipe["fine_tuned"]
    final = torch.load(recipe["fine_tuned_final"], weights_only=False)["network_weights"]
    assert all(correlation(final[k], pretrained[k]) > 0.9 for k in convs)
    # a run without the file would start from the same seeded network as the pretrainer: the fine-tuned encoder is
    # nearer the pretrained one than that
    def distance(a):
        return sum(float((final[k] - a[k]).double().norm() ** 2) for k in convs) ** 0.5
    assert distance(pretrained) < distance(init), (distance(pretrained), distance(init))


@pytest.mark.slow
def test_recipe_submission_is_named_as_flare22_names_it_and_scores_in_range(recipe):
    images = sorted(p.name for p in recipe["test_images"].iterdir())
    assert sorted(p.name for p in recipe["submission"].iterdir()) == \
        [n.replace("_0000.nii.gz", ".nii.gz") for n in images] == ["FLARE22_Ts_0001.nii.gz", "FLARE22_Ts_0002.nii.gz"]
    organs = {k: v for k, v in json.loads((recipe["labelled"] / "dataset.json").read_text())["labels"].items()
              if k != "background"}
    dice = []
    for f in sorted(recipe["submission"].iterdir()):
        sub, ref = sitk.ReadImage(str(f)), sitk.ReadImage(str(recipe["test_labels"] / f.name))
        image = sitk.ReadImage(str(recipe["test_images"] / f.name.replace(".nii.gz", "_0000.nii.gz")))
        assert sub.GetSize() == image.GetSize() and sub.GetSpacing() == image.GetSpacing()
        a, b = sitk.GetArrayFromImage(sub), sitk.GetArrayFromImage(ref)
        assert a.dtype == np.uint8 and set(np.unique(a)) <= {0, *organs.values()}
        for value in organs.values():       # Dice by its definition, numpy only
            if (b == value).any():
                dice.append(2 * ((a == value) & (b == value)).sum() / ((a == value).sum() + (b == value).sum()))
    assert dice and all(0 <= d <= 1 for d in dice), dice
    print("Dice of the fine-tuned model on the test images:", [round(float(d), 3) for d in dice])


@pytest.mark.slow
def test_study_names_the_pool_of_a_weights_arm(recipe):
    """The study's budget line of a weights-file arm (``-tr TRAINER@LABEL --weights LABEL=FILE``) from the encoder
    file, also as prepare-finetune handed it on: the pool's scans, labelled and pseudo-labelled, and the pretraining
    iterations, counted here from the merge's files and the pretrainer's settings."""
    from nnunet_sacl.analysis.study_report import pretraining_pool
    n_labelled, n_pseudo = len(list((recipe["labelled"] / "labelsTr").iterdir())), \
        len(list((recipe["unsure"] / "labelsTr").iterdir()))
    from nnunet_sacl.nnunet.short_runs import SACLPretrainer_smoke
    iterations = SACLPretrainer_smoke.run_epochs * SACLPretrainer_smoke.run_iterations
    expected = (f"pretrained on {RECIPE_POOL}, {n_labelled + n_pseudo} scans ({n_labelled} labelled + {n_pseudo} "
                f"pseudo-labelled), fold all: {SACLPretrainer_smoke.run_epochs} epochs x "
                f"{SACLPretrainer_smoke.run_iterations} iterations = {iterations} pretraining iterations at batch size")
    for file in (recipe["encoder"], recipe["weights"]):
        assert pretraining_pool(file).startswith(expected), pretraining_pool(file)
    assert pretraining_pool(recipe["fine_tuned_final"]) is None     # nnU-Net's own checkpoint records no pool
