"""BTCV and FLARE21 downloads (tiny fakes in the challenges' exact naming) -> nnU-Net raw datasets that pass
nnU-Net's own integrity check, labels bit-exact; malformed downloads refused with nothing left behind."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_sacl.dataset_conversion.converters import (ChallengeLayoutError, convert_btcv, convert_flare21,
                                    staged_folder)
from nnunet_sacl.cli import main
from tests.helpers import (cli_parsers, ct, DIRECTION, make_btcv_tree, make_flare21_tree, organ_boxes, ORIGIN_XYZ,
                           SPACING_XYZ, write_image)

def verify_with_nnunet(folder: Path) -> None:
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
    verify_dataset_integrity(str(folder), num_processes=1)


@pytest.mark.slow   # nnU-Net's integrity check of whole datasets
def test_btcv_converts_to_a_dataset_nnunet_accepts(tmp_path):
    src = make_btcv_tree(tmp_path)
    raw = tmp_path / "raw"
    out = convert_btcv(src, 17, raw_folder=raw)

    assert out == raw / "Dataset017_BTCV"
    assert sorted(p.name for p in raw.iterdir()) == ["Dataset017_BTCV"]  # no temporary folder left
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == [
        "BTCV_0001_0000.nii.gz", "BTCV_0002_0000.nii.gz", "BTCV_0003_0000.nii.gz"]
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == [
        "BTCV_0001.nii.gz", "BTCV_0002.nii.gz", "BTCV_0003.nii.gz"]
    assert sorted(p.name for p in (out / "imagesTs").iterdir()) == ["BTCV_0061_0000.nii.gz"]
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["channel_names"] == {"0": "CT"}
    assert ds["numTraining"] == 3 and ds["file_ending"] == ".nii.gz"
    assert list(ds["labels"].items())[:3] == [("background", 0), ("spleen", 1), ("right kidney", 2)]
    assert ds["labels"]["portal vein and splenic vein"] == 10 and ds["labels"]["left adrenal gland"] == 13
    assert len(ds["labels"]) == 14

    for i in (1, 2, 3):  # bit-exact labels and images
        assert (out / "labelsTr" / f"BTCV_{i:04d}.nii.gz").read_bytes() == \
            (src / "Training" / "label" / f"label{i:04d}.nii.gz").read_bytes()
        assert (out / "imagesTr" / f"BTCV_{i:04d}_0000.nii.gz").read_bytes() == \
            (src / "Training" / "img" / f"img{i:04d}.nii.gz").read_bytes()
    test_img = sitk.ReadImage(str(out / "imagesTs" / "BTCV_0061_0000.nii.gz"))
    assert np.allclose(test_img.GetSpacing(), SPACING_XYZ) and np.allclose(test_img.GetOrigin(), ORIGIN_XYZ)
    assert np.allclose(test_img.GetDirection(), DIRECTION)

    verify_with_nnunet(out)  # raises on any problem nnU-Net would stop at


@pytest.mark.slow   # nnU-Net's integrity check of whole datasets
def test_flare21_converts_to_a_dataset_nnunet_accepts(tmp_path):
    src = make_flare21_tree(tmp_path)
    raw = tmp_path / "raw"
    out = convert_flare21(src, 21, raw_folder=raw)

    assert out == raw / "Dataset021_FLARE21"
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == [
        "FLARE21_train_000.nii.gz", "FLARE21_train_001.nii.gz", "FLARE21_train_002.nii.gz"]
    assert sorted(p.name for p in (out / "imagesTs").iterdir()) == ["FLARE21_validation_001_0000.nii.gz"]
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["labels"] == {"background": 0, "liver": 1, "kidney": 2, "spleen": 3, "pancreas": 4}
    assert ds["numTraining"] == 3
    for i in (0, 1, 2):
        assert (out / "labelsTr" / f"FLARE21_train_{i:03d}.nii.gz").read_bytes() == \
            (src / "TrainingMask" / f"train_{i:03d}.nii.gz").read_bytes()
    verify_with_nnunet(out)


def _missing_label(src):
    (src / "Training" / "label" / "label0002.nii.gz").unlink()


def _geometry_mismatch(src):
    write_image(organ_boxes(13, 3), src / "Training" / "label" / "label0003.nii.gz", spacing=(0.78, 0.78, 2.5))


def _label_value_20(src):
    seg = organ_boxes(13, 2)
    seg[0, 0, 0] = 20
    write_image(seg, src / "Training" / "label" / "label0002.nii.gz")


def _empty_training(src):
    for sub in ("img", "label"):
        shutil.rmtree(src / "Training" / sub)
        (src / "Training" / sub).mkdir()


def _extra_file(src):
    write_image(ct(9), src / "Training" / "img" / "img0004_copy.nii.gz")


def _label_without_image(src):
    write_image(organ_boxes(13, 9), src / "Training" / "label" / "label0009.nii.gz")


def _no_testing_folder(src):
    shutil.rmtree(src / "Testing")


@pytest.mark.parametrize("break_tree, message", [
    (_missing_label, "case 0002: label"),
    (_geometry_mismatch, "case 0003: img0003.nii.gz and label0003.nii.gz are on different voxel grids (spacing"),
    (_label_value_20, "case 0002:"),
    (_empty_training, "holds no training images"),
    (_extra_file, "img0004_copy.nii.gz"),
    (_label_without_image, "label0009.nii.gz has no image"),
    (_no_testing_folder, "Testing/img is missing"),
])
def test_malformed_btcv_is_refused_and_leaves_nothing(tmp_path, break_tree, message):
    src = make_btcv_tree(tmp_path)
    break_tree(src)
    raw = tmp_path / "raw"
    raw.mkdir()
    with pytest.raises(ChallengeLayoutError) as e:
        convert_btcv(src, 17, raw_folder=raw)
    assert message in str(e.value)
    assert "expected" in str(e.value) or "case" in str(e.value)
    assert list(raw.iterdir()) == []  # no dataset folder, no temporary folder


def test_label_value_error_lists_the_challenge_labels(tmp_path):
    src = make_flare21_tree(tmp_path)
    seg = organ_boxes(4, 1)
    seg[1, 1, 1] = 20
    write_image(seg, src / "TrainingMask" / "train_001.nii.gz")
    with pytest.raises(ChallengeLayoutError, match=r"case train_001: .*train_001.nii.gz holds label value\(s\) "
                                                   r"\[20\]; FLARE21 labels are \[0, 1, 2, 3, 4\]"):
        convert_flare21(src, 21, raw_folder=tmp_path / "raw")
    assert not (tmp_path / "raw").exists() or list((tmp_path / "raw").iterdir()) == []


def test_wrong_folder_names_the_expected_layout(tmp_path):
    src = make_btcv_tree(tmp_path)
    with pytest.raises(ChallengeLayoutError, match="TrainingImg is missing; expected .*TrainingImg/train_000_0000"):
        convert_flare21(src, 21, raw_folder=tmp_path / "raw")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ChallengeLayoutError, match="Training/img is missing; expected .*RawData/Training/img"):
        convert_btcv(empty, 17, raw_folder=tmp_path / "raw")


def test_taken_dataset_id_is_refused(tmp_path):
    src = make_flare21_tree(tmp_path, train=(0,), test=(1,))
    raw = tmp_path / "raw"
    (raw / "Dataset021_Other").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="Dataset021_Other"):
        convert_flare21(src, 21, raw_folder=raw)
    assert sorted(p.name for p in raw.iterdir()) == ["Dataset021_Other"]


def test_raw_folder_comes_from_the_environment_or_is_asked_for(tmp_path, monkeypatch):
    src = make_flare21_tree(tmp_path, train=(0,), test=(1,))
    monkeypatch.delenv("nnUNet_raw", raising=False)
    with pytest.raises(ValueError, match="export nnUNet_raw"):
        convert_flare21(src, 21)
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "env_raw"))
    assert convert_flare21(src, 22, name="FLARE21small") == tmp_path / "env_raw" / "Dataset022_FLARE21small"
    assert (tmp_path / "env_raw" / "Dataset022_FLARE21small" / "imagesTr" /
            "FLARE21small_train_000_0000.nii.gz").is_file()


def test_staged_folder_removes_its_temporary_folder_on_failure(tmp_path):
    target = tmp_path / "Dataset030_X"
    with pytest.raises(RuntimeError):
        with staged_folder(target) as tmp:
            (tmp / "half_written.nii.gz").write_bytes(b"x")
            raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []


def test_cli_converts_and_reports_errors(tmp_path, capsys):
    for command in ("convert-btcv", "convert-flare21"):
        assert cli_parsers()[command].epilog.startswith(f"nnunet-sacl {command} ")
    src = make_btcv_tree(tmp_path, train=(1,))
    argv = ["convert-btcv", str(src), "-d", "17", "--raw", str(tmp_path / "raw")]
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "raw" / "Dataset017_BTCV")
    assert main(argv) == 1  # second time: the id is taken
    err = capsys.readouterr().err
    assert err.startswith("nnunet-sacl convert-btcv: error: ") and "Dataset017_BTCV" in err, err
