"""nnUNetv2_predict-style output of a converted BTCV/FLARE21 dataset -> challenge-named result files on the test
images' grids; missing, extra, misaligned or mislabelled predictions refused, naming the case."""

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_sacl.dataset_conversion.converters import convert_btcv, convert_flare21
from nnunet_sacl.cli import main
from nnunet_sacl.dataset_conversion.submission import SubmissionError, export_submission
from tests.helpers import cli_parsers, make_btcv_tree, make_flare21_tree, organ_boxes


def write_prediction(seg: np.ndarray, like: sitk.Image, path, spacing_jitter=0.0):
    """A prediction on the test image's grid, as nnU-Net writes it (float headers may round slightly)."""
    img = sitk.GetImageFromArray(seg.astype(np.uint8))
    img.SetSpacing(tuple(s + spacing_jitter for s in like.GetSpacing()))
    img.SetOrigin(like.GetOrigin())
    img.SetDirection(like.GetDirection())
    sitk.WriteImage(img, str(path), True)


@pytest.fixture
def btcv(tmp_path):
    """Converted BTCV with two test cases and a prediction folder holding one prediction per test case."""
    dataset = convert_btcv(make_btcv_tree(tmp_path, train=(1,), test=(61, 62)), 17, raw_folder=tmp_path / "raw")
    pred = tmp_path / "pred"
    pred.mkdir()
    segs = {}
    for i in (61, 62):
        like = sitk.ReadImage(str(dataset / "imagesTs" / f"BTCV_{i:04d}_0000.nii.gz"))
        segs[i] = organ_boxes(13, i)
        write_prediction(segs[i], like, pred / f"BTCV_{i:04d}.nii.gz", spacing_jitter=1e-6)
    (pred / "plans.json").write_text("{}")  # nnUNetv2_predict writes these next to the predictions
    (pred / "dataset.json").write_text("{}")
    return dataset, pred, segs


def test_btcv_export_renames_and_keeps_geometry(btcv, tmp_path):
    dataset, pred, segs = btcv
    out = export_submission(pred, tmp_path / "submission", "btcv", dataset / "imagesTs")
    assert out == tmp_path / "submission"
    assert sorted(p.name for p in out.iterdir()) == ["label0061.nii.gz", "label0062.nii.gz"]
    for i in (61, 62):
        result = sitk.ReadImage(str(out / f"label{i:04d}.nii.gz"))
        test_image = sitk.ReadImage(str(dataset / "imagesTs" / f"BTCV_{i:04d}_0000.nii.gz"))
        assert result.GetSize() == test_image.GetSize()
        assert result.GetSpacing() == test_image.GetSpacing()  # the test image's header, not the jittered one
        assert result.GetOrigin() == test_image.GetOrigin()
        assert result.GetDirection() == test_image.GetDirection()
        assert result.GetPixelID() == sitk.sitkUInt8
        assert np.array_equal(sitk.GetArrayFromImage(result), segs[i])
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_flare21_export_uses_the_validation_names(tmp_path):
    dataset = convert_flare21(make_flare21_tree(tmp_path, train=(0,), test=(1, 2)), 21, raw_folder=tmp_path / "raw")
    pred = tmp_path / "pred"
    pred.mkdir()
    for i in (1, 2):
        like = sitk.ReadImage(str(dataset / "imagesTs" / f"FLARE21_validation_{i:03d}_0000.nii.gz"))
        write_prediction(organ_boxes(4, i), like, pred / f"FLARE21_validation_{i:03d}.nii.gz")
    out = export_submission(pred, tmp_path / "flare_sub", "flare21", dataset / "imagesTs")
    assert sorted(p.name for p in out.iterdir()) == ["validation_001.nii.gz", "validation_002.nii.gz"]
    result = sitk.ReadImage(str(out / "validation_002.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(result), organ_boxes(4, 2))


def test_wrong_geometry_is_refused_naming_the_case(btcv, tmp_path):
    dataset, pred, segs = btcv
    like = sitk.ReadImage(str(dataset / "imagesTs" / "BTCV_0062_0000.nii.gz"))
    img = sitk.GetImageFromArray(segs[62])
    img.SetSpacing((1.0, 1.0, 1.0))  # e.g. saved in the resampled space instead of the image's own
    img.SetOrigin(like.GetOrigin())
    img.SetDirection(like.GetDirection())
    sitk.WriteImage(img, str(pred / "BTCV_0062.nii.gz"))
    with pytest.raises(SubmissionError, match=r"case BTCV_0062: prediction BTCV_0062.nii.gz is not on the grid "
                                              r"of its test image BTCV_0062_0000.nii.gz \(spacing"):
        export_submission(pred, tmp_path / "submission", "btcv", dataset / "imagesTs")
    assert not (tmp_path / "submission").exists()
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".submission")] == []


def test_wrong_size_is_refused(btcv, tmp_path):
    dataset, pred, segs = btcv
    like = sitk.ReadImage(str(dataset / "imagesTs" / "BTCV_0061_0000.nii.gz"))
    write_prediction(segs[61][:, :, :15], like, pred / "BTCV_0061.nii.gz")
    with pytest.raises(SubmissionError, match=r"case BTCV_0061: .*\(size \(15, 16, 8\) vs \(16, 16, 8\)\)"):
        export_submission(pred, tmp_path / "submission", "btcv", dataset / "imagesTs")


def test_missing_and_extra_cases_are_refused(btcv, tmp_path):
    dataset, pred, segs = btcv
    (pred / "BTCV_0062.nii.gz").rename(tmp_path / "elsewhere.nii.gz")
    with pytest.raises(SubmissionError, match="1 test case\\(s\\) have no prediction in .*: BTCV_0062.nii.gz"):
        export_submission(pred, tmp_path / "submission", "btcv", dataset / "imagesTs")
    (tmp_path / "elsewhere.nii.gz").rename(pred / "BTCV_0062.nii.gz")
    (pred / "BTCV_0001.nii.gz").write_bytes((pred / "BTCV_0061.nii.gz").read_bytes())
    with pytest.raises(SubmissionError, match="BTCV_0001.nii.gz has no test image BTCV_0001_0000.nii.gz"):
        export_submission(pred, tmp_path / "submission", "btcv", dataset / "imagesTs")
    assert not (tmp_path / "submission").exists()


def test_label_outside_the_challenge_set_is_refused(tmp_path):
    dataset = convert_flare21(make_flare21_tree(tmp_path, train=(0,), test=(1,)), 21, raw_folder=tmp_path / "raw")
    like = sitk.ReadImage(str(dataset / "imagesTs" / "FLARE21_validation_001_0000.nii.gz"))
    pred = tmp_path / "pred"
    pred.mkdir()
    seg = organ_boxes(4, 1)
    seg[0, 0, 0] = 5
    write_prediction(seg, like, pred / "FLARE21_validation_001.nii.gz")
    with pytest.raises(SubmissionError, match=r"case FLARE21_validation_001: .* label value\(s\) \[5\]"):
        export_submission(pred, tmp_path / "out", "flare21", dataset / "imagesTs")


def test_existing_output_and_unknown_challenge_are_refused(btcv, tmp_path):
    dataset, pred, _ = btcv
    (tmp_path / "submission").mkdir()
    (tmp_path / "submission" / "old.nii.gz").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="submission exists already"):
        export_submission(pred, tmp_path / "submission", "btcv", dataset / "imagesTs")
    with pytest.raises(SubmissionError, match="choose one of btcv, flare21"):
        export_submission(pred, tmp_path / "other", "amos", dataset / "imagesTs")


def test_cli_exports_and_reports_errors(btcv, tmp_path, capsys):
    dataset, pred, _ = btcv
    assert cli_parsers()["export-submission"].epilog.startswith("nnunet-sacl export-submission ")
    argv = ["export-submission", "-i", str(pred), "-o", str(tmp_path / "sub"), "--challenge", "btcv",
            "--images", str(dataset / "imagesTs")]
    assert main(argv) == 0
    assert (tmp_path / "sub" / "label0061.nii.gz").is_file()
    capsys.readouterr()
    assert main(argv[:-1] + [str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("nnunet-sacl export-submission: error: ") and "nowhere does not exist" in err, err
