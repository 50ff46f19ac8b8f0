"""BTCV, FLARE21 and FLARE22, as downloaded, into nnU-Net raw datasets (``nnUNet_raw/DatasetXXX_NAME``).

Layouts as released by the challenges (sources in docs/btcv.md and docs/flare21.md):

- BTCV (Synapse ``Abdomen/RawData.zip``): ``RawData/Training/img/img0001.nii.gz``,
  ``RawData/Training/label/label0001.nii.gz``, ``RawData/Testing/img/img0061.nii.gz``.
- FLARE21: ``TrainingImg/train_000_0000.nii.gz``, ``TrainingMask/train_000.nii.gz``,
  ``ValidationImg/validation_001_0000.nii.gz``.

Images and labels are copied byte for byte (geometry and label values unchanged). Every case is checked first
(pairs complete, image/label geometry equal, label values in the challenge's set), and the dataset is written to
a hidden temporary folder next to the target and renamed into place at the end, so a refused or failed
conversion leaves nothing in ``nnUNet_raw``.

numpy and SimpleITK are imported by the functions that read images, so that the command line can show the layouts
(``BTCV``, ``FLARE21``) without loading them.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, replace as dataclass_replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

BTCV_LABELS = {"background": 0, "spleen": 1, "right kidney": 2, "left kidney": 3, "gallbladder": 4,
               "esophagus": 5, "liver": 6, "stomach": 7, "aorta": 8, "inferior vena cava": 9,
               "portal vein and splenic vein": 10, "pancreas": 11, "right adrenal gland": 12,
               "left adrenal gland": 13}
FLARE21_LABELS = {"background": 0, "liver": 1, "kidney": 2, "spleen": 3, "pancreas": 4}

# millimetres for spacing and origin, unitless for direction cosines: far below any real misalignment, far above
# the float32 rounding of NIfTI headers
GEOMETRY_ATOL = 1e-4


class ChallengeLayoutError(ValueError):
    """A downloaded challenge folder that is not laid out, named or labelled as the challenge released it."""


@dataclass(frozen=True)
class ChallengeLayout:
    """Where a challenge keeps its files and how it names them; ``case`` maps a regex match to the stem kept
    in the nnU-Net case name (so ``img0061`` stays recognisable as ``BTCV_0061``)."""
    title: str
    train_images: str
    train_labels: str
    test_images: str
    image_pattern: str  # training image file name, one group: the case stem kept in nnU-Net names
    label_name: Callable[[str], str]  # case stem -> label file name
    test_pattern: str
    labels: Dict[str, int]
    reference: str
    description: str
    example_tree: str


BTCV = ChallengeLayout(
    title="BTCV", train_images="Training/img", train_labels="Training/label", test_images="Testing/img",
    image_pattern=r"img(\d{4})\.nii\.gz", label_name=lambda stem: f"label{stem}.nii.gz",
    test_pattern=r"img(\d{4})\.nii\.gz", labels=BTCV_LABELS,
    reference="https://www.synapse.org/#!Synapse:syn3193805/wiki/217789",
    description="Multi-Atlas Labeling Beyond the Cranial Vault, abdomen (BTCV), 13 organs",
    example_tree="RawData/Training/img/img0001.nii.gz, RawData/Training/label/label0001.nii.gz, "
                 "RawData/Testing/img/img0061.nii.gz (pass the RawData folder)")

FLARE21 = ChallengeLayout(
    title="FLARE21", train_images="TrainingImg", train_labels="TrainingMask", test_images="ValidationImg",
    image_pattern=r"(train_\d+)_0000\.nii\.gz", label_name=lambda stem: f"{stem}.nii.gz",
    test_pattern=r"(validation_\d+)_0000\.nii\.gz", labels=FLARE21_LABELS,
    reference="https://flare.grand-challenge.org/",
    description="MICCAI 2021 FLARE: liver, kidney, spleen, pancreas",
    example_tree="TrainingImg/train_000_0000.nii.gz, TrainingMask/train_000.nii.gz, "
                 "ValidationImg/validation_001_0000.nii.gz (pass the folder holding these three)")


# ---------------------------------------------------------------------------------------------- shared helpers

def geometry(path: Path) -> dict:
    """Size, spacing, origin and direction from the file header only (no voxels are read)."""
    import SimpleITK as sitk
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise ChallengeLayoutError(f"{path} cannot be read as an image: {str(e).strip().splitlines()[-1]}") from e
    return grid_of(reader)


def grid_of(image) -> dict:
    """Size, spacing, origin and direction of a SimpleITK image, or of a reader that has read a header."""
    return {"size": tuple(image.GetSize()), "spacing": image.GetSpacing(), "origin": image.GetOrigin(),
            "direction": image.GetDirection()}


def geometry_mismatch(a: dict, b: dict) -> Optional[str]:
    """``None`` when two headers describe the same voxel grid, else which property differs and how."""
    import numpy as np
    if a["size"] != b["size"]:
        return f"size {a['size']} vs {b['size']}"
    for key in ("spacing", "origin", "direction"):
        if not np.allclose(a[key], b[key], rtol=0, atol=GEOMETRY_ATOL):
            return f"{key} {tuple(round(v, 6) for v in a[key])} vs {tuple(round(v, 6) for v in b[key])}"
    return None


def resolve_raw_folder(raw_folder) -> Path:
    raw = raw_folder or os.environ.get("nnUNet_raw")
    if not raw:
        raise ValueError("no nnUNet_raw folder: pass raw_folder (--raw) or export nnUNet_raw")
    return Path(raw)


@contextmanager
def staged_folder(target: Path):
    """Yields a hidden temporary folder next to ``target`` and renames it to ``target`` when the block succeeds;
    removes it when the block raises. Refuses an existing ``target``."""
    target = Path(target)
    if target.exists():
        raise FileExistsError(f"{target} exists already; remove it or choose another name/id")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        yield tmp
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# -------------------------------------------------------------------------------------------------- checking

def _files(folder: Path, layout: ChallengeLayout, src: Path) -> List[str]:
    if not folder.is_dir():
        raise ChallengeLayoutError(f"{layout.title}: folder {folder} is missing; expected under {src}: "
                                   f"{layout.example_tree}")
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def _match_all(names: List[str], pattern: str, folder: Path, layout: ChallengeLayout) -> Dict[str, str]:
    """case stem -> file name; any file not named like the challenge's is an error naming it."""
    stems = {}
    for name in names:
        m = re.fullmatch(pattern, name)
        if m is None:
            raise ChallengeLayoutError(f"{layout.title}: unexpected file {folder / name}; files there are named "
                                       f"like {layout.example_tree}")
        stems[m.group(1)] = name
    return stems


def _training_pairs(src: Path, layout: ChallengeLayout) -> List[Tuple[str, Path, Path]]:
    img_dir, lab_dir = src / layout.train_images, src / layout.train_labels
    images = _match_all(_files(img_dir, layout, src), layout.image_pattern, img_dir, layout)
    label_names = _files(lab_dir, layout, src)
    if not images:
        raise ChallengeLayoutError(f"{layout.title}: {img_dir} holds no training images; expected "
                                   f"{layout.example_tree}")
    expected_labels = {layout.label_name(stem): stem for stem in images}
    extra = [n for n in label_names if n not in expected_labels]
    if extra:
        raise ChallengeLayoutError(f"{layout.title}: {lab_dir / extra[0]} has no image "
                                   f"({img_dir / layout.image_pattern}); expected {layout.example_tree}")
    missing = [n for n in expected_labels if n not in set(label_names)]
    if missing:
        stem = expected_labels[missing[0]]
        raise ChallengeLayoutError(f"{layout.title}: case {stem}: label {lab_dir / missing[0]} is missing for "
                                   f"image {img_dir / images[stem]}")
    return [(stem, img_dir / images[stem], lab_dir / layout.label_name(stem)) for stem in images]


def _test_images(src: Path, layout: ChallengeLayout) -> List[Tuple[str, Path]]:
    folder = src / layout.test_images
    stems = _match_all(_files(folder, layout, src), layout.test_pattern, folder, layout)
    if not stems:
        raise ChallengeLayoutError(f"{layout.title}: {folder} holds no test images; expected "
                                   f"{layout.example_tree}")
    return [(stem, folder / name) for stem, name in stems.items()]


def _check_pair(stem: str, image: Path, label: Path, layout: ChallengeLayout) -> None:
    import numpy as np
    import SimpleITK as sitk
    mismatch = geometry_mismatch(geometry(image), geometry(label))
    if mismatch:
        raise ChallengeLayoutError(f"{layout.title}: case {stem}: {image.name} and {label.name} are on different "
                                   f"voxel grids ({mismatch}); nnU-Net needs labels on the image's grid")
    seg = sitk.ReadImage(str(label))  # kept in a name: the array view borrows its buffer
    values = np.unique(sitk.GetArrayViewFromImage(seg))
    allowed = set(layout.labels.values())
    bad = [v for v in values.tolist() if v not in allowed]
    if bad:
        raise ChallengeLayoutError(f"{layout.title}: case {stem}: {label} holds label value(s) {bad}; "
                                   f"{layout.title} labels are {sorted(allowed)} ({_label_list(layout)})")


def _label_list(layout: ChallengeLayout) -> str:
    return ", ".join(f"{v} {k}" for k, v in layout.labels.items() if v)


def new_dataset_folder(dataset_id: int, name: str, raw_folder=None) -> Path:
    """``nnUNet_raw/DatasetXXX_NAME`` for a dataset about to be written: refused for a name nnU-Net cannot take, an id
    outside 1..999, or an id another dataset holds."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_\-]*", name):
        raise ValueError(f"dataset name {name!r}: use letters, digits, '-' and '_' only")
    if not 1 <= int(dataset_id) <= 999:
        raise ValueError(f"dataset id {dataset_id}: nnU-Net ids are 1..999")
    raw = resolve_raw_folder(raw_folder)
    target = raw / f"Dataset{int(dataset_id):03d}_{name}"
    taken = sorted(p.name for p in raw.glob(f"Dataset{int(dataset_id):03d}_*")) if raw.is_dir() else []
    if taken:
        raise FileExistsError(f"dataset id {dataset_id} is taken in {raw} by {taken[0]}; nnU-Net needs one "
                              f"folder per id: remove it or choose another id")
    return target


# ------------------------------------------------------------------------------------------------ conversion

def convert_challenge(src, dataset_id: int, layout: ChallengeLayout, raw_folder=None, name: Optional[str] = None,
                      ) -> Path:
    """Checks the whole download, then writes ``DatasetXXX_NAME`` with cases ``NAME_<challenge case>``."""
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    src, name = Path(src).expanduser(), name or layout.title
    if not src.is_dir():
        raise ChallengeLayoutError(f"{layout.title}: {src} is not a folder; expected {layout.example_tree}")
    target = new_dataset_folder(dataset_id, name, raw_folder)

    pairs = _training_pairs(src, layout)
    tests = _test_images(src, layout)
    for stem, image, label in pairs:
        _check_pair(stem, image, label, layout)
    for stem, image in tests:
        geometry(image)  # readable header, or an error naming the file

    with staged_folder(target) as out:
        for sub in ("imagesTr", "labelsTr", "imagesTs"):
            (out / sub).mkdir()
        for stem, image, label in pairs:
            shutil.copyfile(image, out / "imagesTr" / f"{name}_{stem}_0000.nii.gz")
            shutil.copyfile(label, out / "labelsTr" / f"{name}_{stem}.nii.gz")
        for stem, image in tests:
            shutil.copyfile(image, out / "imagesTs" / f"{name}_{stem}_0000.nii.gz")
        generate_dataset_json(str(out), {0: "CT"}, dict(layout.labels), len(pairs), ".nii.gz",
                              dataset_name=target.name, reference=layout.reference,
                              description=layout.description, license="see the challenge website",
                              converted_by=f"nnunet-sacl convert-{layout.title.lower()} from {src}",
                              numTest=len(tests))
    return target


def convert_btcv(src, dataset_id: int, raw_folder=None, name: str = "BTCV") -> Path:
    """BTCV ``RawData`` folder -> ``DatasetXXX_NAME`` (cases ``BTCV_0001``; test cases ``BTCV_0061``)."""
    return convert_challenge(src, dataset_id, BTCV, raw_folder, name)


def convert_flare21(src, dataset_id: int, raw_folder=None, name: str = "FLARE21") -> Path:
    """FLARE21 download -> ``DatasetXXX_NAME`` (cases ``FLARE21_train_000``; test ``FLARE21_validation_001``)."""
    return convert_challenge(src, dataset_id, FLARE21, raw_folder, name)


# ---------------------------------------------------------------------------------------------------- FLARE22

FLARE22_LABELS = {"background": 0, "liver": 1, "right kidney": 2, "spleen": 3, "pancreas": 4, "aorta": 5,
                  "inferior vena cava": 6, "right adrenal gland": 7, "left adrenal gland": 8, "gallbladder": 9,
                  "esophagus": 10, "stomach": 11, "duodenum": 12, "left kidney": 13}
# the labelled set's folder as public sources spell it (``FLARE22_LabeledCase50``, also ``FLARE_LabeledCase50``)
FLARE22_LABELLED = r"FLARE(22)?_LabeledCase\d+"
FLARE22_UNLABELLED = r"FLARE(22)?_UnlabeledCase[\d\-]+"   # FLARE22_UnlabeledCase1-1000, ...1001-2000
FLARE22_VALIDATION = ("Validation", "Tuning")
FLARE22_UNLABELLED_FOLDER = "imagesUnlabelled"
FLARE22 = ChallengeLayout(
    title="FLARE22", train_images="images", train_labels="labels", test_images="Validation",
    image_pattern=r"(FLARE22_Tr_\d{4})_0000\.nii\.gz", label_name=lambda stem: f"{stem}.nii.gz",
    test_pattern=r"([A-Za-z0-9_\-]+)_0000\.nii\.gz", labels=FLARE22_LABELS,
    reference="https://flare22.grand-challenge.org/",
    description="MICCAI 2022 FLARE: 13 abdominal organs; 50 labelled, 2,000 unlabelled CT scans",
    example_tree="Training/FLARE22_LabeledCase50/images/FLARE22_Tr_0001_0000.nii.gz, "
                 "Training/FLARE22_LabeledCase50/labels/FLARE22_Tr_0001.nii.gz, "
                 "Training/FLARE22_UnlabeledCase1-1000/Case_00001_0000.nii.gz, "
                 "Validation/<case>_0000.nii.gz (pass the folder holding Training and Validation)")
UNLABELLED_PATTERN = r"([A-Za-z0-9_\-]+)_0000\.nii\.gz"


def _flare22_folders(src: Path) -> Tuple[Path, List[Path], Path]:
    """(labelled folder, unlabelled folders, validation folder), each as public sources name it."""
    training = src / "Training"
    if not training.is_dir():
        raise ChallengeLayoutError(f"FLARE22: folder {training} is missing; expected {FLARE22.example_tree}")
    subs = sorted(p for p in training.iterdir() if p.is_dir() and not p.name.startswith("."))
    labelled = [p for p in subs if re.fullmatch(FLARE22_LABELLED, p.name)]
    unlabelled = [p for p in subs if re.fullmatch(FLARE22_UNLABELLED, p.name)]
    other = [p for p in subs if p not in labelled and p not in unlabelled]
    if other:
        raise ChallengeLayoutError(f"FLARE22: unexpected folder {other[0]}; expected {FLARE22.example_tree}")
    if len(labelled) != 1:
        raise ChallengeLayoutError(f"FLARE22: {training} holds {len(labelled)} labelled folders "
                                   f"(FLARE22_LabeledCase50); expected one: {FLARE22.example_tree}")
    validation = [src / n for n in FLARE22_VALIDATION if (src / n).is_dir()]
    if len(validation) != 1:
        raise ChallengeLayoutError(f"FLARE22: {src} holds {len(validation)} of the validation folders "
                                   f"{' / '.join(FLARE22_VALIDATION)}; expected one: {FLARE22.example_tree}")
    return labelled[0], unlabelled, validation[0]


def convert_flare22(src, dataset_id: int, raw_folder=None, name: str = "FLARE22") -> Path:
    """FLARE22 download -> ``DatasetXXX_NAME``: the labelled scans in imagesTr/labelsTr (cases ``FLARE22_Tr_0001``,
    13 organs as FLARE22 numbers them), the validation scans in imagesTs and the unlabelled scans in
    ``imagesUnlabelled`` (a folder ``nnunet-sacl pseudo-label -i`` and ``nnUNetv2_predict -i`` read), every file
    under its FLARE22 name. Everything is checked before anything is written."""
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    src = Path(src).expanduser()
    if not src.is_dir():
        raise ChallengeLayoutError(f"FLARE22: {src} is not a folder; expected {FLARE22.example_tree}")
    target = new_dataset_folder(dataset_id, name, raw_folder)

    labelled, unlabelled_folders, validation = _flare22_folders(src)
    pairs = _training_pairs(labelled, FLARE22)
    tests = _test_images(validation.parent, dataclass_replace(FLARE22, test_images=validation.name))
    unlabelled: Dict[str, Path] = {}
    for folder in unlabelled_folders:
        for stem, file in _match_all(_files(folder, FLARE22, src), UNLABELLED_PATTERN, folder, FLARE22).items():
            if stem in unlabelled:
                raise ChallengeLayoutError(f"FLARE22: unlabelled case {stem} is in both {unlabelled[stem].parent} "
                                           f"and {folder}")
            unlabelled[stem] = folder / file
    for stem, image, label in pairs:
        _check_pair(stem, image, label, FLARE22)
    for image in [i for _, i in tests] + list(unlabelled.values()):
        geometry(image)  # readable header, or an error naming the file

    with staged_folder(target) as out:
        for sub in ("imagesTr", "labelsTr", "imagesTs", FLARE22_UNLABELLED_FOLDER):
            (out / sub).mkdir()
        for stem, image, label in pairs:
            shutil.copyfile(image, out / "imagesTr" / image.name)
            shutil.copyfile(label, out / "labelsTr" / label.name)
        for stem, image in tests:
            shutil.copyfile(image, out / "imagesTs" / image.name)
        for stem, image in sorted(unlabelled.items()):
            shutil.copyfile(image, out / FLARE22_UNLABELLED_FOLDER / image.name)
        generate_dataset_json(str(out), {0: "CT"}, dict(FLARE22_LABELS), len(pairs), ".nii.gz",
                              dataset_name=target.name, reference=FLARE22.reference,
                              description=FLARE22.description, license="see the challenge website",
                              converted_by=f"nnunet-sacl convert-flare22 from {src}",
                              numTest=len(tests), numUnlabelled=len(unlabelled))
    return target
