"""merge-datasets on generated raw datasets with different names, ids and partial labels: remaps voxel-exact, the
annotated-organs record, stable ids, untouched sources, refusals that leave nothing behind; the vocabulary's
matching and the public datasets' label names."""
import filecmp
import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_sacl.dataset_conversion.merge import (RECORD_FILE, MergeError, Vocabulary, merge_datasets, normalize,
                                                 read_annotated_organs)

SOURCES = {   # folder: ({label name: value}, cases, channel names)
    "Dataset101_BTCVlike": ({"spleen": 1, "right kidney": 2, "left kidney": 3, "liver": 6}, ("img0001", "img0002")),
    "Dataset102_AMOSlike": ({"spleen": 1, "postcava": 2, "gall bladder": 3, "liver": 4}, ("amos_0005", "amos_0007")),
    "Dataset103_WORDlike": ({"liver": 1, "kidney_L": 2, "kidney_R": 3, "intestine": 4}, ("word_0001",)),
}
# what each name means, written out here independently of the vocabulary file
MEANS = {"spleen": "spleen", "right kidney": "kidney_right", "left kidney": "kidney_left", "liver": "liver",
         "postcava": "inferior_vena_cava", "gall bladder": "gallbladder", "kidney_L": "kidney_left",
         "kidney_R": "kidney_right", "intestine": "intestine"}
# TotalSegmentator v2's order (spleen 1, kidney_right 2, kidney_left 3, gallbladder 4, liver 5, ... inferior vena
# cava 63), then the structures it has no class for (intestine)
EXPECTED_IDS = {"spleen": 1, "kidney_right": 2, "kidney_left": 3, "gallbladder": 4, "liver": 5,
                "inferior_vena_cava": 6, "intestine": 7}


def write(array, path, spacing=(0.8, 0.7, 2.5), origin=(-10.0, 5.0, 30.0)):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection((-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), True)


def make_source(raw: Path, folder: str, labels: dict, cases, channels=None, seed=0):
    rng = np.random.default_rng(seed)
    root = raw / folder
    values = np.array([0] + list(labels.values()), dtype=np.uint8)
    for i, case in enumerate(cases):
        write(rng.normal(0, 100, (6, 10, 12)).astype(np.int16), root / "imagesTr" / f"{case}_0000.nii.gz")
        write(values[rng.integers(0, len(values), (6, 10, 12))], root / "labelsTr" / f"{case}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": channels or {"0": "CT"}, "labels": {"background": 0, **labels},
        "numTraining": len(cases), "file_ending": ".nii.gz"}))
    return root


def snapshot(folder: Path) -> dict:
    return {str(p): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def raw(tmp_path):
    raw = tmp_path / "raw"
    for seed, (folder, (labels, cases)) in enumerate(SOURCES.items()):
        make_source(raw, folder, labels, cases, seed=seed)
    return raw


def test_merge_remaps_voxel_exact_records_annotations_and_keeps_sources(raw):
    before = {f: snapshot(raw / f) for f in SOURCES}
    out = merge_datasets(["101", "Dataset102_AMOSlike", 103], 110, "Abdomen", raw_folder=raw)
    assert out == raw / "Dataset110_Abdomen"
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["labels"] == {"background": 0, **EXPECTED_IDS}
    assert dataset["channel_names"] == {"0": "CT"} and dataset["numTraining"] == 5
    assert dataset["sacl_partial_labels"] is True
    record = read_annotated_organs(out)
    assert (out / RECORD_FILE).is_file() and record["partial"] is True and set(record["cases"]) == {
        f"D{folder[7:10]}_{case}" for folder, (_, cases) in SOURCES.items() for case in cases}
    for folder, (labels, cases) in SOURCES.items():
        for case in cases:
            merged_case = f"D{folder[7:10]}_{case}"
            assert record["cases"][merged_case] == {
                "source": folder, "case": case,
                "annotated": sorted({MEANS[n] for n in labels}, key=lambda o: EXPECTED_IDS[o])}
            src = sitk.ReadImage(str(raw / folder / "labelsTr" / f"{case}.nii.gz"))
            got = sitk.ReadImage(str(out / "labelsTr" / f"{merged_case}.nii.gz"))
            expected = np.zeros_like(sitk.GetArrayFromImage(src))
            for name, value in labels.items():
                expected[sitk.GetArrayFromImage(src) == value] = EXPECTED_IDS[MEANS[name]]
            assert np.array_equal(sitk.GetArrayFromImage(got), expected)
            assert (got.GetSpacing(), got.GetOrigin(), got.GetDirection()) == \
                (src.GetSpacing(), src.GetOrigin(), src.GetDirection())
            image, merged_image = raw / folder / "imagesTr" / f"{case}_0000.nii.gz", \
                out / "imagesTr" / f"{merged_case}_0000.nii.gz"
            assert filecmp.cmp(image, merged_image, shallow=False)
            assert os.stat(image).st_ino == os.stat(merged_image).st_ino       # linked, not copied
    assert {f: snapshot(raw / f) for f in SOURCES} == before
    again = merge_datasets(["103", "101", "102"], 111, "Again", raw_folder=raw)   # other order, same ids
    assert json.loads((again / "dataset.json").read_text())["labels"] == dataset["labels"]
    assert read_annotated_organs(again)["cases"] == record["cases"]


def test_complete_labels_are_not_partial(raw):
    make_source(raw, "Dataset104_Same", {"Spleen": 1, "Liver": 2}, ("x1",), seed=4)
    make_source(raw, "Dataset105_Same2", {"liver": 3, "spleen": 5}, ("y1",), seed=5)
    record = read_annotated_organs(merge_datasets([104, 105], 112, raw_folder=raw))
    assert record["partial"] is False and record["organs"] == ["spleen", "liver"]
    assert json.loads((raw / "Dataset112_Merged" / "dataset.json").read_text())["sacl_partial_labels"] is False


def refused(raw, sources, message, **kwargs):
    before = sorted(p.name for p in raw.iterdir())
    with pytest.raises(MergeError, match=message):
        merge_datasets(sources, 120, raw_folder=raw, **kwargs)
    assert sorted(p.name for p in raw.iterdir()) == before, "something was left behind"


def test_unknown_names_channel_mismatch_and_bad_values_are_refused_leaving_nothing(raw):
    make_source(raw, "Dataset106_Typo", {"livr": 1, "splen": 2}, ("t1",), seed=6)
    refused(raw, [101, 106], r"Dataset106_Typo: label 'livr' matches no organ name \(closest: liver.*"
                             r"label 'splen' matches no organ name \(closest: spleen.*--keep-unknown")
    make_source(raw, "Dataset107_MR", {"liver": 1}, ("m1",), channels={"0": "MR"}, seed=7)
    refused(raw, [101, 107], r"Dataset107_MR: channels \{'0': 'MR'\} differ from Dataset101_BTCVlike's")
    labels = raw / "Dataset102_AMOSlike" / "labelsTr" / "amos_0007.nii.gz"
    bad = sitk.GetArrayFromImage(sitk.ReadImage(str(labels)))
    bad[0, 0, 0] = 9
    write(bad, labels)
    refused(raw, [101, 102], r"amos_0007.nii.gz: label values \[9\] are not in its dataset.json")
    refused(raw, [101, 101], "at least two different datasets")
    refused(raw, [101, 199], "no folder Dataset199_")
    make_source(raw, "Dataset120_Taken", {"liver": 1}, ("k1",), seed=8)
    before = sorted(p.name for p in raw.iterdir())
    with pytest.raises(MergeError, match="id 120 is taken"):
        merge_datasets([101, 103], 120, raw_folder=raw)
    assert sorted(p.name for p in raw.iterdir()) == before


def test_keep_unknown_and_a_user_vocabulary(raw, tmp_path):
    make_source(raw, "Dataset108_Tumour", {"liver": 1, "liver tumour": 2}, ("u1",), seed=9)
    out = merge_datasets([101, 108], 121, keep_unknown=True, raw_folder=raw)
    assert json.loads((out / "dataset.json").read_text())["labels"]["liver_tumour"] == 5
    user = tmp_path / "vocab.json"
    user.write_text(json.dumps({"canonical": ["liver_lesion"], "synonyms": {"liver tumour": "liver_lesion",
                                                                            "postcava": "superior_vena_cava"}}))
    out = merge_datasets([102, 108], 122, vocabulary=user, raw_folder=raw)
    labels = json.loads((out / "dataset.json").read_text())["labels"]
    assert "liver_lesion" in labels and "superior_vena_cava" in labels and "inferior_vena_cava" not in labels
    assert list(labels)[-1] == "liver_lesion"      # the user's names come after the shipped ones


def test_normalization_and_lookup():
    v = Vocabulary.load()
    for spelling in ("right kidney", "Kidney_Right", "kidney_R", "KIDNEY-right", "R kidney"):
        assert v.lookup(spelling) == "kidney_right", spelling
    assert normalize("left rib 1") == normalize("rib_left_1") == "rib 1 left"
    assert v.lookup("left adrenal gland") == "adrenal_gland_left" and v.lookup("postcava") == "inferior_vena_cava"
    assert v.lookup("no such organ") is None and "liver" in v.suggest("livr")
    assert v.suggest("ellipsoid") == []          # shares letters with iliopsoas, is no typo of it


PUBLIC = {   # label names as the public datasets' own dataset.json files spell them
    "BTCV": ["spleen", "right kidney", "left kidney", "gallbladder", "esophagus", "liver", "stomach", "aorta",
             "inferior vena cava", "portal vein and splenic vein", "pancreas", "right adrenal gland",
             "left adrenal gland"],
    "FLARE21": ["liver", "kidney", "spleen", "pancreas"],
    "FLARE22": ["liver", "right kidney", "spleen", "pancreas", "aorta", "inferior vena cava", "right adrenal gland",
                "left adrenal gland", "gallbladder", "esophagus", "stomach", "duodenum", "left kidney"],
    "AMOS": ["spleen", "right kidney", "left kidney", "gall bladder", "esophagus", "liver", "stomach", "aorta",
             "postcava", "pancreas", "right adrenal gland", "left adrenal gland", "duodenum", "bladder",
             "prostate/uterus"],
    "WORD": ["liver", "spleen", "kidney_L", "kidney_R", "stomach", "gallbladder", "esophagus", "pancreas",
             "duodenum", "colon", "intestine", "adrenal", "rectum", "bladder", "Head_of_femur_L",
             "Head_of_femur_R"],
    "AbdomenCT-1K": ["liver", "kidney", "spleen", "pancreas"],
}


def test_every_public_dataset_label_has_a_canonical_name():
    v = Vocabulary.load()
    for dataset, names in PUBLIC.items():
        meant = [v.lookup(n) for n in names]
        assert None not in meant, (dataset, dict(zip(names, meant)))
        assert len(set(meant)) == len(names), (dataset, meant)          # no two labels of one dataset collide
    assert v.lookup("postcava") == v.lookup("inferior vena cava")
    assert v.lookup("gall bladder") == v.lookup("gallbladder")
    assert v.lookup("kidney") == "kidneys" != v.lookup("right kidney")    # FLARE21's label is both kidneys


def test_segmentation_training_on_partial_labels_is_refused_pretraining_is_not(in_process_env, capsys):
    """A merged dataset with partial labels carries sacl_partial_labels in its dataset.json (nnU-Net copies that
    file into nnUNet_preprocessed): SACLTrainer (its phase 2) and the joint trainer refuse it when they are built,
    naming SACLPretrainer and the fine-tuning path; SACLPretrainer trains on it; complete labels are fine."""
    import torch
    from nnunet_sacl.nnunet.partial_labels import PARTIAL_KEY
    from nnunet_sacl.nnunet.short_runs import SACLPretrainer_smoke, SACLTrainer_smoke
    from tests.trainers.torchrun_test_trainers import SACLTrainer_joint_smoke
    from tests.helpers import DATASET_NAME
    folder = Path(in_process_env["nnUNet_preprocessed"]) / DATASET_NAME
    plans = dict(json.loads((folder / "nnUNetPlans.json").read_text()), continue_training=False)
    dataset_json = json.loads((folder / "dataset.json").read_text())

    def build(cls, partial):
        return cls(dict(plans), "3d_fullres", 0, dict(dataset_json, **{PARTIAL_KEY: partial}), torch.device("cpu"))

    for cls in (SACLTrainer_smoke, SACLTrainer_joint_smoke):
        with pytest.raises(RuntimeError, match=rf"{cls.__name__}: {DATASET_NAME} has partial labels .*"
                                               r"-tr SACLPretrainer.*-pretrained_weights"):
            build(cls, True)
        assert capsys.readouterr().err.startswith(f"error: {cls.__name__}: {DATASET_NAME} has partial labels")
        build(cls, False)
    build(SACLPretrainer_smoke, True)      # pretraining may train on partial labels


def test_command_line_merges_and_refuses_in_one_line(raw, capsys):
    from nnunet_sacl.cli import main
    assert main(["merge-datasets", "-d", "101", "102", "-o", "130", "--name", "Pre", "--raw", str(raw)]) == 0
    out = capsys.readouterr().out
    assert str(raw / "Dataset130_Pre") in out and "postcava -> inferior_vena_cava" in out and "Partial labels" in out
    make_source(raw, "Dataset109_Odd", {"livr": 1}, ("o1",), seed=10)
    assert main(["merge-datasets", "-d", "101", "109", "-o", "131", "--raw", str(raw)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("nnunet-sacl merge-datasets: error: Dataset109_Odd: label 'livr' matches no organ name")
    assert err.count("\n") == 1 and not (raw / "Dataset131_Merged").exists()


def test_launcher_refuses_any_segmentation_trainer_on_partial_labels(in_process_env, tmp_path, monkeypatch, capsys):
    """nnunet-sacl train refuses stock nnU-Net too (not only our trainers) on a dataset whose preprocessed
    dataset.json says sacl_partial_labels, before anything trains; the message names the pretraining path."""
    from nnunet_sacl.cli import main
    from nnunet_sacl.nnunet.partial_labels import PARTIAL_KEY
    from tests.helpers import DATASET_NAME
    source = Path(in_process_env["nnUNet_preprocessed"]) / DATASET_NAME
    folder = tmp_path / "pre" / "Dataset993_Partial"
    folder.mkdir(parents=True)
    plans = json.loads((source / "nnUNetPlans.json").read_text())
    (folder / "nnUNetPlans.json").write_text(json.dumps(dict(plans, dataset_name=folder.name)))
    dataset_json = json.loads((source / "dataset.json").read_text())
    (folder / "dataset.json").write_text(json.dumps(dict(dataset_json, **{PARTIAL_KEY: True})))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    assert main(["train", "993", "3d_fullres", "0", "-tr", "nnUNetTrainer_smoke", "-device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("nnunet-sacl train: error: nnUNetTrainer_smoke: Dataset993_Partial has partial labels")
    assert "-tr SACLPretrainer" in err and not (tmp_path / "results").exists()


def test_phase_one_gives_no_embedding_for_an_organ_a_case_does_not_annotate(in_process_env):
    """A merged batch: one patch comes from a source that does not annotate one of its organs, so that organ is
    background there. SACLPretrainer's embeddings hold a row for every (patch, organ) the labels show and none for
    the unannotated one, and the step trains on (finite loss)."""
    import torch
    from tests.helpers import first_batch, make_trainer
    trainer = make_trainer("SACLPretrainer_smoke")
    trainer.initialize()
    batch = first_batch(trainer)
    target = batch["target"][0].clone()
    sample = next(i for i in range(target.shape[0]) if (target[i] > 0).any())
    organ = int(target[sample][target[sample] > 0].min())
    target[sample][target[sample] == organ] = 0       # this case's source does not annotate `organ`
    batch = dict(batch, target=[target] + list(batch["target"][1:]))
    with torch.no_grad():
        z, organs, samples = trainer.embed(batch["data"], target)
    rows = set(zip(samples.tolist(), organs.tolist()))
    shown = {(s, int(o)) for s in range(target.shape[0]) for o in torch.unique(target[s]).tolist() if o > 0}
    assert rows == shown and (sample, organ) not in rows and z.shape[0] == len(rows)
    assert torch.isfinite(torch.as_tensor(trainer.train_step(batch)["loss"]))


def test_a_pseudo_labelled_source_merges_with_its_ignore_label_and_record(raw):
    """pseudo-label's datasets (``sacl_pseudo_labels``; with --threshold an ``ignore`` label above the organs)
    merge with labelled ones: the unsure voxels keep nnU-Net's ignore label (the merge's highest), the record says
    which cases are pseudo-labelled, and segmentation training on the merge is refused as on the source."""
    from nnunet_sacl.nnunet.partial_labels import PSEUDO_KEY, refuse_partial_labels
    pseudo = make_source(raw, "Dataset104_Pseudo", {"spleen": 1, "liver": 2, "right kidney": 3, "left kidney": 4,
                                                    "ignore": 5}, ("Case_00001", "Case_00002", "Case_00003"), seed=7)
    record = {"model": "/results/Dataset101_BTCVlike/nnUNetTrainer__nnUNetPlans__3d_fullres", "threshold": 0.9}
    ds = json.loads((pseudo / "dataset.json").read_text())
    (pseudo / "dataset.json").write_text(json.dumps(dict(ds, **{PSEUDO_KEY: record})))
    before = snapshot(raw)
    out = merge_datasets(["Dataset101_BTCVlike", "Dataset104_Pseudo"], 110, name="Pool", raw_folder=raw)
    merged = json.loads((out / "dataset.json").read_text())
    organs = {"spleen": 1, "kidney_right": 2, "kidney_left": 3, "liver": 4}
    assert merged["labels"] == {"background": 0, **organs, "ignore": 5}
    assert merged[PSEUDO_KEY] == {"model": record["model"], "sources": {"Dataset104_Pseudo": record},
                                  "pseudo_labelled_cases": 3, "labelled_cases": 2}
    assert merged["numTraining"] == 5 and merged["sacl_partial_labels"] is False
    source_to_merged = {0: 0, 1: 1, 2: 4, 3: 2, 4: 3, 5: 5}      # by name, written out; ignore stays ignore
    for case in ("Case_00001", "Case_00002", "Case_00003"):
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(pseudo / "labelsTr" / f"{case}.nii.gz")))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelsTr" / f"D104_{case}.nii.gz")))
        assert (a == 5).any() and np.array_equal(b, np.vectorize(source_to_merged.get)(a))
    a = sitk.GetArrayFromImage(sitk.ReadImage(str(raw / "Dataset101_BTCVlike" / "labelsTr" / "img0001.nii.gz")))
    b = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelsTr" / "D101_img0001.nii.gz")))
    assert np.array_equal(b, np.array([0, 1, 2, 3, 0, 0, 4])[a]) and not (b == 5).any()
    with pytest.raises(RuntimeError, match="has pseudo-labels .*Dataset101_BTCVlike/nnUNetTrainer"):
        refuse_partial_labels(merged, out.name, "nnUNetTrainer")
    assert {k: v for k, v in snapshot(raw).items() if "Dataset110" not in k} == before     # sources only read
    # without a threshold (no ignore label) the merge has none
    plain = make_source(raw, "Dataset105_Pseudo", {"liver": 1}, ("Case_00009",), seed=8)
    (plain / "dataset.json").write_text(json.dumps(dict(json.loads((plain / "dataset.json").read_text()),
                                                        **{PSEUDO_KEY: record})))
    out = merge_datasets(["Dataset101_BTCVlike", "Dataset105_Pseudo"], 111, name="Pool", raw_folder=raw)
    merged = json.loads((out / "dataset.json").read_text())
    assert "ignore" not in merged["labels"] and merged[PSEUDO_KEY]["pseudo_labelled_cases"] == 1
