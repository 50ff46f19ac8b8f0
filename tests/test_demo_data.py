"""The real-CT demo dataset: built from the TotalSegmentator 2.18.0 sdist, BTCV labels, accepted by nnU-Net's own
integrity check, and the same bytes for the same seed."""
import json

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_sacl.dataset_conversion import demo_data
from nnunet_sacl.dataset_conversion.demo_data import (BTCV_ORGANS, DemoDataUnavailable, build_demo_dataset,
                                   fetch_totalsegmentator_sdist)
from tests.helpers import cli_parsers

NUM_TRAINING = 4


@pytest.fixture(scope="module")
def dataset(sdist, tmp_path_factory):
    return build_demo_dataset(993, raw_folder=tmp_path_factory.mktemp("raw"), sdist=sdist,
                              num_training=NUM_TRAINING, seed=0)


def labels_of(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_layout_and_dataset_json(dataset):
    meta = json.loads((dataset / "dataset.json").read_text())
    assert dataset.name == "Dataset993_SACLDemoCT"
    assert meta["channel_names"] == {"0": "CT"} and meta["file_ending"] == ".nii.gz"
    assert meta["numTraining"] == NUM_TRAINING
    assert len(list((dataset / "imagesTr").glob("*_0000.nii.gz"))) == NUM_TRAINING
    assert [p.name for p in (dataset / "imagesTs").iterdir()] == ["sacldemoct_100_0000.nii.gz"]
    assert [p.name for p in (dataset / "labelsTs").iterdir()] == ["sacldemoct_100.nii.gz"]


def test_labels_are_btcv_organs_renumbered_consecutively(dataset):
    meta = json.loads((dataset / "dataset.json").read_text())
    btcv_by_name = {name: number for number, (name, _) in BTCV_ORGANS.items()}
    organs = {name: label for name, label in meta["labels"].items() if name != "background"}
    assert set(organs) <= set(btcv_by_name)
    assert meta["btcv_label_numbers"] == {name: btcv_by_name[name] for name in organs}
    # nnU-Net wants 0..N without gaps; the order stays BTCV's
    assert sorted(organs.values()) == list(range(1, len(organs) + 1))
    assert sorted(organs, key=organs.get) == sorted(organs, key=btcv_by_name.get)
    assert len(organs) >= 10  # the source scan shows all abdominal BTCV organs but the esophagus


def test_every_organ_has_voxels_in_every_training_case(dataset):
    meta = json.loads((dataset / "dataset.json").read_text())
    expected = set(meta["labels"].values()) - {0}
    for path in sorted((dataset / "labelsTr").iterdir()):
        counts = np.bincount(labels_of(path).ravel(), minlength=max(expected) + 1)
        assert {int(v) for v in np.nonzero(counts)[0]} == expected | {0}, path.name
    assert set(np.unique(labels_of(dataset / "labelsTs" / "sacldemoct_100.nii.gz"))) <= expected | {0}


def test_small_enough_for_the_cpu_demo(dataset):
    image = sitk.ReadImage(str(dataset / "imagesTr" / "sacldemoct_000_0000.nii.gz"))
    assert image.GetSize()[::-1] == demo_data.TRAIN_SHAPE_ZYX
    assert image.GetSpacing() == (demo_data.SPACING_MM,) * 3
    hu = sitk.GetArrayFromImage(image)
    assert hu.min() >= -1024 and hu.max() > 300  # real CT: air and bone


@pytest.mark.slow   # nnU-Net's integrity check of whole datasets
def test_passes_nnunet_integrity_check(dataset):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
    verify_dataset_integrity(str(dataset), num_processes=1)


def test_same_seed_same_dataset_other_seed_other_cases(dataset, sdist, tmp_path):
    again = build_demo_dataset(993, raw_folder=tmp_path / "a", sdist=sdist, num_training=NUM_TRAINING, seed=0)
    other = build_demo_dataset(993, raw_folder=tmp_path / "b", sdist=sdist, num_training=NUM_TRAINING, seed=1)
    assert (again / "dataset.json").read_text() == (dataset / "dataset.json").read_text()
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        for path in sorted((dataset / sub).iterdir()):
            assert np.array_equal(labels_of(path), labels_of(again / sub / path.name)), path.name
    case = "imagesTr/sacldemoct_001_0000.nii.gz"
    assert not np.array_equal(labels_of(dataset / case), labels_of(other / case))


def test_refuses_an_existing_dataset(dataset, sdist):
    with pytest.raises(FileExistsError, match="Dataset993_SACLDemoCT exists already"):
        build_demo_dataset(993, raw_folder=dataset.parent, sdist=sdist)


def test_a_wrong_sdist_is_named_and_refused(tmp_path):
    fake = tmp_path / "totalsegmentator-2.18.0.tar.gz"
    fake.write_bytes(b"not the sdist")
    with pytest.raises(DemoDataUnavailable, match=str(fake)):
        fetch_totalsegmentator_sdist(sdist=fake)


def test_a_corrupt_cache_says_what_to_do_offline(tmp_path):
    (tmp_path / demo_data.SDIST_NAME).write_bytes(b"truncated")
    with pytest.raises(DemoDataUnavailable, match="--sdist FILE"):
        fetch_totalsegmentator_sdist(cache_dir=tmp_path)


def test_cli_registers_demo_data_with_an_example():
    from nnunet_sacl.cli import build_parser
    from nnunet_sacl.cli import demo_data as demo_data_command
    assert cli_parsers()["demo-data"].epilog.startswith("nnunet-sacl demo-data")
    args = build_parser().parse_args(["demo-data", "-d", "992", "--sdist", "x.tar.gz", "--raw", "raw"])
    assert (args.d, args.sdist, args.raw, args.cli_command.run) == (992, "x.tar.gz", "raw", demo_data_command.run)
