"""A small generated nnU-Net dataset for tests and the CPU demo: three 'organs' with distinct shapes and
intensities in a noisy body, anisotropic spacing (3 x 1 x 1 mm), seeded."""
import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ORGANS = {"ellipsoid": 1, "box": 2, "tube": 3}
INTENSITY_HU = {1: 70.0, 2: 180.0, 3: -60.0}


def _case(rng: np.random.Generator, shape):
    z, y, x = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    seg = np.zeros(shape, np.uint8)
    # organs go into different in-plane quadrants, so they never overlap; sizes and positions vary per case
    quadrants = rng.permutation(4)[:3]
    for label, quadrant in zip((1, 2, 3), quadrants):
        qy, qx = divmod(int(quadrant), 2)
        cy = (qy + 0.5) * shape[1] / 2 + rng.uniform(-2, 2)
        cx = (qx + 0.5) * shape[2] / 2 + rng.uniform(-2, 2)
        cz = shape[0] / 2 + rng.uniform(-2, 2)
        r = rng.uniform(0.18, 0.24) * shape[1]
        rz = rng.uniform(0.25, 0.35) * shape[0]
        if label == 1:
            mask = ((z - cz) / rz) ** 2 + ((y - cy) / r) ** 2 + ((x - cx) / (0.7 * r)) ** 2 <= 1
        elif label == 2:
            mask = (abs(z - cz) <= rz) & (abs(y - cy) <= 0.8 * r) & (abs(x - cx) <= 0.8 * r)
        else:
            mask = ((y - cy) ** 2 + (x - cx) ** 2 <= (0.5 * r) ** 2) & (abs(z - cz) <= 1.3 * rz)
        seg[mask] = label
    image = rng.normal(0.0, 25.0, shape)
    for label, hu in INTENSITY_HU.items():
        image[seg == label] += hu + rng.normal(0, 10)
    return image.astype(np.float32), seg


def _write(array, spacing_zyx, path):
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(tuple(float(s) for s in reversed(spacing_zyx)))
    sitk.WriteImage(img, str(path))


def make_synthetic_dataset(raw_folder, dataset_id: int, name: str = "SACLSynthetic", num_training: int = 10,
                           num_test: int = 2, shape=(20, 48, 48), spacing=(3.0, 1.0, 1.0), seed: int = 0) -> Path:
    """Writes ``raw_folder/DatasetXXX_name`` (imagesTr, labelsTr, imagesTs, labelsTs, dataset.json); returns it."""
    out = Path(raw_folder) / f"Dataset{dataset_id:03d}_{name}"
    if out.exists():
        raise FileExistsError(f"{out} exists already; remove it or pick another dataset id")
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (out / sub).mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(num_training + num_test):
        image, seg = _case(rng, shape)
        split = "Tr" if i < num_training else "Ts"
        case = f"{name.lower()}_{i:03d}"
        _write(image, spacing, out / f"images{split}" / f"{case}_0000.nii.gz")
        _write(seg, spacing, out / f"labels{split}" / f"{case}.nii.gz")
    dataset = {"channel_names": {"0": "CT"}, "labels": {"background": 0, **ORGANS},
               "numTraining": num_training, "file_ending": ".nii.gz", "name": name,
               "description": "nnunet-sacl synthetic organs (tests and CPU demo)"}
    (out / "dataset.json").write_text(json.dumps(dataset, indent=2))
    return out
