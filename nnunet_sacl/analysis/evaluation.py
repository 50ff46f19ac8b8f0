"""Per-organ Dice and normalized surface Dice (NSD) of prediction folders, and a paired comparison of two methods
(Wilcoxon signed-rank test per organ), as segmentation papers such as SACL report them. The metrics path of
analysis/: the study evaluates its runs with ``evaluate_cases`` too; the comparison's statistics are
``analysis.stats``'s and its files are written by ``analysis.report``, as the study's are.

Conventions (the same as nnU-Net's evaluation and Metrics Reloaded):
- both masks empty: Dice and NSD are NaN (undefined, nothing to find);
- exactly one mask empty: Dice and NSD are 0;
- means and tests count an organ of a case only where the reference holds it (``reference_voxels`` > 0, see
  ``analysis.stats``): an organ absent from the reference is left out, whether it was predicted (0) or not (NaN);
- spacing is in the array's axis order (for an array from ``sitk.GetArrayFromImage`` that is the reverse of
  ``image.GetSpacing()``).
NSD comes in two methods (``nsd_method``): "voxel" (one point per boundary voxel, Metrics Reloaded) and "surface"
(DeepMind's surface elements on the voxel corners, area-weighted, as the FLARE and MSD challenges score, computed
by MONAI). numpy/scipy/SimpleITK/matplotlib; MONAI (and torch) only for the surface method. See docs/evaluation.md.
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_sacl.analysis.report import box_plot, fmt, fmt_test, write_csv
from nnunet_sacl.analysis.stats import by_case, mean_sd, paired_comparison, scored
from nnunet_sacl.dataset_conversion.converters import geometry_mismatch, grid_of
from nnunet_sacl.defaults import DEFAULT_TOLERANCE_MM, NSD_METHODS

SKIPPED_LABEL_NAMES = ("background", "ignore")
METRICS = ("dice", "nsd")
ALL_ORGANS = "all organs (per-case mean)"


# ---------------------------------------------------------------- metrics on two boolean masks

def _check_masks(pred_mask: np.ndarray, ref_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred_mask, ref_mask = np.asarray(pred_mask, dtype=bool), np.asarray(ref_mask, dtype=bool)
    if pred_mask.shape != ref_mask.shape:
        raise ValueError(f"prediction shape {pred_mask.shape} differs from reference shape {ref_mask.shape}")
    return pred_mask, ref_mask


def dice(pred_mask, ref_mask) -> float:
    """Volumetric overlap, Dice = 2|P ∩ R| / (|P| + |R|); NaN when both masks are empty (nnU-Net's convention)."""
    pred_mask, ref_mask = _check_masks(pred_mask, ref_mask)
    total = int(pred_mask.sum()) + int(ref_mask.sum())
    if total == 0:
        return math.nan
    return 2.0 * int(np.logical_and(pred_mask, ref_mask).sum()) / total


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with at least one face neighbour outside it; outside the array counts as outside, so an
    organ cut by the field of view has a surface there too."""
    from scipy import ndimage
    face_neighbours = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=face_neighbours, border_value=0)


def _union_bounding_box(a: np.ndarray, b: np.ndarray) -> tuple[slice, ...]:
    """Crop that holds every voxel of both masks; distances between their surfaces do not change inside it, and the
    distance transform runs on the organ's box instead of the whole CT."""
    from scipy import ndimage
    box = ndimage.find_objects((a | b).astype(np.uint8))[0]
    return tuple(box)


def surface_distances(pred_mask, ref_mask, spacing) -> tuple[np.ndarray, np.ndarray]:
    """Distances in mm from every surface voxel of the prediction to the nearest surface voxel of the reference, and
    from every reference surface voxel to the prediction's surface (Euclidean, voxel centres, ``spacing`` per axis).
    Both masks must be non-empty."""
    pred_mask, ref_mask = _check_masks(pred_mask, ref_mask)
    spacing = _check_spacing(spacing, pred_mask.ndim)
    if not pred_mask.any() or not ref_mask.any():
        raise ValueError("surface distances need two non-empty masks")
    from scipy import ndimage
    box = _union_bounding_box(pred_mask, ref_mask)
    pred_surface, ref_surface = surface_voxels(pred_mask[box]), surface_voxels(ref_mask[box])
    to_ref = ndimage.distance_transform_edt(~ref_surface, sampling=spacing)
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=spacing)
    return to_ref[pred_surface], to_pred[ref_surface]


def _check_spacing(spacing, ndim: int) -> tuple[float, ...]:
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != ndim or not all(s > 0 for s in spacing):
        raise ValueError(f"spacing {spacing} must hold {ndim} positive values (mm per voxel, array axis order)")
    return spacing


def _tolerance_limit(tolerance_mm: float) -> float:
    """A distance equal to the tolerance up to float rounding (3 voxels * 0.7 mm vs 2.1 mm) counts as inside."""
    return tolerance_mm * (1 + 1e-9) + 1e-12


def normalized_surface_dice(pred_mask, ref_mask, spacing, tolerance_mm: float, method: str = "voxel") -> float:
    """Share of both surfaces that lies within ``tolerance_mm`` of the other surface (Nikolov et al. 2021). It
    forgives boundary errors up to tau mm, which Dice does not. NaN when both masks are empty, 0 when exactly one is.

    method "voxel": NSD = (|{p in S_P : d(p, S_R) <= tau}| + |{r in S_R : d(r, S_P) <= tau}|) / (|S_P| + |S_R|),
    with S_X the surface voxels of X. method "surface": DeepMind's surface elements, see
    ``surface_element_nsd``; this is what the FLARE and MSD challenges report."""
    pred_mask, ref_mask = _check_masks(pred_mask, ref_mask)
    if tolerance_mm < 0:
        raise ValueError(f"tolerance_mm must be >= 0, got {tolerance_mm}")
    if method not in NSD_METHODS:
        raise ValueError(f"NSD method {method!r} is not one of {', '.join(NSD_METHODS)}")
    has_pred, has_ref = bool(pred_mask.any()), bool(ref_mask.any())
    if not has_pred and not has_ref:
        _check_spacing(spacing, pred_mask.ndim)
        return math.nan
    if not (has_pred and has_ref):
        _check_spacing(spacing, pred_mask.ndim)
        return 0.0
    if method == "surface":
        return surface_element_nsd(pred_mask, ref_mask, spacing, tolerance_mm)
    pred_to_ref, ref_to_pred = surface_distances(pred_mask, ref_mask, spacing)
    limit = _tolerance_limit(tolerance_mm)
    inside = int((pred_to_ref <= limit).sum()) + int((ref_to_pred <= limit).sum())
    return inside / (pred_to_ref.size + ref_to_pred.size)


def surface_element_nsd(pred_mask, ref_mask, spacing, tolerance_mm: float) -> float:
    """NSD with DeepMind's surface elements (Nikolov et al. 2021, github.com/google-deepmind/surface-distance):
    the surface is made of elements on the voxel corners (marching cubes in 3D, contour segments in 2D), each
    weighted by its area in mm^2 (length in 2D), and NSD is the area within tolerance over the total area. Computed
    by MONAI's ``compute_surface_dice(..., use_subvoxels=True)``, which reproduces DeepMind's reference; the masks
    are cropped to their union's box plus one empty voxel on each side first (the image's outside counts as
    outside, as in DeepMind's code). Both masks must be non-empty; 2D or 3D."""
    import torch
    from monai.metrics import compute_surface_dice

    pred_mask, ref_mask = _check_masks(pred_mask, ref_mask)
    spacing = _check_spacing(spacing, pred_mask.ndim)
    if pred_mask.ndim not in (2, 3):
        raise ValueError(f"the surface NSD needs 2D or 3D masks, got {pred_mask.ndim}D")
    if not pred_mask.any() or not ref_mask.any():
        raise ValueError("the surface NSD needs two non-empty masks")
    box = _union_bounding_box(pred_mask, ref_mask)
    crops = [np.pad(m[box], 1) for m in (pred_mask, ref_mask)]
    pred_t, ref_t = (torch.from_numpy(np.ascontiguousarray(c))[None, None] for c in crops)
    with warnings.catch_warnings():  # MONAI 1.5+ warns about an argument its own code passes internally
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy", category=FutureWarning)
        value = compute_surface_dice(pred_t, ref_t, class_thresholds=[_tolerance_limit(tolerance_mm)],
                                     include_background=True, spacing=list(spacing), use_subvoxels=True)
    return float(value.reshape(-1)[0])


# ---------------------------------------------------------------- labels

def labels_from_dataset_json(path) -> dict:
    """Organ labels of an nnU-Net ``dataset.json`` (``labels``: name -> int, or list of ints for a region), without
    background and ignore."""
    path = Path(path)
    try:
        labels = json.loads(path.read_text())["labels"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: cannot read a 'labels' dict from it ({e})") from e
    return {name: value for name, value in labels.items() if name not in SKIPPED_LABEL_NAMES}


def parse_labels(spec: str) -> dict:
    """``spec`` is a dataset.json path or ``name=1,name=2`` (a region: ``kidneys=2+3``)."""
    if Path(spec).is_file():
        return labels_from_dataset_json(spec)
    labels = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, sep, value = item.partition("=")
        try:
            values = [int(v) for v in value.split("+")]
        except ValueError:
            values = []
        if not sep or not name or not values:
            raise ValueError(f"labels {spec!r}: neither a dataset.json file nor 'name=INT,...' (bad item {item!r})")
        labels[name.strip()] = values[0] if len(values) == 1 else values
    if not labels:
        raise ValueError(f"labels {spec!r}: no organ given")
    return labels


def _label_values(value) -> list[int]:
    return [int(value)] if np.isscalar(value) else [int(v) for v in value]


def _label_text(value) -> str:
    return "+".join(str(v) for v in _label_values(value))


# ---------------------------------------------------------------- folders

def _read(path: Path) -> sitk.Image:
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise ValueError(f"cannot read {path}: {e}") from e


def reference_cases(ref_folder, file_ending: str = ".nii.gz") -> list[str]:
    """Case names (file names without ``file_ending``) of the reference folder, sorted."""
    ref_folder = Path(ref_folder)
    if not ref_folder.is_dir():
        raise FileNotFoundError(f"reference folder {ref_folder} does not exist")
    cases = sorted(p.name[:-len(file_ending)] for p in ref_folder.iterdir() if p.name.endswith(file_ending))
    if not cases:
        raise FileNotFoundError(f"reference folder {ref_folder} holds no *{file_ending} file")
    return cases


def _check_predictions_present(pred_folder: Path, cases: list[str], file_ending: str) -> None:
    missing = [c for c in cases if not (pred_folder / (c + file_ending)).is_file()]
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise FileNotFoundError(f"{pred_folder}: no prediction for case {shown} (expected {missing[0]}{file_ending})")


def evaluate_case(pred_path, ref_path, labels: dict, tolerance_mm: float, nsd_method: str = "voxel") -> list[dict]:
    """Dice, NSD and the reference's voxel count of every organ of one case; spacing from the reference, whose grid
    the prediction must share."""
    pred_path, ref_path = Path(pred_path), Path(ref_path)
    pred_img, ref_img = _read(pred_path), _read(ref_path)
    mismatch = geometry_mismatch(grid_of(pred_img), grid_of(ref_img))  # prediction vs reference
    if mismatch:
        raise ValueError(f"case {ref_path.name}: prediction {pred_path} does not match the reference grid: {mismatch}")
    pred, ref = sitk.GetArrayFromImage(pred_img), sitk.GetArrayFromImage(ref_img)
    spacing = tuple(reversed(ref_img.GetSpacing()))  # SimpleITK is x,y,z; the array is z,y,x
    rows = []
    for organ, value in labels.items():
        values = _label_values(value)
        pred_mask, ref_mask = np.isin(pred, values), np.isin(ref, values)
        rows.append({"organ": organ, "label": _label_text(value), "dice": dice(pred_mask, ref_mask),
                     "nsd": normalized_surface_dice(pred_mask, ref_mask, spacing, tolerance_mm, nsd_method),
                     "reference_voxels": int(ref_mask.sum())})
    return rows


def _check_inputs(pred_folder: Path, labels: dict, nsd_method: str) -> None:
    if not labels:
        raise ValueError("no organ labels given")
    if nsd_method not in NSD_METHODS:
        raise ValueError(f"NSD method {nsd_method!r} is not one of {', '.join(NSD_METHODS)}")
    if not pred_folder.is_dir():
        raise FileNotFoundError(f"prediction folder {pred_folder} does not exist")


def evaluate_cases(pred_folder, ref_folder, cases: list, labels: dict, tolerance_mm: float = DEFAULT_TOLERANCE_MM,
                   file_ending: str = ".nii.gz", nsd_method: str = "voxel") -> list[dict]:
    """One row (case, organ, label, dice, nsd, reference_voxels) per case of ``cases`` and organ: the case's
    prediction and reference are ``CASE + file_ending`` in the two folders, on the same grid. Checks all predictions
    exist before computing anything. ``nsd_method``: "voxel" or "surface" (see ``normalized_surface_dice``)."""
    pred_folder = Path(pred_folder)
    _check_inputs(pred_folder, labels, nsd_method)
    _check_predictions_present(pred_folder, cases, file_ending)
    rows = []
    for case in cases:
        for row in evaluate_case(pred_folder / (case + file_ending), Path(ref_folder) / (case + file_ending),
                                 labels, tolerance_mm, nsd_method):
            rows.append({"case": case, **row})
    return rows


def evaluate_folder(pred_folder, ref_folder, labels: dict, tolerance_mm: float = DEFAULT_TOLERANCE_MM,
                    out_csv=None, file_ending: str = ".nii.gz", nsd_method: str = "voxel") -> list[dict]:
    """``evaluate_cases`` of every reference case (each needs a prediction of the same name on the same grid),
    written to ``out_csv`` when given."""
    _check_inputs(Path(pred_folder), labels, nsd_method)
    rows = evaluate_cases(pred_folder, ref_folder, reference_cases(ref_folder, file_ending), labels, tolerance_mm,
                          file_ending, nsd_method)
    if out_csv is not None:
        write_csv(rows, out_csv)
    return rows


# ---------------------------------------------------------------- the comparison of two methods

def comparison_table(rows_a: list[dict], rows_b: list[dict], organs: list[str],
                     names: tuple[str, str]) -> list[dict]:
    """Per organ and metric, and (with several organs) for the case mean over organs: n pairs, mean and sd of each
    method, mean difference (a - b) and the Wilcoxon p (``stats.paired_comparison``; NaN under ``MIN_PAIRS``
    pairs). Only organs in a case's reference label count (``stats.scored``)."""
    if sorted({r["case"] for r in rows_a}) != sorted({r["case"] for r in rows_b}):
        raise ValueError("the two methods were evaluated on different cases")
    mean_label = ALL_ORGANS if len(organs) > 1 else None
    by_metric = {metric: paired_comparison(by_case(rows_a, metric), by_case(rows_b, metric), organs, mean_label)
                 for metric in METRICS}
    table = []
    for group in range(len(by_metric[METRICS[0]])):
        for metric in METRICS:
            label, s = by_metric[metric][group]
            table.append({"organ": label, "metric": metric, "n": s["n"],
                          "method_a": names[0], "mean_a": s["mean_a"], "sd_a": s["sd_a"],
                          "method_b": names[1], "mean_b": s["mean_b"], "sd_b": s["sd_b"],
                          "mean_diff": s["mean_diff"], "p_value": s["p_wilcoxon"]})
    return table


def nsd_name(tolerance_mm: float, nsd_method: str = "voxel", spaced: bool = False) -> str:
    """How tables and plots name the NSD: 'NSD@2mm' (voxel method), 'NSD@1mm surface' (surface elements)."""
    name = f"NSD @ {tolerance_mm:g} mm" if spaced else f"NSD@{tolerance_mm:g}mm"
    return name + (" surface" if nsd_method == "surface" else "")


def markdown_table(table: list[dict], tolerance_mm: float, nsd_method: str = "voxel") -> str:
    """The comparison as a Markdown table: mean ± sd per method, p of the paired Wilcoxon signed-rank test (or
    "n = K: no test" under ``MIN_PAIRS`` pairs)."""
    a, b = table[0]["method_a"], table[0]["method_b"]
    lines = [f"| organ | metric | n | {a} | {b} | {a} - {b} | p (Wilcoxon) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in table:
        metric = "Dice" if r["metric"] == "dice" else nsd_name(tolerance_mm, nsd_method)
        lines.append(f"| {r['organ']} | {metric} | {r['n']} | {fmt(r['mean_a'])} ± {fmt(r['sd_a'])} | "
                     f"{fmt(r['mean_b'])} ± {fmt(r['sd_b'])} | {fmt(r['mean_diff'])} | "
                     f"{fmt_test(r['p_value'], r['n'])} |")
    return "\n".join(lines) + "\n"


def compare(folder_a, folder_b, ref_folder, labels: dict, names=("SACL", "nnU-Net"), out_dir="comparison",
            tolerance_mm: float = DEFAULT_TOLERANCE_MM, file_ending: str = ".nii.gz",
            nsd_method: str = "voxel") -> list[dict]:
    """Evaluates both prediction folders against ``ref_folder`` and compares them per organ with the paired Wilcoxon
    signed-rank test. Writes into ``out_dir``: per_case_<name>.csv (both), comparison.csv, comparison.md,
    comparison_boxplot.png. Returns the comparison table."""
    names = tuple(names)
    if len(names) != 2 or names[0] == names[1]:
        raise ValueError(f"names must be two different method names, got {names}")
    rows_a = evaluate_folder(folder_a, ref_folder, labels, tolerance_mm, file_ending=file_ending, nsd_method=nsd_method)
    rows_b = evaluate_folder(folder_b, ref_folder, labels, tolerance_mm, file_ending=file_ending, nsd_method=nsd_method)
    organs = list(labels)
    table = comparison_table(rows_a, rows_b, organs, names)
    out_dir = Path(out_dir)
    for rows, name in zip((rows_a, rows_b), names):
        write_csv(rows, out_dir / f"per_case_{_file_safe(name)}.csv")
    write_csv(table, out_dir / "comparison.csv")
    (out_dir / "comparison.md").write_text(markdown_table(table, tolerance_mm, nsd_method))
    box_plot(dict(zip(names, (rows_a, rows_b))), organs,
             [("dice", "Dice"), ("nsd", nsd_name(tolerance_mm, nsd_method, spaced=True))],
             out_dir / "comparison_boxplot.png", colours=("tab:orange", "tab:blue"))
    return table


def _file_safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


# ---------------------------------------------------------------- summary

def summary_lines(rows: list[dict], organs: list[str]) -> list[str]:
    """Per organ and metric: mean ± sd over the cases whose reference holds the organ, and their number."""
    lines = []
    for organ in organs:
        for metric in METRICS:
            values = np.array([scored(r, metric) for r in rows if r["organ"] == organ])
            values = values[~np.isnan(values)]
            mean, sd = mean_sd(values)
            lines.append(f"{organ:>20s} {metric:>5s}: {fmt(mean)} ± {fmt(sd)} (n={values.size})")
    return lines
