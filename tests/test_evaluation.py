"""Dice/NSD against analytic values on constructed shapes, an independent brute-force NSD, folder evaluation through
real NIfTI files, and the comparison's p-value against scipy.stats.wilcoxon."""
import csv
import json
import math

import numpy as np
import pytest
from scipy import stats
from scipy.spatial import cKDTree

from nnunet_sacl.analysis.evaluation import (ALL_ORGANS, compare, comparison_table, dice, evaluate_folder,
                                    normalized_surface_dice, parse_labels)
from nnunet_sacl.cli import main
from tests.helpers import cube, two_organ_seg, write_seg


# ---------------------------------------------------------------- shapes

def ball(shape, centre, radius):
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius ** 2


def shell_count(side, ndim=3):
    """Surface voxels of a cube (square) of ``side`` voxels: all but the (side-2)^ndim interior."""
    return side ** ndim - (side - 2) ** ndim


def brute_force_nsd(a, b, spacing, tolerance):
    """Independent NSD: surfaces by explicit face-neighbour checks, distances by a k-d tree over voxel centres in mm."""
    def surface(mask):
        padded = np.pad(mask, 1)
        inner = tuple(slice(1, -1) for _ in range(mask.ndim))
        outside_neighbour = np.zeros_like(mask)
        for axis in range(mask.ndim):
            for step in (-1, 1):
                outside_neighbour |= ~np.roll(padded, step, axis=axis)[inner]
        return np.argwhere(mask & outside_neighbour) * np.asarray(spacing)

    sa, sb = surface(a), surface(b)
    da, _ = cKDTree(sb).query(sa)
    db, _ = cKDTree(sa).query(sb)
    return ((da <= tolerance).sum() + (db <= tolerance).sum()) / (len(da) + len(db))


# ---------------------------------------------------------------- Dice

@pytest.mark.parametrize("k", [0, 1, 3, 5])
def test_dice_of_cube_offset_by_k_voxels_is_one_minus_k_over_side(k):
    side = 10
    a = cube((24, 24, 24), (4, 4, 4), side)
    b = cube((24, 24, 24), (4 + k, 4, 4), side)
    assert dice(a, b) == pytest.approx(1 - k / side, abs=1e-12)


def test_dice_of_nested_cubes():
    n = 6
    inner, outer = cube((12, 12, 12), (3, 3, 3), n), cube((12, 12, 12), (2, 2, 2), n + 2)
    assert dice(inner, outer) == pytest.approx(2 * n ** 3 / (n ** 3 + (n + 2) ** 3))


def test_empty_masks_both_metrics():
    empty, full = np.zeros((8, 8, 8), bool), cube((8, 8, 8), (2, 2, 2), 3)
    assert math.isnan(dice(empty, empty)) and math.isnan(normalized_surface_dice(empty, empty, (1, 1, 1), 2))
    for pred, ref in ((empty, full), (full, empty)):
        assert dice(pred, ref) == 0.0
        assert normalized_surface_dice(pred, ref, (1, 1, 1), 100.0) == 0.0


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="shape"):
        dice(np.zeros((4, 4, 4), bool), np.zeros((4, 4, 5), bool))
    with pytest.raises(ValueError, match="spacing"):
        normalized_surface_dice(cube((8, 8, 8), (2, 2, 2), 3), cube((8, 8, 8), (2, 2, 2), 3), (1, 1), 1.0)


# ---------------------------------------------------------------- NSD, analytic

def test_sphere_shifted_within_tolerance_has_nsd_one():
    # a shifted copy's surface is the surface shifted by the same vector, so no distance exceeds the shift
    a = ball((32, 32, 32), (16, 16, 16), 9)
    assert normalized_surface_dice(a, a, (1, 1, 1), 0.0) == 1.0
    assert normalized_surface_dice(a, np.roll(a, 2, axis=1), (1, 1, 1), 2.0) == 1.0
    diagonal = np.roll(np.roll(a, 1, axis=0), 1, axis=2)  # shift length sqrt(2) mm
    assert normalized_surface_dice(a, diagonal, (1, 1, 1), 1.5) == 1.0
    assert normalized_surface_dice(a, np.roll(a, 3, axis=0), (0.7, 1, 1), 2.1) == 1.0  # 3 * 0.7 mm == 2.1 mm


@pytest.mark.parametrize("shift, tolerance", [(3, 1.0), (3, 2.0), (5, 2.5)])
def test_sphere_shifted_beyond_tolerance_matches_brute_force(shift, tolerance):
    a = ball((32, 32, 32), (16, 16, 16), 9)
    b = np.roll(a, shift, axis=2)
    nsd = normalized_surface_dice(a, b, (1, 1, 1), tolerance)
    assert nsd < 1.0
    assert nsd == pytest.approx(brute_force_nsd(a, b, (1, 1, 1), tolerance), abs=1e-12)


def test_anisotropic_spacing_same_voxel_shift_inside_along_one_axis_outside_along_another():
    spacing, side, k, tolerance = (0.5, 3.0, 1.0), 8, 2, 2.0
    a = cube((16, 16, 16), (4, 4, 4), side)
    along_fine_axis = cube((16, 16, 16), (4 + k, 4, 4), side)     # 2 voxels * 0.5 mm = 1 mm <= 2 mm
    along_coarse_axis = cube((16, 16, 16), (4, 4 + k, 4), side)   # 2 voxels * 3 mm = 6 mm > 2 mm
    assert normalized_surface_dice(a, along_fine_axis, spacing, tolerance) == 1.0
    # a step along the coarse axis is 3 mm > tolerance, so of each cube's surface only these count: the side faces'
    # rings (4*side - 4 voxels) in the side - k slices both cubes cover (shared surface, 0 mm), and the interior of
    # the end face inside the other cube ((side-2)^2 voxels), at most 3 fine steps = 1.5 mm from the other's sides;
    # the other end face and the ring next to it are >= 3 mm away
    expected = ((side - k) * (4 * side - 4) + (side - 2) ** 2) / shell_count(side)
    assert normalized_surface_dice(a, along_coarse_axis, spacing, tolerance) == pytest.approx(expected)
    assert expected == pytest.approx(204 / 296)
    assert expected == pytest.approx(brute_force_nsd(a, along_coarse_axis, spacing, tolerance))


def test_nested_cubes_one_voxel_apart():
    # inner shell: every voxel 1 mm from the outer shell; outer shell: face voxels over the inner cube at 1 mm,
    # edge voxels at sqrt(2) mm, the 8 corners at sqrt(3) mm
    n = 6
    inner, outer = cube((12, 12, 12), (3, 3, 3), n), cube((12, 12, 12), (2, 2, 2), n + 2)
    faces, edges, corners, inner_shell = 6 * n ** 2, 12 * n, 8, shell_count(n)
    total = inner_shell + faces + edges + corners
    for tolerance, inside in [(0.9, 0), (1.2, inner_shell + faces), (1.5, inner_shell + faces + edges),
                              (1.8, total)]:
        assert normalized_surface_dice(inner, outer, (1, 1, 1), tolerance) == pytest.approx(inside / total)


def test_nested_squares_2d():
    n = 7
    inner, outer = cube((12, 12), (3, 3), n), cube((12, 12), (2, 2), n + 2)
    inner_ring, sides, corners = 4 * n - 4, 4 * n, 4
    total = inner_ring + sides + corners
    assert dice(inner, outer) == pytest.approx(2 * n ** 2 / (n ** 2 + (n + 2) ** 2))
    assert normalized_surface_dice(inner, outer, (1, 1), 1.2) == pytest.approx((inner_ring + sides) / total)
    assert normalized_surface_dice(inner, outer, (1, 1), 1.5) == 1.0
    # 2 mm pixels along the first axis: the first axis' sides move to 2 mm, corners to sqrt(5) mm
    assert normalized_surface_dice(inner, outer, (2, 1), 1.2) == pytest.approx((2 * n + n + n) / total)


def test_large_sphere_against_sphere_of_radius_r_plus_d():
    # surface voxels of a digital ball of radius R lie at |x| in (R - 1, R], so every surface distance between the
    # balls of radius R and R + d is above d - 1 and below d + 1.5 (a surface voxel within sqrt(3)/2 of any radial
    # line): tolerance d - 1.5 < d finds nothing, d + 2 > d everything
    r, d = 14, 4
    small, large = ball((44, 44, 44), (22, 22, 22), r), ball((44, 44, 44), (22, 22, 22), r + d)
    assert normalized_surface_dice(small, large, (1, 1, 1), d - 1.5) == 0.0
    assert normalized_surface_dice(small, large, (1, 1, 1), d + 2.0) == 1.0
    halfway = normalized_surface_dice(small, large, (1, 1, 1), float(d))
    assert 0.0 < halfway < 1.0
    assert halfway == pytest.approx(brute_force_nsd(small, large, (1, 1, 1), float(d)), abs=1e-12)


# ---------------------------------------------------------------- folders

def test_evaluate_folder_uses_reference_spacing_in_array_order(tmp_path):
    # array axes z,y,x with spacing 0.5, 1, 3 mm: liver shifted 2 voxels along z (1 mm), spleen 2 voxels along x
    # (6 mm); with SimpleITK's x,y,z spacing taken in array order, the liver's shift would be 6 mm
    spacing, shape = (0.5, 1.0, 3.0), (16, 16, 32)
    (tmp_path / "ref").mkdir(), (tmp_path / "pred").mkdir()
    write_seg(two_organ_seg(shape, (4, 4, 2), (4, 4, 18)), tmp_path / "ref" / "case_000.nii.gz", spacing)
    write_seg(two_organ_seg(shape, (6, 4, 2), (4, 4, 20)), tmp_path / "pred" / "case_000.nii.gz", spacing)
    out = tmp_path / "eval.csv"
    rows = evaluate_folder(tmp_path / "pred", tmp_path / "ref", {"liver": 1, "spleen": 2}, 2.0, out_csv=out)
    by_organ = {r["organ"]: r for r in rows}
    assert by_organ["liver"]["nsd"] == 1.0 and by_organ["liver"]["dice"] == pytest.approx(1 - 2 / 8)
    assert by_organ["spleen"]["nsd"] == pytest.approx(204 / shell_count(8))  # as in the anisotropic cube test
    with open(out) as f:
        written = list(csv.DictReader(f))
    assert [list(r) for r in written][0] == ["case", "organ", "label", "dice", "nsd", "reference_voxels"]
    assert [int(r["reference_voxels"]) for r in written] == [8 ** 3, 8 ** 3]     # two cubes of side 8
    assert [(r["case"], r["organ"], r["label"]) for r in written] == [("case_000", "liver", "1"),
                                                                      ("case_000", "spleen", "2")]
    assert float(written[1]["nsd"]) == pytest.approx(by_organ["spleen"]["nsd"])


def test_region_label_is_the_union(tmp_path):
    (tmp_path / "ref").mkdir(), (tmp_path / "pred").mkdir()
    seg = two_organ_seg((24, 24, 24), (2, 2, 2), (12, 12, 12), side=6)
    write_seg(seg, tmp_path / "ref" / "c.nii.gz")
    write_seg(np.where(seg > 0, 1, 0), tmp_path / "pred" / "c.nii.gz")
    rows = evaluate_folder(tmp_path / "pred", tmp_path / "ref", parse_labels("both=1+2,second=2"))
    assert rows[0]["label"] == "1+2" and rows[0]["dice"] == 1.0 and rows[0]["nsd"] == 1.0
    assert rows[1]["dice"] == 0.0


def test_missing_prediction_is_refused_naming_the_case(tmp_path):
    (tmp_path / "ref").mkdir(), (tmp_path / "pred").mkdir()
    seg = two_organ_seg((16, 16, 16), (1, 1, 1), (8, 8, 8), side=5)
    for case in ("case_000", "case_001"):
        write_seg(seg, tmp_path / "ref" / f"{case}.nii.gz")
    write_seg(seg, tmp_path / "pred" / "case_000.nii.gz")
    with pytest.raises(FileNotFoundError, match="case_001"):
        evaluate_folder(tmp_path / "pred", tmp_path / "ref", {"liver": 1})


@pytest.mark.parametrize("pred_shape, pred_spacing, what", [((16, 16, 17), (1.0, 1.0, 1.0), "size"),
                                                            ((16, 16, 16), (2.0, 1.0, 1.0), "spacing")])
def test_geometry_mismatch_is_refused_naming_the_case(tmp_path, pred_shape, pred_spacing, what):
    (tmp_path / "ref").mkdir(), (tmp_path / "pred").mkdir()
    write_seg(cube((16, 16, 16), (2, 2, 2), 5), tmp_path / "ref" / "case_007.nii.gz")
    write_seg(cube(pred_shape, (2, 2, 2), 5), tmp_path / "pred" / "case_007.nii.gz", pred_spacing)
    with pytest.raises(ValueError, match=f"case_007.*{what}"):
        evaluate_folder(tmp_path / "pred", tmp_path / "ref", {"liver": 1})


def test_labels_from_dataset_json_skip_background_and_ignore(tmp_path):
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"labels": {"background": 0, "liver": 1, "kidneys": [2, 3], "ignore": 4}}))
    assert parse_labels(str(path)) == {"liver": 1, "kidneys": [2, 3]}
    assert parse_labels("liver=1, spleen=2") == {"liver": 1, "spleen": 2}
    with pytest.raises(ValueError, match="bad item"):
        parse_labels("liver")


# ---------------------------------------------------------------- comparison

# per case, the cube offset (voxels, side 12) of method A and B: Dice = 1 - k/12; the differences kb - ka have
# distinct sizes (no ties), so the exact Wilcoxon distribution applies
OFFSETS_A = [0, 1, 0, 2, 1, 0, 0, 3]
OFFSETS_B = [2, 4, 4, 7, 7, 7, 8, 2]
SIDE = 12


def write_comparison_folders(root):
    for folder in ("ref", "a", "b"):
        (root / folder).mkdir()
    shape = (28, 28, 28)
    for i, (ka, kb) in enumerate(zip(OFFSETS_A, OFFSETS_B)):
        def seg(k):  # organ 1 moves by k; organ 2 (a small cube) is always right
            s = cube(shape, (2 + k, 2, 2), SIDE).astype(np.uint8)
            s[cube(shape, (20, 20, 20), 5)] = 2
            return s
        write_seg(seg(0), root / "ref" / f"case_{i:03d}.nii.gz")
        write_seg(seg(ka), root / "a" / f"case_{i:03d}.nii.gz")
        write_seg(seg(kb), root / "b" / f"case_{i:03d}.nii.gz")


def test_compare_p_value_equals_scipy_wilcoxon_and_writes_outputs(tmp_path):
    write_comparison_folders(tmp_path)
    out = tmp_path / "out"
    table = compare(tmp_path / "a", tmp_path / "b", tmp_path / "ref", {"liver": 1, "spleen": 2},
                    names=("SACL", "nnU-Net"), out_dir=out, tolerance_mm=2.0)
    rows = {(r["organ"], r["metric"]): r for r in table}
    dice_a = 1 - np.array(OFFSETS_A) / SIDE
    dice_b = 1 - np.array(OFFSETS_B) / SIDE
    liver = rows[("liver", "dice")]
    assert liver["n"] == 8
    assert liver["p_value"] == pytest.approx(stats.wilcoxon(dice_a, dice_b).pvalue, rel=1e-12)
    assert liver["p_value"] == pytest.approx(2 * 2 / 2 ** 8)  # one negative rank sum of 1: 2 of 256 sign patterns
    assert liver["mean_a"] == pytest.approx(dice_a.mean()) and liver["sd_a"] == pytest.approx(dice_a.std(ddof=1))
    assert liver["mean_b"] == pytest.approx(dice_b.mean()) and liver["sd_b"] == pytest.approx(dice_b.std(ddof=1))
    assert rows[("spleen", "dice")]["p_value"] == 1.0 and rows[("spleen", "dice")]["mean_a"] == 1.0
    # per-case mean over the two organs: (dice_liver + 1) / 2, same ranks, same p
    both = rows[(ALL_ORGANS, "dice")]
    assert both["mean_a"] == pytest.approx(((dice_a + 1) / 2).mean())
    assert both["p_value"] == pytest.approx(stats.wilcoxon((dice_a + 1) / 2, (dice_b + 1) / 2).pvalue)
    nsd = rows[("liver", "nsd")]
    assert 0 < nsd["mean_b"] < nsd["mean_a"] < 1

    with open(out / "comparison.csv") as f:
        written = list(csv.DictReader(f))
    assert len(written) == len(table) == 6
    assert float(written[0]["p_value"]) == pytest.approx(liver["p_value"])
    markdown = (out / "comparison.md").read_text()
    assert "| organ | metric | n | SACL | nnU-Net |" in markdown and ALL_ORGANS in markdown
    assert f"{dice_a.mean():.4f} ± {dice_a.std(ddof=1):.4f}" in markdown
    png = (out / "comparison_boxplot.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    assert (out / "per_case_SACL.csv").is_file() and (out / "per_case_nnU-Net.csv").is_file()


def test_only_organs_in_the_reference_count_the_same_for_both_methods():
    # the spleen is absent from the references of c2 and c4: in c2 both methods label a few voxels as spleen (Dice 0,
    # false positives), in c4 method b does (0) and a does not (NaN); neither case counts for the spleen nor in the
    # case mean. b misses the spleen of c3 (0, in the reference): that counts.
    nan = math.nan
    values_a = {"c1": (0.9, 0.8), "c2": (0.7, 0.0), "c3": (0.8, 0.6), "c4": (0.6, nan)}
    values_b = {"c1": (0.8, 0.7), "c2": (0.6, 0.0), "c3": (0.5, 0.0), "c4": (0.4, 0.0)}
    spleen_voxels = {"c1": 50, "c2": 0, "c3": 50, "c4": 0}

    def rows(values):
        return [{"case": c, "organ": o, "dice": v[i], "nsd": v[i],
                 "reference_voxels": 100 if o == "liver" else spleen_voxels[c]}
                for c, v in values.items() for i, o in enumerate(("liver", "spleen"))]

    table = {(r["organ"], r["metric"]): r for r in comparison_table(rows(values_a), rows(values_b),
                                                                     ["liver", "spleen"], ("A", "B"))}
    assert table[("spleen", "dice")]["n"] == 2
    assert table[("spleen", "dice")]["mean_b"] == pytest.approx(0.35)
    per_case_a, per_case_b = [0.85, 0.7, 0.7, 0.6], [0.75, 0.6, 0.25, 0.4]  # c2, c4: liver only, on both sides
    assert table[(ALL_ORGANS, "dice")]["mean_a"] == pytest.approx(np.mean(per_case_a))
    assert table[(ALL_ORGANS, "dice")]["mean_b"] == pytest.approx(np.mean(per_case_b))
    assert table[(ALL_ORGANS, "dice")]["mean_diff"] == pytest.approx(np.mean(per_case_a) - np.mean(per_case_b))
    assert math.isnan(table[(ALL_ORGANS, "dice")]["p_value"])     # 4 pairs: too few for a test


def test_compare_refuses_a_folder_missing_a_case(tmp_path):
    write_comparison_folders(tmp_path)
    (tmp_path / "b" / "case_005.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="case_005"):
        compare(tmp_path / "a", tmp_path / "b", tmp_path / "ref", {"liver": 1}, out_dir=tmp_path / "out")


# ---------------------------------------------------------------- command line

def test_cli_evaluate_and_compare(tmp_path, capsys):
    write_comparison_folders(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 1, "spleen": 2}}))
    assert main(["evaluate", "-p", str(tmp_path / "a"), "-r", str(tmp_path / "ref"),
                 "-d", str(tmp_path / "dataset.json"), "--tolerance", "2", "-o", str(tmp_path / "a.csv")]) == 0
    assert len(list(csv.DictReader(open(tmp_path / "a.csv")))) == 16
    assert main(["compare", "-a", str(tmp_path / "a"), "-b", str(tmp_path / "b"),
                 "-r", str(tmp_path / "ref"), "-d", "liver=1", "-o", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    assert "| liver | Dice | 8 |" in out and ALL_ORGANS not in out  # one organ: no mean-over-organs row
    (tmp_path / "a" / "case_003.nii.gz").unlink()
    assert main(["evaluate", "-p", str(tmp_path / "a"), "-r", str(tmp_path / "ref"), "-d", "liver=1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("nnunet-sacl evaluate: error: ") and "case_003" in err and err.count("\n") == 1

