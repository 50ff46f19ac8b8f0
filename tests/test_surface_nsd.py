"""The surface-element NSD (``nsd_method="surface"``, DeepMind's method as the FLARE and MSD challenges score): the
values published with DeepMind's surface-distance tests, an independent 2D implementation written from the method's
description, MONAI on the uncropped arrays (random shapes, anisotropic spacing, shapes cut by the image border), empty
masks, and the option through ``evaluate``/``compare``."""
import csv
import json
import math

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree

from nnunet_sacl.analysis.evaluation import compare, evaluate_folder, normalized_surface_dice
from nnunet_sacl.cli import main
from tests.helpers import two_organ_seg, write_seg


def surface_nsd(a, b, spacing, tolerance):
    return normalized_surface_dice(a, b, spacing, tolerance, method="surface")


# ---------------------------------------------------------------- DeepMind's published values

def test_deepmind_2d_two_pixels_2mm_apart():
    a, b = np.zeros((128, 128), bool), np.zeros((128, 128), bool)
    a[50, 70], b[50, 72] = True, True
    assert surface_nsd(a, b, (2, 1), 1.0) == pytest.approx(0.5, abs=1e-6)


def test_deepmind_2d_two_squares_shifted_by_one_pixel():
    # DeepMind lists every surface element: the reference has 4 diagonals, 2 horizontal, 2 vertical ones, all within
    # 1 mm; the prediction one more vertical pair, and one diagonal-horizontal-diagonal run 2 mm away
    a = np.zeros((6, 6), bool)
    b = np.zeros((6, 6), bool)
    a[1:3, 1:3] = True
    b[1:4, 1:3] = True
    vertical, horizontal = 2.0, 1.0
    diag = 0.5 * math.hypot(vertical, horizontal)
    area_a = 4 * diag + 2 * horizontal + 2 * vertical
    area_b = 4 * diag + 2 * horizontal + 4 * vertical
    expected = (area_a + area_b - (2 * diag + horizontal)) / (area_a + area_b)
    assert surface_nsd(a, b, (vertical, horizontal), 1.0) == pytest.approx(expected, abs=1e-6)


def test_deepmind_3d_two_voxels_2mm_apart():
    a, b = np.zeros((128, 128, 128), bool), np.zeros((128, 128, 128), bool)
    a[50, 60, 70], b[50, 60, 72] = True, True
    assert surface_nsd(a, b, (3, 2, 1), 1.0) == pytest.approx(0.5, abs=1e-6)


def test_deepmind_3d_two_slabs_shifted_by_one_voxel_anisotropic():
    # the slabs fill the image up to its border on five sides: the outside of the image counts as outside
    a, b = np.zeros((100, 100, 100), bool), np.zeros((100, 100, 100), bool)
    a[0:50], b[0:51] = True, True
    assert surface_nsd(a, b, (2, 1, 1), 1.0) == pytest.approx(0.836, abs=5e-4)  # published to 3 places


# ---------------------------------------------------------------- an independent 2D implementation

def reference_surface_nsd_2d(a, b, spacing, tolerance):
    """DeepMind's method in 2D written from its description: every 2x2 window of pixels (image padded with
    background) whose pixels are neither all inside nor all outside holds a piece of contour at the window's centre
    (a pixel corner), of length: one or three pixels inside -> the diagonal cut 0.5 * |spacing|; two side by side ->
    one pixel side (the spacing of the axis along which they lie); two on a diagonal -> two diagonal cuts. NSD is the
    contour length within tolerance of the other contour over the total length."""
    diag = 0.5 * math.hypot(*spacing)

    def pieces(mask):
        p = np.pad(mask, 1)
        corners = np.stack([p[:-1, :-1], p[:-1, 1:], p[1:, :-1], p[1:, 1:]])   # top-left, top-right, bottom-...
        inside = corners.sum(0)
        length = np.zeros(inside.shape)
        length[(inside == 1) | (inside == 3)] = diag
        two = inside == 2
        same_row = two & (corners[0] == corners[1])                    # top pair in (or out): a cut along axis 1
        same_column = two & (corners[0] == corners[2])                 # left pair in: a cut along axis 0
        length[same_row] = spacing[1]
        length[same_column] = spacing[0]
        length[two & ~same_row & ~same_column] = 2 * diag              # diagonal pair
        where = (inside > 0) & (inside < 4)
        return np.argwhere(where) * np.asarray(spacing, float), length[where]

    (pa, la), (pb, lb) = pieces(a), pieces(b)
    da, _ = cKDTree(pb).query(pa)
    db, _ = cKDTree(pa).query(pb)
    return (la[da <= tolerance].sum() + lb[db <= tolerance].sum()) / (la.sum() + lb.sum())


def blob(shape, seed, smooth=2.0, level=0.55):
    """A random smooth shape (thresholded blurred noise), touching the image border sometimes."""
    noise = np.random.default_rng(seed).random(shape)
    return ndimage.gaussian_filter(noise, smooth) > np.quantile(ndimage.gaussian_filter(noise, smooth), level)


@pytest.mark.parametrize("seed, spacing, tolerance", [(0, (1.0, 1.0), 1.0), (1, (3.0, 0.8), 1.0),
                                                      (2, (0.7, 2.5), 2.0), (3, (1.5, 1.0), 0.5)])
def test_2d_equals_an_independent_implementation(seed, spacing, tolerance):
    a, b = blob((40, 50), seed), blob((40, 50), seed + 100)
    expected = reference_surface_nsd_2d(a, b, spacing, tolerance)
    assert 0.05 < expected < 0.95
    assert surface_nsd(a, b, spacing, tolerance) == pytest.approx(expected, abs=1e-6)


# ---------------------------------------------------------------- MONAI on the whole arrays

def monai_surface_dice(a, b, spacing, tolerance):
    import torch
    from monai.metrics import compute_surface_dice
    a_t, b_t = (torch.from_numpy(m)[None, None] for m in (a, b))
    return float(compute_surface_dice(a_t, b_t, [tolerance], include_background=True, spacing=list(spacing),
                                      use_subvoxels=True).reshape(-1)[0])


@pytest.mark.parametrize("seed, spacing, tolerance", [(0, (3.0, 0.8, 0.8), 1.0), (1, (1.0, 1.0, 1.0), 2.0),
                                                      (2, (0.5, 2.0, 1.25), 1.5)])
def test_3d_equals_monai_on_the_uncropped_arrays(seed, spacing, tolerance):
    shape = (24, 30, 28)
    a = np.zeros(shape, bool)
    b = np.zeros(shape, bool)
    a[3:20, 4:26, 2:27] = blob((17, 22, 25), seed, smooth=1.5)
    b[:, 6:, 2:] = blob((24, 24, 26), seed + 50, smooth=1.5)            # touches the image border
    ours = surface_nsd(a, b, spacing, tolerance)
    assert 0.05 < ours < 0.95
    assert ours == pytest.approx(monai_surface_dice(a, b, spacing, tolerance), abs=1e-6)


def test_spacing_is_in_array_axis_order():
    a, b = blob((16, 20, 24), 7, smooth=1.5), blob((16, 20, 24), 8, smooth=1.5)
    spacing = (3.0, 1.0, 0.5)
    value = surface_nsd(a, b, spacing, 1.0)
    assert surface_nsd(a.transpose(2, 1, 0), b.transpose(2, 1, 0), spacing[::-1], 1.0) == pytest.approx(value, abs=1e-6)
    box = np.zeros((20, 20, 20), bool)
    box[4:12, 4:12, 4:12] = True
    shifted = np.roll(box, 2, axis=0)                                    # 2 voxels along the first axis
    assert surface_nsd(box, shifted, (0.5, 1.0, 3.0), 1.0) == pytest.approx(1.0, abs=1e-6)    # 1 mm: all inside
    assert surface_nsd(box, shifted, (3.0, 1.0, 0.5), 1.0) < 0.9                               # 6 mm


def test_one_slice_shift_scores_higher_than_the_voxel_method():
    # a box shifted by one 3 mm slice at 1 mm: the voxel method counts whole slice faces as missed; surface
    # elements on the side faces stay within 1 mm (they are on the shared side walls)
    a = np.zeros((20, 30, 30), bool)
    b = np.zeros((20, 30, 30), bool)
    a[4:14, 5:25, 5:25] = True
    b[5:15, 5:25, 5:25] = True
    voxel = normalized_surface_dice(a, b, (3.0, 1.0, 1.0), 1.0, method="voxel")
    surface = surface_nsd(a, b, (3.0, 1.0, 1.0), 1.0)
    assert surface > voxel + 0.05


def test_empty_masks():
    empty, full = np.zeros((8, 8, 8), bool), np.zeros((8, 8, 8), bool)
    full[2:5, 2:5, 2:5] = True
    assert math.isnan(surface_nsd(empty, empty, (1, 1, 3), 1.0))
    assert surface_nsd(full, empty, (1, 1, 3), 1.0) == 0.0
    assert surface_nsd(empty, full, (1, 1, 3), 1.0) == 0.0


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="NSD method 'edge' is not one of voxel, surface"):
        normalized_surface_dice(np.ones((3, 3), bool), np.ones((3, 3), bool), (1, 1), 1.0, method="edge")


# ---------------------------------------------------------------- evaluate / compare

def write_pair(tmp_path):
    spacing, shape = (3.0, 1.0, 1.0), (16, 24, 24)
    for folder in ("ref", "a", "b"):
        (tmp_path / folder).mkdir()
    for i in range(3):
        write_seg(two_organ_seg(shape, (4, 4, 2), (4, 4, 13)), tmp_path / "ref" / f"case_{i}.nii.gz", spacing)
        write_seg(two_organ_seg(shape, (4 + i % 2, 4, 2), (4, 4, 13 + i)), tmp_path / "a" / f"case_{i}.nii.gz",
                  spacing)
        write_seg(two_organ_seg(shape, (5, 4, 2), (4, 4, 14)), tmp_path / "b" / f"case_{i}.nii.gz", spacing)
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 1, "spleen": 2}}))
    return spacing


def test_evaluate_and_compare_forward_the_method(tmp_path, capsys):
    import SimpleITK as sitk
    spacing = write_pair(tmp_path)
    assert main(["evaluate", "-p", str(tmp_path / "a"), "-r", str(tmp_path / "ref"),
                 "-d", str(tmp_path / "dataset.json"), "--tolerance", "1", "--nsd-method", "surface",
                 "-o", str(tmp_path / "a.csv")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "a.csv")))
    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "ref" / "case_1.nii.gz")))
    pred = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "a" / "case_1.nii.gz")))
    expected = surface_nsd(pred == 1, ref == 1, spacing, 1.0)
    assert expected != normalized_surface_dice(pred == 1, ref == 1, spacing, 1.0)
    row = next(r for r in rows if r["case"] == "case_1" and r["organ"] == "liver")
    assert float(row["nsd"]) == pytest.approx(expected, abs=1e-12)

    voxel_rows = evaluate_folder(tmp_path / "a", tmp_path / "ref", {"liver": 1}, 1.0)
    surface_rows = evaluate_folder(tmp_path / "a", tmp_path / "ref", {"liver": 1}, 1.0, nsd_method="surface")
    assert [r["nsd"] for r in voxel_rows] != [r["nsd"] for r in surface_rows]

    table = compare(tmp_path / "a", tmp_path / "b", tmp_path / "ref", {"liver": 1}, out_dir=tmp_path / "cmp",
                    tolerance_mm=1.0, nsd_method="surface")
    nsd_row = next(r for r in table if r["metric"] == "nsd")
    assert nsd_row["mean_a"] == pytest.approx(np.mean([r["nsd"] for r in surface_rows]), abs=1e-12)
    assert "| liver | NSD@1mm surface | 3 |" in (tmp_path / "cmp" / "comparison.md").read_text()
    assert main(["compare", "-a", str(tmp_path / "a"), "-b", str(tmp_path / "b"), "-r",
                 str(tmp_path / "ref"), "-d", "liver=1", "--tolerance", "1", "--nsd-method",
                 "surface", "-o", str(tmp_path / "cmp2")]) == 0
    assert "NSD@1mm surface" in capsys.readouterr().out
