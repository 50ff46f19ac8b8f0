"""Regenerates plans/btcv_like_nnUNetPlans.json and plans/btcv_like_dataset.json with nnU-Net's own planner.

No BTCV image is needed: nnU-Net plans from the dataset fingerprint (spacings, shapes after cropping, CT
intensities), so a fingerprint with BTCV's statistics (30 CTs, 512x512 in-plane at 0.59-0.93 mm, 85-198 slices,
mostly 3 mm; medians 0.76 x 0.76 x 3 mm) and one tiny placeholder image per case (the planner opens one to pick
the image reader) give the plan nnU-Net 2.8.1 makes for such data: 3d_fullres patch 48x192x192, batch 2, spacing
3 x 0.76 x 0.76, 6-stage PlainConvUNet (32..320 features). The intensity statistics only matter for preprocessing
real images; the benchmark feeds synthetic batches.

    python benchmarks/make_btcv_like_plans.py                   # writes into plans/
    python benchmarks/make_btcv_like_plans.py --preset resenc_m  # the ResEnc M preset (nnUNetPlannerResEncM)

The ResEnc M preset (``nnUNetv2_plan_experiment -pl nnUNetPlannerResEncM``) is planned from the same fingerprint
into plans/btcv_like_nnUNetResEncUNetMPlans.json.
"""
import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATASET_NAME = "Dataset017_BTCVLike"
NUM_CASES = 30
PRESETS = {   # preset -> (planner module under nnunetv2.experiment_planning.experiment_planners, class)
    "default": ("default_experiment_planner", "ExperimentPlanner"),
    "resenc_m": ("residual_unets.residual_encoder_unet_planners", "nnUNetPlannerResEncM"),
}
CT_FOREGROUND_INTENSITIES = {"max": 1711.0, "mean": 99.4, "median": 104.0, "min": -986.0,
                             "percentile_00_5": -958.0, "percentile_99_5": 276.0, "std": 63.2}


def btcv_like_geometry():
    """Per case (slices, in-plane spacing, slice spacing): thick slices on the shorter scans, medians 120 slices
    (147 at the 3 mm target), 0.76 mm, 3 mm; 3 mm is also the 10th percentile, so nnU-Net keeps it as target."""
    slice_spacing = [5.0] * 3 + [3.0] * 25 + [2.5] * 2
    in_plane = sorted(np.round(np.linspace(0.59, 0.93, NUM_CASES), 3).tolist())
    slices = sorted(np.linspace(85, 198, NUM_CASES).astype(int).tolist())
    for median_pair in (NUM_CASES // 2 - 1, NUM_CASES // 2):
        in_plane[median_pair], slices[median_pair] = 0.76, 120
    return list(zip(slices, in_plane, slice_spacing))


def write_raw_dataset(raw: Path, geometry) -> None:
    """dataset.json as nnunet-sacl's BTCV converter writes it, and one 2x2x2 placeholder image + label per case."""
    import SimpleITK as sitk
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
    from nnunet_sacl.dataset_conversion.converters import BTCV_LABELS

    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    for i, (_, in_plane, slice_spacing) in enumerate(geometry, start=1):
        image = sitk.GetImageFromArray(np.zeros((2, 2, 2), np.int16))
        image.SetSpacing((in_plane, in_plane, slice_spacing))
        sitk.WriteImage(image, str(raw / "imagesTr" / f"BTCV_{i:04d}_0000.nii.gz"))
        sitk.WriteImage(sitk.Cast(image, sitk.sitkUInt8), str(raw / "labelsTr" / f"BTCV_{i:04d}.nii.gz"))
    generate_dataset_json(
        str(raw), {0: "CT"}, dict(BTCV_LABELS), len(geometry), ".nii.gz", dataset_name=DATASET_NAME,
        description="BTCV-like (BTCV's 13 abdominal organs and CT channel) for the nnunet-sacl step benchmark",
        reference="https://www.synapse.org/#!Synapse:syn3193805/wiki/217789",
        license="no images: labels and channel as BTCV (data under its Synapse terms)",
        converted_by="nnunet-sacl benchmarks (planned by nnU-Net 2.8.1 from a BTCV-like fingerprint)")


def write_fingerprint(preprocessed: Path, geometry) -> None:
    """The fingerprint nnUNetv2_extract_fingerprint would write for BTCV (CT is nonzero everywhere: no crop)."""
    from batchgenerators.utilities.file_and_folder_operations import save_json
    preprocessed.mkdir(parents=True)
    save_json({
        "foreground_intensity_properties_per_channel": {"0": CT_FOREGROUND_INTENSITIES},
        "median_relative_size_after_cropping": 1.0,
        "shapes_after_crop": [[slices, 512, 512] for slices, _, _ in geometry],
        "spacings": [[slice_spacing, in_plane, in_plane] for _, in_plane, slice_spacing in geometry],
    }, str(preprocessed / "dataset_fingerprint.json"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=REPO / "plans", help="folder for the two JSON files")
    p.add_argument("--preset", choices=sorted(PRESETS), default="default",
                   help="nnU-Net's default planner or the ResEnc M preset")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="btcv_like_plans_") as root:
        # nnunetv2.paths reads these when used, so they can be set after import
        os.environ.update(nnUNet_raw=f"{root}/raw", nnUNet_preprocessed=f"{root}/pre", nnUNet_results=f"{root}/res")
        from importlib import import_module
        module, name = PRESETS[args.preset]
        planner_class = getattr(import_module(f"nnunetv2.experiment_planning.experiment_planners.{module}"), name)
        geometry = btcv_like_geometry()
        raw, preprocessed = Path(root, "raw", DATASET_NAME), Path(root, "pre", DATASET_NAME)
        write_raw_dataset(raw, geometry)
        write_fingerprint(preprocessed, geometry)
        planner = planner_class(DATASET_NAME)
        planner.plan_experiment()
        args.out.mkdir(parents=True, exist_ok=True)
        plans_file = args.out / f"btcv_like_{planner.plans_identifier}.json"
        shutil.copyfile(preprocessed / f"{planner.plans_identifier}.json", plans_file)
        shutil.copyfile(raw / "dataset.json", args.out / "btcv_like_dataset.json")
    print(f"written: {plans_file}, {args.out / 'btcv_like_dataset.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
