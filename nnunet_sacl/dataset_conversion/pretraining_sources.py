"""Two labelled pretraining sources from the TotalSegmentator 2.18.0 sdist, to try ``merge-datasets`` and
``SACLPretrainer`` on real CT (docs/pretraining.md, "Evidence").

The sdist ships, besides the two scans of the demo dataset, one more CT: a chest-abdomen scan (1.5 mm) used by
TotalSegmentator's aorta and pulmonary reports, with segmentations of two different structure sets on two crops of
it. They become two nnU-Net raw datasets the way two public datasets come: each with its own label list, ids and
field of view. Neither contains a scan the demo dataset trains or evaluates on.

- ``aorta``: the aorta report's crop with the aorta, its branches and the T12 vertebra;
- ``heart``: the pulmonary report's crop with the heart and the pulmonary artery.

Grid and perturbations follow the demo dataset (docs/demo-data.md): 5 mm isotropic voxels, identity direction,
CT as int16 HU, labels uint8 by nearest neighbour; case 0 is the crop itself, every other case a seeded
perturbation (rotation, scaling, shift, contrast enhancement, gamma, contrast, noise). A structure keeps its label
only where no earlier structure of the list has one (the masks are separate files and may touch).
"""
import json
import tarfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_sacl.dataset_conversion.demo_data import (IDENTITY, REFERENCE, SDIST_NAME, SDIST_SHA256, SPACING_MM,
                                                      built_in_place, derive_case, draw_perturbation,
                                                      fetch_totalsegmentator_sdist, grid, image_bounds_mm, read_nifti,
                                                      resample, target_folder)

AORTA_MODELS = f"{REFERENCE}/aorta_report/test_result/models"
PULMONARY_MODELS = f"{REFERENCE}/pulmonary_report/models"
# name: (CT member, [(structure, mask member), ...]) in TotalSegmentator's structure names
SOURCES = {
    "aorta": ("TSAortaReport", f"{AORTA_MODELS}/ct_cropped.nii.gz",
              [(s, f"{AORTA_MODELS}/{s}.nii.gz") for s in
               ("aorta", "brachiocephalic_trunk", "subclavian_artery_left", "common_carotid_artery_left",
                "celiac_trunk", "superior_mesenteric_artery", "vertebrae_T12")]),
    "heart": ("TSHeartReport", f"{PULMONARY_MODELS}/ct_cropped.nii.gz",
              [(s, f"{PULMONARY_MODELS}/{s}.nii.gz") for s in ("heart", "pulmonary_artery")]),
}
MIN_VOXELS = 10   # a structure with fewer voxels at 5 mm in the unperturbed crop is left out (named in dataset.json)


def label_map(masks, reference: sitk.Image) -> np.ndarray:
    """One label per voxel on the reference grid: structure i + 1 where its mask (nearest neighbour) is set and
    no earlier structure is."""
    out = np.zeros(sitk.GetArrayFromImage(reference).shape, np.uint8)
    for i, mask in enumerate(masks):
        on = sitk.GetArrayFromImage(resample(mask, reference, sitk.Transform(), is_label=True)) > 0
        out[on & (out == 0)] = i + 1
    return out


def source_grid(ct: sitk.Image) -> sitk.Image:
    """The crop's whole field of view at the demo spacing."""
    lo, hi = image_bounds_mm(ct)
    return grid(lo, np.floor((hi - lo) / SPACING_MM).astype(int) + 1)


def build_pretraining_source(kind: str, dataset_id: int, raw_folder=None, sdist=None, num_cases: int = 4,
                             seed: int = 0) -> Path:
    """Writes ``raw_folder/DatasetXXX_TSAortaReport`` or ``..._TSHeartReport`` (``kind`` 'aorta' or 'heart';
    default raw folder $nnUNet_raw) and returns it; built next to it and moved into place at the end."""
    if kind not in SOURCES:
        raise ValueError(f"unknown pretraining source {kind!r}: use one of {sorted(SOURCES)}")
    if num_cases < 1:
        raise ValueError(f"num_cases must be at least 1, got {num_cases}")
    name, ct_member, structures = SOURCES[kind]
    out = target_folder(dataset_id, name, raw_folder)
    source = fetch_totalsegmentator_sdist(sdist=sdist)
    with built_in_place(out) as work:
        with tarfile.open(source) as tar:
            ct = read_nifti(tar, ct_member, work / "sources")
            masks = [read_nifti(tar, member, work / "sources") for _, member in structures]
        reference = source_grid(ct)
        labels = label_map(masks, reference)
        counts = np.bincount(labels.ravel(), minlength=len(structures) + 1)[1:]
        kept = [i for i, c in enumerate(counts) if c >= MIN_VOXELS]
        table = np.zeros(len(structures) + 1, np.uint8)
        table[[i + 1 for i in kept]] = np.arange(1, len(kept) + 1)
        seg = sitk.GetImageFromArray(table[labels])
        seg.CopyInformation(reference)
        dataset = work / "dataset"
        for sub in ("imagesTr", "labelsTr"):
            (dataset / sub).mkdir(parents=True)
        perturbations = {}
        prefix = name.lower()
        for i in range(num_cases):
            p = IDENTITY if i == 0 else draw_perturbation(np.random.default_rng([seed, i]))
            case = f"{prefix}_{i:03d}"
            perturbations[case] = p
            image, case_labels = derive_case(ct, seg, reference, p)
            sitk.WriteImage(image, str(dataset / "imagesTr" / f"{case}_0000.nii.gz"))
            sitk.WriteImage(case_labels, str(dataset / "labelsTr" / f"{case}.nii.gz"))
        (dataset / "dataset.json").write_text(json.dumps({
            "channel_names": {"0": "CT"},
            "labels": {"background": 0, **{structures[i][0]: j + 1 for j, i in enumerate(kept)}},
            "numTraining": num_cases, "file_ending": ".nii.gz", "name": name,
            "description": f"One real chest-abdomen CT crop from the TotalSegmentator 2.18.0 sdist with "
                           f"TotalSegmentator's segmentations of {', '.join(s for s, _ in structures)}; a "
                           f"pretraining source for nnunet-sacl (docs/pretraining.md). Not a scan of the demo "
                           f"dataset.",
            "reference": f"{SDIST_NAME} from PyPI, sha256 {SDIST_SHA256}",
            "licence": "Apache-2.0 (TotalSegmentator)",
            "sources": [ct_member] + [member for _, member in structures],
            "left_out_below_voxels": {structures[i][0]: int(c) for i, c in enumerate(counts) if i not in kept},
            "spacing_mm": SPACING_MM, "seed": seed, "perturbations": perturbations,
        }, indent=2))
    return out
