"""``nnUNetv2_predict`` output -> the files a challenge scores, named, labelled and on the grid it expects.

The predictions of a dataset converted by :mod:`nnunet_sacl.dataset_conversion.converters` are named like its
``imagesTs`` cases without ``_0000`` (``BTCV_0061.nii.gz``, ``FLARE21_validation_001.nii.gz``). Each is checked
against its test image (same voxel grid) and the challenge's label set, then written as uint8 with the test
image's header geometry under the challenge's own name:

- BTCV: ``label0061.nii.gz`` (the challenge's ``labelXXXX`` naming for ``imgXXXX``), labels 0..13.
- FLARE21: ``validation_001.nii.gz`` (the image name without ``_0000``), labels 0..4.
- FLARE22: the validation image's name without ``_0000`` (convert-flare22 keeps FLARE22's names), labels 0..13.

Sources and the caveats on them are in docs/btcv.md and docs/flare21.md. A missing case, a prediction for an
unknown case, a grid mismatch or a foreign label value stops the export, naming the case; the output folder is
staged and only appears when every case passed. numpy and SimpleITK are imported where images are read and
written, so that the command line can show the challenges (``FORMATS``) without loading them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Tuple

from nnunet_sacl.dataset_conversion.converters import (BTCV_LABELS, FLARE21_LABELS, FLARE22_LABELS, geometry,
                                                       geometry_mismatch, staged_folder)

if TYPE_CHECKING:
    import SimpleITK as sitk

TEST_IMAGE_SUFFIX = "_0000.nii.gz"


class SubmissionError(ValueError):
    """Predictions that cannot be turned into a valid submission (missing, misaligned, wrong labels)."""


@dataclass(frozen=True)
class SubmissionFormat:
    """How a challenge names result files: ``case_pattern`` finds the challenge's case in our case name, and
    ``file_name`` turns that into the file name it scores."""
    case_pattern: str
    file_name: str  # format string with {case}
    labels: Dict[str, int]
    example: str


FORMATS = {
    "btcv": SubmissionFormat(case_pattern=r"_(\d{4})", file_name="label{case}.nii.gz", labels=BTCV_LABELS,
                             example="BTCV_0061.nii.gz -> label0061.nii.gz"),
    "flare21": SubmissionFormat(case_pattern=r"_(validation_\d+)", file_name="{case}.nii.gz",
                                labels=FLARE21_LABELS,
                                example="FLARE21_validation_001.nii.gz -> validation_001.nii.gz"),
    # convert-flare22 keeps FLARE22's own case names; the result file is the image name without _0000
    "flare22": SubmissionFormat(case_pattern=r"^([A-Za-z0-9][A-Za-z0-9_\-]*)", file_name="{case}.nii.gz",
                                labels=FLARE22_LABELS,
                                example="FLARE22_Ts_0001.nii.gz -> FLARE22_Ts_0001.nii.gz"),
}


def _cases(test_images_folder: Path, fmt: SubmissionFormat) -> List[Tuple[str, Path, str]]:
    """(our case id, its test image, the challenge's result file name) for every test image."""
    if not test_images_folder.is_dir():
        raise SubmissionError(f"test images folder {test_images_folder} does not exist (give the converted "
                              f"dataset's imagesTs)")
    cases = []
    for image in sorted(test_images_folder.glob(f"*{TEST_IMAGE_SUFFIX}")):
        case = image.name[:-len(TEST_IMAGE_SUFFIX)]
        m = re.search(fmt.case_pattern + "$", case)
        if m is None:
            raise SubmissionError(f"test image {image} is not named like a converted challenge case "
                                  f"({fmt.example})")
        cases.append((case, image, fmt.file_name.format(case=m.group(1))))
    if not cases:
        raise SubmissionError(f"{test_images_folder} holds no *{TEST_IMAGE_SUFFIX} test images")
    return cases


def _check_predictions_present(prediction_folder: Path, cases) -> None:
    if not prediction_folder.is_dir():
        raise SubmissionError(f"prediction folder {prediction_folder} does not exist")
    expected = {f"{case}.nii.gz" for case, _, _ in cases}
    found = {p.name for p in prediction_folder.glob("*.nii.gz")}
    missing = sorted(expected - found)
    if missing:
        raise SubmissionError(f"{len(missing)} test case(s) have no prediction in {prediction_folder}: "
                              f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    extra = sorted(found - expected)
    if extra:
        raise SubmissionError(f"prediction {prediction_folder / extra[0]} has no test image "
                              f"{extra[0][:-len('.nii.gz')]}{TEST_IMAGE_SUFFIX}; predict on the test images only")


def _submission_image(case: str, prediction: Path, test_image: Path, fmt: SubmissionFormat) -> sitk.Image:
    """The prediction as uint8 with exactly the test image's header geometry, after checking both."""
    import numpy as np
    import SimpleITK as sitk
    target = geometry(test_image)
    mismatch = geometry_mismatch(geometry(prediction), target)
    if mismatch:
        raise SubmissionError(f"case {case}: prediction {prediction.name} is not on the grid of its test image "
                              f"{test_image.name} ({mismatch})")
    seg = sitk.ReadImage(str(prediction))
    values = np.unique(sitk.GetArrayViewFromImage(seg)).tolist()
    allowed = set(fmt.labels.values())
    bad = [v for v in values if v not in allowed]
    if bad:
        raise SubmissionError(f"case {case}: prediction {prediction.name} holds label value(s) {bad}; the "
                              f"challenge scores {sorted(allowed)}")
    out = sitk.Cast(seg, sitk.sitkUInt8)
    out.SetSpacing(target["spacing"])
    out.SetOrigin(target["origin"])
    out.SetDirection(target["direction"])
    return out


def export_submission(prediction_folder, out_folder, challenge: str, test_images_folder) -> Path:
    """Writes ``out_folder`` with one result file per test image, named as ``challenge`` expects; returns it."""
    if challenge not in FORMATS:
        raise SubmissionError(f"challenge {challenge!r}: choose one of {', '.join(FORMATS)}")
    import SimpleITK as sitk
    fmt = FORMATS[challenge]
    prediction_folder, out_folder = Path(prediction_folder), Path(out_folder)
    cases = _cases(Path(test_images_folder), fmt)
    _check_predictions_present(prediction_folder, cases)
    images = [(name, _submission_image(case, prediction_folder / f"{case}.nii.gz", image, fmt))
              for case, image, name in cases]
    if out_folder.is_dir() and not any(out_folder.iterdir()):
        out_folder.rmdir()  # an empty folder made ahead of time is fine
    with staged_folder(out_folder) as tmp:
        for name, image in images:
            sitk.WriteImage(image, str(tmp / name), True)
    return out_folder
