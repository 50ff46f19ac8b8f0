"""Synthetic BTCV-sized CT dataset for the data-path benchmarks, planned and preprocessed by nnU-Net itself.

Writes N seeded synthetic abdominal CTs (default 10 of 120x512x512 voxels at 0.76 x 0.76 x 3 mm, BTCV's size and
spacing: a body ellipse with a spine and eight labelled organ-like blobs of distinct HU) into
``$nnUNet_raw/DatasetXXX_BTCVSized``, then runs nnU-Net's own ``nnUNetv2_plan_and_preprocess -c 3d_fullres``, so
the plan (about 48x192x192, batch 2), the preprocessed files and therefore the dataloader's work are nnU-Net's.
``--small`` makes 5 cases (nnU-Net's 5-fold split needs 5) of 40x96x96 to check the scripts on a CPU.

    python benchmarks/make_btcv_sized_dataset.py --root /tmp/nnunet_dp -np 8
    python benchmarks/make_btcv_sized_dataset.py --root /tmp/dp_small --small -np 2

Images are int16 HU and labels uint8, written uncompressed with SimpleITK (``.mha``; nnU-Net reads it with its
SimpleITKIO), which is far faster to write and read than ``.nii.gz`` at this size. See benchmarks/DATA_PATH.md.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import SimpleITK as sitk

from nnunet_sacl.environment import planning_env

DATASET_NAME = "BTCVSized"
FULL_SHAPE, SMALL_SHAPE = (120, 512, 512), (40, 96, 96)
SPACING_ZYX = (3.0, 0.76, 0.76)
AIR_HU, BODY_HU, BONE_HU, NOISE_HU = -1000.0, 20.0, 500.0, 20.0


@dataclass(frozen=True)
class Organ:
    """An organ-like blob: centre and radii as fractions of the volume's extent (z, y, x), so the same anatomy
    fits the full and the --small shape; a tube spans its z radius with a round in-plane section."""
    name: str
    label: int
    hu: float
    centre: Tuple[float, float, float]
    radii: Tuple[float, float, float]
    tube: bool = False


# drawn in this order, later ones over earlier ones; HU distinct enough for the organs to be told apart
ORGANS = (
    Organ("liver", 1, 60.0, (0.60, 0.45, 0.30), (0.22, 0.16, 0.14)),
    Organ("spleen", 2, 45.0, (0.62, 0.50, 0.74), (0.12, 0.08, 0.05)),
    Organ("stomach", 3, 5.0, (0.66, 0.36, 0.62), (0.12, 0.08, 0.08)),
    Organ("right_kidney", 4, 150.0, (0.45, 0.62, 0.34), (0.12, 0.05, 0.04)),
    Organ("left_kidney", 5, 170.0, (0.46, 0.62, 0.66), (0.12, 0.05, 0.04)),
    Organ("pancreas", 6, 95.0, (0.52, 0.50, 0.55), (0.05, 0.025, 0.10)),
    Organ("aorta", 7, 220.0, (0.50, 0.58, 0.53), (0.40, 0.025, 0.025), tube=True),
    Organ("inferior_vena_cava", 8, 120.0, (0.50, 0.56, 0.44), (0.40, 0.025, 0.025), tube=True),
)


# ------------------------------------------------------------------------------------------------ one case
def jittered(organ: Organ, rng: np.random.Generator) -> Organ:
    """Per-case variation: centre shifted by up to 3% of the extent, radii scaled by 0.85..1.15, HU +-10."""
    centre = tuple(c + rng.uniform(-0.03, 0.03) for c in organ.centre)
    radii = tuple(r * rng.uniform(0.85, 1.15) for r in organ.radii)
    return Organ(organ.name, organ.label, organ.hu + rng.uniform(-10, 10), centre, radii, organ.tube)


def bounding_slices(centre, radii, shape) -> Tuple[slice, ...]:
    """The voxel box around an ellipsoid, so masks are computed on the box only (fast at 512x512)."""
    return tuple(slice(max(0, int((c - r) * n) - 1), min(n, int((c + r) * n) + 2))
                 for c, r, n in zip(centre, radii, shape))


def blob_mask(organ: Organ, shape) -> Tuple[Tuple[slice, ...], np.ndarray]:
    """(box, boolean mask inside the box) of an ellipsoid, or of a tube (z extent = z radius, round section)."""
    box = bounding_slices(organ.centre, organ.radii, shape)
    z, y, x = (((np.arange(s.start, s.stop) + 0.5) / n - c) / r
               for s, n, c, r in zip(box, shape, organ.centre, organ.radii))
    z, y, x = z[:, None, None], y[None, :, None], x[None, None, :]
    if organ.tube:
        return box, (np.abs(z) <= 1) & (y ** 2 + x ** 2 <= 1)
    return box, z ** 2 + y ** 2 + x ** 2 <= 1


def body_and_spine(shape, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """In-plane masks [Y, X] of the body (an ellipse filling most of the field) and of the spine (unlabelled bone)."""
    y = (np.arange(shape[1]) + 0.5)[:, None] / shape[1]
    x = (np.arange(shape[2]) + 0.5)[None, :] / shape[2]
    ry, rx = 0.36 * rng.uniform(0.95, 1.05), 0.44 * rng.uniform(0.95, 1.05)
    body = ((y - 0.5) / ry) ** 2 + ((x - 0.5) / rx) ** 2 <= 1
    spine = ((y - 0.74) / 0.05) ** 2 + ((x - 0.5) / 0.05) ** 2 <= 1
    return body, spine


def synthetic_case(shape, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """(int16 HU image, uint8 labels) of one case, both [Z, Y, X]."""
    body, spine = body_and_spine(shape, rng)
    image = rng.standard_normal(shape, dtype=np.float32)
    image *= NOISE_HU
    image += np.where(body, BODY_HU, AIR_HU).astype(np.float32)[None]
    image[:, spine] += BONE_HU
    seg = np.zeros(shape, np.uint8)
    for organ in ORGANS:
        organ = jittered(organ, rng)
        box, mask = blob_mask(organ, shape)
        seg[box][mask] = organ.label
        image[box][mask] += organ.hu - BODY_HU
    return np.clip(image, -1024, 3071).astype(np.int16), seg


def write_image(array: np.ndarray, path: Path) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in reversed(SPACING_ZYX)))     # SimpleITK wants x, y, z
    sitk.WriteImage(image, str(path), useCompression=False)


# ------------------------------------------------------------------------------------------------ dataset
def dataset_json(num_training: int, file_ending: str) -> dict:
    return {"channel_names": {"0": "CT"},
            "labels": {"background": 0, **{o.name: o.label for o in ORGANS}},
            "numTraining": num_training, "file_ending": file_ending, "name": DATASET_NAME,
            "description": "nnunet-sacl synthetic BTCV-sized CTs for the data-path benchmarks"}


def write_raw_dataset(raw_root: Path, dataset_id: int, num_cases: int, shape, seed: int) -> Path:
    """nnUNet_raw/DatasetXXX_BTCVSized with imagesTr, labelsTr and dataset.json (written last, so its presence
    means the dataset is complete); returns the folder."""
    folder = raw_root / f"Dataset{dataset_id:03d}_{DATASET_NAME}"
    if folder.exists():
        raise SystemExit(f"{folder} exists already; remove it or pick another --dataset-id")
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    rng = np.random.default_rng(seed)
    for i in range(num_cases):
        start = time.perf_counter()
        image, seg = synthetic_case(shape, rng)
        case = f"btcvsized_{i:03d}"
        write_image(image, folder / "imagesTr" / f"{case}_0000.mha")
        write_image(seg, folder / "labelsTr" / f"{case}.mha")
        print(f"  {case}: {shape}, {time.perf_counter() - start:.1f} s", flush=True)
    (folder / "dataset.json").write_text(json.dumps(dataset_json(num_cases, ".mha"), indent=2) + "\n")
    return folder


def plan_and_preprocess(dataset_id: int, num_processes: int) -> None:
    """nnU-Net's own nnUNetv2_plan_and_preprocess (3d_fullres), run through its entry-point module so it works
    where the console scripts are not on PATH (the GPU machine installs nnunetv2 with pip --target)."""
    env = planning_env(os.environ)
    cmd = [sys.executable, "-m", "nnunetv2.experiment_planning.plan_and_preprocess_entrypoints",
           "-d", str(dataset_id), "-c", "3d_fullres", "-np", str(num_processes), "-npfp", str(num_processes)]
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, env=env, check=True)


def use_root(root: Optional[Path]) -> None:
    """nnUNet_raw / nnUNet_preprocessed / nnUNet_results under root (for this process and its children); without a
    root, as the environment sets them (all three must be set)."""
    if root is not None:
        for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            os.environ[name] = str((root / name).resolve())
            Path(os.environ[name]).mkdir(parents=True, exist_ok=True)
    missing = [k for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results") if not os.environ.get(k)]
    if missing:
        raise SystemExit(f"set {', '.join(missing)} or pass --root")


def print_plan(dataset_folder_name: str) -> None:
    plans_file = Path(os.environ["nnUNet_preprocessed"]) / dataset_folder_name / "nnUNetPlans.json"
    config = json.loads(plans_file.read_text())["configurations"]["3d_fullres"]
    print(f"nnU-Net's 3d_fullres plan: patch {config['patch_size']}, batch {config['batch_size']}, "
          f"spacing {config['spacing']} ({plans_file})")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--root", type=Path,
                   help="put nnUNet_raw/preprocessed/results under this folder (else the environment's are used)")
    p.add_argument("--dataset-id", type=int, default=991)
    p.add_argument("--cases", type=int, help="number of cases (default 10, --small 5: nnU-Net splits 5 folds)")
    p.add_argument("--small", action="store_true", help=f"cases of {SMALL_SHAPE} instead of {FULL_SHAPE}")
    p.add_argument("-np", "--num-processes", type=int, default=8, help="nnU-Net's processes (-np and -npfp)")
    p.add_argument("--seed", type=int, default=0)
    step = p.add_mutually_exclusive_group()
    step.add_argument("--no-plan", action="store_true", help="only write the raw dataset")
    step.add_argument("--plan-only", action="store_true", help="only plan and preprocess the raw dataset written "
                                                                "before (with --no-plan)")
    args = p.parse_args(argv)
    if args.cases is None:
        args.cases = 5 if args.small else 10
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    use_root(args.root)
    shape = SMALL_SHAPE if args.small else FULL_SHAPE
    start = time.perf_counter()
    folder = Path(os.environ["nnUNet_raw"]) / f"Dataset{args.dataset_id:03d}_{DATASET_NAME}"
    if args.plan_only and not (folder / "dataset.json").is_file():
        raise SystemExit(f"--plan-only: {folder} holds no dataset.json; write the dataset first")
    if not args.plan_only:
        write_raw_dataset(Path(os.environ["nnUNet_raw"]), args.dataset_id, args.cases, shape, args.seed)
        print(f"raw dataset: {folder} ({time.perf_counter() - start:.0f} s)", flush=True)
    if not args.no_plan:
        plan_and_preprocess(args.dataset_id, args.num_processes)
        print_plan(folder.name)
    print(f"done in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
