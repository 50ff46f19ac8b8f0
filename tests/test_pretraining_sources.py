"""The two pretraining sources of the TotalSegmentator sdist (demo-data --pretraining-source): real structures at the
demo's spacing, never a scan of the demo dataset, accepted by nnU-Net, and a merge of them has partial labels."""
import json
import tarfile

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_sacl.dataset_conversion import demo_data
from nnunet_sacl.dataset_conversion.merge import merge_datasets
from nnunet_sacl.dataset_conversion.pretraining_sources import SOURCES, build_pretraining_source
from tests.helpers import cli_parsers


@pytest.fixture(scope="module")
def sources(sdist, tmp_path_factory):
    raw = tmp_path_factory.mktemp("raw")
    return raw, {kind: build_pretraining_source(kind, 993 + i, raw_folder=raw, sdist=sdist, num_cases=2)
                 for i, kind in enumerate(("aorta", "heart"))}


def meta(dataset):
    return json.loads((dataset / "dataset.json").read_text())


def test_never_a_scan_of_the_demo_dataset(sources):
    demo = {demo_data.TRAIN_CT, demo_data.TRAIN_SEG, demo_data.TEST_DICOM_DIR, demo_data.TEST_SEG,
            f"{demo_data.REFERENCE}/example_ct_sm.nii.gz"}
    for dataset in sources[1].values():
        used = set(meta(dataset)["sources"])
        assert used and not used & demo
        assert all("aorta_report" in m or "pulmonary_report" in m for m in used)


def test_structures_keep_their_volume_at_5_mm(sources, sdist, tmp_path):
    """Independent reference: a structure's volume in the sdist's 1.5 mm mask against its volume in the unperturbed
    case at 5 mm (nearest-neighbour resampling keeps large structures' volume within a few percent)."""
    _, datasets = sources
    for kind, structure in (("aorta", "aorta"), ("heart", "heart"), ("aorta", "vertebrae_T12")):
        member = dict(SOURCES[kind][2])[structure]
        with tarfile.open(sdist) as tar:
            mask = demo_data.read_nifti(tar, member, tmp_path)
        reference_ml = (sitk.GetArrayFromImage(mask) > 0).sum() * np.prod(mask.GetSpacing()) / 1000
        dataset = datasets[kind]
        label = meta(dataset)["labels"][structure]
        case0 = sitk.ReadImage(str(next((dataset / "labelsTr").glob("*_000.nii.gz"))))
        ml = (sitk.GetArrayFromImage(case0) == label).sum() * np.prod(case0.GetSpacing()) / 1000
        assert case0.GetSpacing() == (demo_data.SPACING_MM,) * 3
        assert ml == pytest.approx(reference_ml, rel=0.08), (kind, structure, ml, reference_ml)


def test_labels_consecutive_and_what_is_left_out_is_named(sources):
    for kind, dataset in sources[1].items():
        m = meta(dataset)
        names = [s for s, _ in SOURCES[kind][2]]
        kept = [n for n in m["labels"] if n != "background"]
        assert sorted(m["labels"].values()) == list(range(len(kept) + 1))
        assert set(kept) | set(m["left_out_below_voxels"]) == set(names)
        for path in (dataset / "labelsTr").iterdir():
            assert set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(path))))) <= set(m["labels"].values())
    assert meta(sources[1]["aorta"])["left_out_below_voxels"] == {"superior_mesenteric_artery": 6}


@pytest.mark.slow   # nnU-Net's integrity check of whole datasets
def test_nnunet_accepts_them_and_their_merge_has_partial_labels(sources):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
    raw, datasets = sources
    for dataset in datasets.values():
        verify_dataset_integrity(str(dataset), num_processes=1)
    merged = merge_datasets([993, 994], 995, raw_folder=raw, name="TSVessels",
                            keep_unknown=True)
    annotated = json.loads((merged / "sacl_annotated_organs.json").read_text())
    assert meta(merged)["sacl_partial_labels"] is True
    assert {"heart", "aorta", "pulmonary_artery"} <= set(annotated["organs"])


def test_command_line_option():
    from nnunet_sacl.cli import build_parser
    assert "--pretraining-source heart" in cli_parsers()["demo-data"].epilog
    args = build_parser().parse_args(["demo-data", "-d", "993", "--pretraining-source", "heart"])
    assert (args.pretraining_source, args.num_training) == ("heart", None)
    with pytest.raises(ValueError, match="unknown pretraining source"):
        build_pretraining_source("lung", 993, raw_folder="unused")
