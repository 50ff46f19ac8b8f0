"""nnunet_sacl.method.augment: geometry against analytic transforms (anisotropic spacing, 2D and 3D), image/label
alignment, equality with batchgeneratorsv2's own transforms for fixed parameters, parameter distributions against
nnU-Net's settings, settings read from a real nnUNetTrainer, determinism."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from nnunet_sacl.method.augment import (AugmentSettings, adjust_contrast, apply_spatial, augment_batch, blur_axis,
                                 crop_offset, gamma_correction, input_patch_size, sample_intensity_params,
                                 sample_spatial_params, simulate_low_resolution, spatial_params)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _few_threads():
    """The machine is shared: keep each test on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------- constructed scenes

def scene(shape, spacing, objects):
    """Labels on a grid of ``shape`` voxels at ``spacing`` mm. objects: (label, kind, centre_mm, size_mm) with centres
    relative to the grid centre (voxel (n - 1) / 2); kind 'sphere' (size = radius) or 'box' (size = half extents)."""
    axes = [(torch.arange(n, dtype=torch.float64) - (n - 1) / 2) * s for n, s in zip(shape, spacing)]
    mm = torch.meshgrid(*axes, indexing="ij")
    labels = torch.zeros(shape, dtype=torch.int64)
    for label, kind, centre, size in objects:
        rel = [m - c for m, c in zip(mm, centre)]
        if kind == "sphere":
            inside = sum(r ** 2 for r in rel) <= size ** 2
        else:
            inside = torch.stack([r.abs() <= h for r, h in zip(rel, size)]).all(0)
        labels[inside] = label
    return labels


def centroid_mm(weights, spacing):
    """Weighted centroid in mm relative to the grid centre."""
    shape = weights.shape
    axes = [(torch.arange(n, dtype=torch.float64) - (n - 1) / 2) * s for n, s in zip(shape, spacing)]
    mm = torch.meshgrid(*axes, indexing="ij")
    w = weights.double()
    return torch.stack([(m * w).sum() / w.sum() for m in mm])


def rotation_in_plane(ndim, axes, angle):
    """Rotation by ``angle`` in the plane of array axes (i, j): e_i -> cos e_i + sin e_j."""
    r = np.eye(ndim)
    i, j = axes
    r[i, i], r[i, j], r[j, i], r[j, j] = math.cos(angle), -math.sin(angle), math.sin(angle), math.cos(angle)
    return r


def near_boundary(labels, width=1):
    """Voxels with a differently-labelled voxel (or the grid's edge) within ``width`` voxels along every axis."""
    x = labels.double()[None, None]
    pool = F.max_pool3d if labels.ndim == 3 else F.max_pool2d
    pad = [width] * (2 * labels.ndim)
    hi = pool(F.pad(x, pad, value=1e9), 2 * width + 1, stride=1)
    lo = -pool(F.pad(-x, pad, value=1e9), 2 * width + 1, stride=1)
    return (hi != lo)[0, 0]


GEOMETRY_CASES = {
    # ndim, in_shape, out_shape, spacing, objects, rotation plane index in `angles`, angle, scale, flips
    "3d_rotation_in_anisotropic_plane": dict(
        in_shape=(48, 96, 96), out_shape=(40, 80, 80), spacing=(2.0, 1.0, 1.0),
        objects=[(1, "sphere", (16.0, -12.0, 6.0), 11.0), (2, "box", (-14.0, 16.0, -10.0), (9.0, 12.0, 8.0))],
        angles=(0.0, 0.0, math.radians(30)), plane=(0, 1), scale=1.0, flips=(False, False, True)),
    "3d_rotation_and_scaling": dict(
        in_shape=(48, 96, 96), out_shape=(40, 80, 80), spacing=(2.0, 1.0, 1.0),
        objects=[(1, "sphere", (12.0, 14.0, -8.0), 10.0), (2, "box", (-12.0, -14.0, 10.0), (8.0, 10.0, 7.0))],
        angles=(0.0, math.radians(-25), 0.0), plane=(2, 0), scale=0.8, flips=(True, False, False)),
    "2d_rotation_and_scaling": dict(
        in_shape=(96, 128), out_shape=(80, 112), spacing=(1.5, 1.0),
        objects=[(1, "sphere", (25.0, -20.0), 14.0), (2, "box", (-22.0, 24.0), (10.0, 15.0))],
        angles=(math.radians(40),), plane=(0, 1), scale=1.25, flips=(False, True)),
}


def analytic_map(case):
    """out_mm = F A^-1 in_mm with A = R s, where nnU-Net's convention is input = A @ output (scale > 1 = zoom out)
    and mirroring flips the output. Built here from scratch, not from nnunet_sacl.method.augment."""
    ndim = len(case["in_shape"])
    angle = [a for a in case["angles"] if a != 0][0]
    a = rotation_in_plane(ndim, case["plane"], angle) * case["scale"]
    flip = np.diag([-1.0 if f else 1.0 for f in case["flips"]])
    return flip @ np.linalg.inv(a)


@pytest.mark.parametrize("name", list(GEOMETRY_CASES))
def test_objects_land_where_the_analytic_transform_puts_them(name):
    case = GEOMETRY_CASES[name]
    ndim, spacing = len(case["in_shape"]), case["spacing"]
    labels = scene(case["in_shape"], spacing, case["objects"])
    # one image channel per object, so image centroids can be checked per object too
    image = torch.stack([(labels == lab).float() * 100 for lab, *_ in case["objects"]])[None]
    params = spatial_params([case["angles"]], [[case["scale"]] * ndim], [case["flips"]], spacing)
    out_image, out_seg = apply_spatial(image, labels[None, None], params, case["out_shape"])
    out_image, out_seg = out_image[0], out_seg[0, 0]

    mapping = analytic_map(case)
    for channel, (label, *_rest) in enumerate(case["objects"]):
        source = (labels == label)
        expected = mapping @ centroid_mm(source, spacing).numpy()
        from_labels = centroid_mm(out_seg == label, spacing).numpy()
        from_image = centroid_mm(out_image[channel], spacing).numpy()
        assert np.all(np.abs(from_labels - expected) / spacing < 1.0), (label, from_labels, expected)
        assert np.all(np.abs(from_image - expected) / spacing < 1.0), (label, from_image, expected)
        # the volume scales by 1 / det(A) = 1 / scale^ndim
        expected_voxels = source.sum().item() / case["scale"] ** ndim
        assert abs((out_seg == label).sum().item() / expected_voxels - 1) < 0.05
        assert abs(out_image[channel].sum().item() / 100 / expected_voxels - 1) < 0.05
        # the test can tell mm from voxels: rotating in voxel units would put the object elsewhere
        source_vox = centroid_mm(source, spacing).numpy() / spacing
        wrong_mm = (mapping @ source_vox) * spacing  # the same matrix applied to voxel indices
        assert np.max(np.abs(wrong_mm - expected) / spacing) > 2.0


@pytest.mark.parametrize("name", list(GEOMETRY_CASES))
def test_image_and_labels_are_transformed_identically(name):
    case = GEOMETRY_CASES[name]
    ndim = len(case["in_shape"])
    labels = scene(case["in_shape"], case["spacing"], case["objects"])
    params = spatial_params([case["angles"]], [[case["scale"]] * ndim], [case["flips"]], case["spacing"])
    out_image, out_seg = apply_spatial(labels[None, None].float() * 100, labels[None, None], params,
                                       case["out_shape"])
    out_image, out_seg = out_image[0, 0], out_seg[0, 0]
    # two voxels away from label boundaries the linearly interpolated image is exactly label * 100 (one voxel is
    # not enough: a lone corner voxel of the discrete sphere can reach the linear stencil but not a nearest sample)
    interior = ~near_boundary(out_seg, width=2)
    assert interior.float().mean() > 0.6
    assert torch.allclose(out_image[interior], out_seg[interior].float() * 100, atol=1e-2)
    # rounding the image reproduces the labels everywhere but on the boundary layer itself
    disagree = (torch.round(out_image / 100) != out_seg)
    assert disagree[~near_boundary(out_seg, width=1)].sum() == 0
    assert disagree.float().mean() < 0.02


@pytest.mark.parametrize("name", list(GEOMETRY_CASES))
def test_labels_are_the_nearest_neighbour_of_the_image_sample(name):
    """A coordinate ramp as both image and labels: linear interpolation of a ramp returns the exact sampling
    position, nearest returns it rounded, so |image - label| <= 1/2 wherever both sample inside the input. Catches
    sub-voxel misalignment (e.g. labels sampled with other align_corners) that the object tests cannot see."""
    case = GEOMETRY_CASES[name]
    ndim = len(case["in_shape"])
    params = spatial_params([case["angles"]], [[case["scale"]] * ndim], [case["flips"]], case["spacing"])
    for axis in range(ndim):
        shape = [1] * ndim
        shape[axis] = case["in_shape"][axis]
        ramp = (torch.arange(case["in_shape"][axis]) + 1).reshape(shape).expand(case["in_shape"])  # 0 = outside
        out_image, out_seg = apply_spatial(ramp[None, None].float(), ramp[None, None], params, case["out_shape"])
        inside = ~near_boundary((out_seg[0, 0] == 0).long(), width=1) & (out_seg[0, 0] > 0)
        assert inside.float().mean() > 0.5
        assert (out_image - out_seg)[0, 0][inside].abs().max() <= 0.5 + 1e-3


@pytest.mark.parametrize("in_shape,out_shape", [((41, 50, 37), (32, 40, 30)), ((50, 61), (40, 47)),
                                                ((20, 31, 30), (20, 24, 23))])
def test_identity_parameters_copy_the_centre_crop(in_shape, out_shape):
    """No rotation/scaling: the crop batchgeneratorsv2's crop_tensor takes (start S // 2 - s // 2), no blur."""
    ndim = len(in_shape)
    torch.manual_seed(0)
    image = torch.randn(2, 3, *in_shape)
    labels = torch.randint(0, 5, (2, 1, *in_shape))
    params = spatial_params(torch.zeros(2, 3 if ndim == 3 else 1), torch.ones(2, ndim))
    out_image, out_seg = apply_spatial(image, labels, params, out_shape)
    window = (slice(None), slice(None)) + tuple(slice(o, o + s) for o, s in zip(crop_offset(in_shape, out_shape),
                                                                                 out_shape))
    assert crop_offset(in_shape, out_shape) == tuple(s // 2 - t // 2 for s, t in zip(in_shape, out_shape))
    assert torch.allclose(out_image, image[window], atol=1e-4)
    assert torch.equal(out_seg, labels[window])


@pytest.mark.parametrize("spacing,dummy_2d", [(None, False), ((3.0, 1.5, 1.5), False), ((3.0, 1.0, 1.0), True)])
def test_input_patch_size_covers_every_rotation(spacing, dummy_2d):
    """No output voxel of a rotated patch samples outside an input patch of input_patch_size (all ones in, ones
    out); two voxels less along any axis and some rotation does."""
    rot = (-math.pi, math.pi) if dummy_2d else (-math.radians(30), math.radians(30))
    settings = AugmentSettings(ndim=3, rotation_range=rot, spacing=spacing, dummy_2d=dummy_2d, p_rotation=1.0,
                               p_scaling=0.0)
    patch = (12, 20, 20) if dummy_2d else (16, 24, 24)
    needed = input_patch_size(settings, patch)
    params = sample_spatial_params(400, settings, torch.Generator().manual_seed(13))
    out, _ = apply_spatial(torch.ones(400, 1, *needed), None, params, patch)
    assert out.min() > 0.999
    for axis in range(3):
        if needed[axis] > patch[axis]:
            smaller = list(needed)
            smaller[axis] -= 2
            out, _ = apply_spatial(torch.ones(400, 1, *smaller), None, params, patch)
            assert out.min() < 0.999, axis


def test_mirroring_flips_only_the_chosen_axes():
    image = torch.randn(1, 1, 10, 12, 14)
    params = spatial_params([[0.0, 0.0, 0.0]], [[1.0, 1.0, 1.0]], [[True, False, True]])
    out, _ = apply_spatial(image, None, params, (10, 12, 14))
    assert torch.allclose(out, image.flip(2, 4), atol=1e-4)


# ---------------------------------------------------------------- against batchgeneratorsv2 for fixed parameters

@pytest.mark.parametrize("ndim", [2, 3])
def test_spatial_equals_batchgeneratorsv2_in_voxel_units(ndim):
    """spacing None = nnU-Net's voxel-unit rotation: same image as its SpatialTransform with the same angles/scale."""
    from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
    in_shape, out_shape = ((40, 48, 56), (32, 40, 44)) if ndim == 3 else ((64, 72), (48, 56))
    angles = [0.3, -0.2, 0.25] if ndim == 3 else [0.0, 0.5]  # batchgeneratorsv2 2D uses the last angle
    scale = 1.15
    reference = SpatialTransform(out_shape, 0, random_crop=False, p_rotation=1, rotation=lambda image, dim: angles[dim],
                                 p_scaling=1, scaling=lambda image, dim: scale, p_synchronize_scaling_across_axes=1)
    torch.manual_seed(1)
    pool = F.avg_pool3d if ndim == 3 else F.avg_pool2d
    image = pool(torch.randn(1, 1, *in_shape), 3, 1, 1)  # smooth, so interpolation differences stay small
    expected = reference(image=image[0].clone())["image"]
    ours, _ = apply_spatial(image, None, spatial_params([angles if ndim == 3 else angles[-1:]], [[scale] * ndim]),
                            out_shape)
    assert torch.allclose(ours[0], expected, atol=1e-4)


@pytest.mark.parametrize("shape,scale,ignore", [((24, 30, 17), 0.5, ()), ((24, 30, 17), 0.73, ()),
                                                ((24, 30, 17), 0.61, (0,)), ((40, 33), 0.87, ())])
def test_low_resolution_equals_interpolate(shape, scale, ignore):
    """batchgeneratorsv2's SimulateLowResolution: interpolate to round(n * scale) 'nearest-exact', back linearly."""
    torch.manual_seed(2)
    x = torch.randn(2, 2, *shape)
    scales = torch.tensor([[scale, 1.0], [1.0, scale]], dtype=torch.float64)
    on = torch.tensor([[True, True], [False, True]])
    ours = simulate_low_resolution(x, scales, on, ignore_axes=ignore)
    mode = {2: "bilinear", 3: "trilinear"}[len(shape)]
    for b, c in [(0, 0), (0, 1), (1, 0), (1, 1)]:
        s = scales[b, c].item() if on[b, c] else 1.0
        small = [n if a in ignore else round(n * s) for a, n in enumerate(shape)]
        down = F.interpolate(x[b, c][None, None], small, mode="nearest-exact")
        expected = F.interpolate(down, shape, mode=mode)[0, 0] if on[b, c] else x[b, c]
        assert torch.allclose(ours[b, c], expected, atol=1e-5), (b, c)


def test_blur_equals_batchgeneratorsv2():
    from batchgeneratorsv2.transforms.noise.gaussian_blur import blur_dimension
    torch.manual_seed(3)
    x = torch.randn(2, 2, 12, 14, 16)
    sigma = torch.tensor([[0.5, 0.8], [1.0, 0.65]], dtype=torch.float64)
    for axis in range(3):
        ours = blur_axis(x, sigma, axis, radius=3)
        for b in range(2):
            for c in range(2):
                expected = blur_dimension(x[b, c][None], sigma[b, c].item(), axis)[0]
                assert torch.allclose(ours[b, c], expected, atol=1e-5)


def test_contrast_and_gamma_equal_batchgeneratorsv2():
    from batchgeneratorsv2.transforms.intensity.contrast import ContrastTransform
    from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
    torch.manual_seed(4)
    x = torch.randn(2, 2, 8, 9, 10) * 3 + 1
    factors = torch.tensor([[0.8, 1.2], [1.1, 0.9]], dtype=torch.float64)
    on = torch.tensor([True, True])
    channels = torch.arange(2)
    ours = adjust_contrast(x, factors, on)
    for invert in (False, True):
        ours_gamma = gamma_correction(x, factors, on, invert=invert)
        for b in range(2):
            gamma_ref = GammaTransform(1.0, float(invert), False, 1, 1)._apply_to_image(
                x[b].clone(), apply_to_channel=channels, retain_stats=torch.ones(2, dtype=torch.bool),
                invert_image=torch.full((2,), invert), gamma=factors[b].float())
            assert torch.allclose(ours_gamma[b], gamma_ref, atol=1e-4)
    for b in range(2):
        contrast_ref = ContrastTransform(1.0, True, False)._apply_to_image(
            x[b].clone(), apply_to_channel=channels, multipliers=factors[b].float())
        assert torch.allclose(ours[b], contrast_ref, atol=1e-5)


# ---------------------------------------------------------------- labels

def test_labels_stay_integers_from_the_input_set_and_padding_becomes_background():
    settings = AugmentSettings(ndim=3, rotation_range=(-0.5, 0.5), mirror_axes=(0, 1, 2), spacing=(2.5, 1.0, 1.0),
                               p_rotation=1.0, p_scaling=1.0)
    g = torch.Generator().manual_seed(5)
    labels = torch.full((3, 1, 24, 40, 40), 3, dtype=torch.int16)
    labels[:, :, 6:18, 10:30, 5:25] = 7
    labels[:, :, :, :, 30:] = 11
    labels[:, :, :2] = -1  # what nnU-Net's loader pads with outside the image
    image = labels.float()
    out_image, out_seg = augment_batch(image, labels, settings, g, (20, 32, 32))
    assert out_seg.dtype == torch.int16 and out_seg.shape == (3, 1, 20, 32, 32)
    assert set(out_seg.unique().tolist()) <= {0, 3, 7, 11}
    assert (out_seg == 7).any() and (out_seg == 11).any()
    assert out_image.dtype == torch.float32 and torch.isfinite(out_image).all()


# ---------------------------------------------------------------- distributions

def within(fraction, p, n, k=4.0):
    return abs(fraction - p) <= k * math.sqrt(p * (1 - p) / n)


N = 20000


def test_spatial_parameters_follow_nnunet_settings_3d():
    rot = (-math.radians(30), math.radians(30))
    settings = AugmentSettings(ndim=3, rotation_range=rot, mirror_axes=(0, 2))
    p = sample_spatial_params(N, settings, torch.Generator().manual_seed(6))
    assert within(p.rotated.double().mean().item(), 0.2, N) and within(p.scaled.double().mean().item(), 0.2, N)
    # rotation and scaling are drawn independently
    assert within((p.rotated & p.scaled).double().mean().item(), 0.04, N)
    angles = p.angles[p.rotated]
    assert angles.min() >= rot[0] and angles.max() <= rot[1]
    n = angles.numel()
    sd_mean = (rot[1] - rot[0]) / math.sqrt(12 * n)
    assert abs(angles.mean().item()) < 4 * sd_mean
    assert within((angles < rot[0] / 2).double().mean().item(), 0.25, n)  # uniform, not concentrated
    assert (p.angles[~p.rotated] == 0).all()
    scales = p.scales[p.scaled]
    assert (scales[:, :1] == scales).all()  # p_synchronize_scaling_across_axes = 1
    assert scales.min() >= 0.7 and scales.max() <= 1.4
    assert within((scales[:, 0] < 1.05).double().mean().item(), 0.5, len(scales))
    assert (p.scales[~p.scaled] == 1).all()
    flips = p.flips.double().mean(0)
    assert within(flips[0].item(), 0.5, N) and within(flips[2].item(), 0.5, N) and flips[1] == 0


def test_spatial_parameters_2d_and_dummy_2d():
    p2 = sample_spatial_params(N, AugmentSettings(ndim=2, rotation_range=(-math.pi, math.pi), mirror_axes=(0, 1)),
                               torch.Generator().manual_seed(7))
    assert p2.angles.shape == (N, 1)
    assert within(p2.rotated.double().mean().item(), 0.2, N)
    assert p2.angles.abs().max() > 0.95 * math.pi
    dummy = AugmentSettings(ndim=3, rotation_range=(-math.pi, math.pi), mirror_axes=(0, 1, 2), dummy_2d=True)
    p = sample_spatial_params(N, dummy, torch.Generator().manual_seed(8))
    assert (p.angles[:, 1:] == 0).all() and (p.angles[p.rotated, 0] != 0).all()  # in-plane of axes (1, 2) only
    assert (p.scales[:, 0] == 1).all() and (p.scales[p.scaled, 1] != 1).all()
    assert within(p.flips[:, 0].double().mean().item(), 0.5, N)


def test_intensity_parameters_follow_nnunet_settings():
    settings = AugmentSettings(ndim=3, rotation_range=(0.0, 0.0))
    p = sample_intensity_params(N, 2, settings, torch.Generator().manual_seed(9))
    rates = {"noise_on": 0.1, "brightness_on": 0.15, "contrast_on": 0.15, "gamma_inverted_on": 0.1,
             "gamma_on": 0.3, "blur_on": 0.2 * 0.5, "lowres_on": 0.25 * 0.5}
    for name, rate in rates.items():
        on = getattr(p, name).double()
        assert within(on.mean().item(), rate, on.numel()), name
    # per-channel decisions are made within the per-sample one: both channels on happens 0.2 * 0.25 of the time
    assert within(p.blur_on.all(1).double().mean().item(), 0.2 * 0.25, N)
    assert within(p.lowres_on.all(1).double().mean().item(), 0.25 * 0.25, N)
    checks = {"noise_std": (0, 0.1), "blur_sigma": (0.5, 1.0), "lowres_scale": (0.5, 1.0),
              "brightness": (0.75, 1.25), "contrast": (0.75, 1.25), "gamma": (0.7, 1.5), "gamma_inverted": (0.7, 1.5)}
    for name, (low, high) in checks.items():
        values = getattr(p, name)
        assert values.min() >= low and values.max() <= high, name
    for name in ("brightness", "contrast", "gamma", "gamma_inverted"):  # BGContrast: half below 1, half above
        values = getattr(p, name)
        assert within((values < 1).double().mean().item(), 0.5, values.numel()), name
    # per-channel values differ (synchronize_channels=False), noise std is one per sample
    assert (p.gamma[:, 0] != p.gamma[:, 1]).all() and p.noise_std.shape == (N,)


# ---------------------------------------------------------------- settings from a real nnU-Net trainer

@pytest.mark.parametrize("configuration", ["3d_fullres", "3d_lowres", "2d"])
def test_settings_from_a_real_nnunet_trainer(configuration, tmp_path, monkeypatch):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunet_sacl.nnunet.augment_settings import augment_settings_from_trainer
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    plans = json.loads((REPO / "plans" / "btcv_like_nnUNetPlans.json").read_text())
    dataset = json.loads((REPO / "plans" / "btcv_like_dataset.json").read_text())
    trainer = nnUNetTrainer(dict(plans, continue_training=False), configuration, 0, dataset, torch.device("cpu"))
    rotation, dummy_2d, initial, mirror = trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()

    settings = augment_settings_from_trainer(trainer)
    config = plans["configurations"][configuration]
    assert settings.rotation_range == tuple(rotation) and settings.dummy_2d == dummy_2d
    assert settings.mirror_axes == tuple(mirror) == tuple(trainer.inference_allowed_mirroring_axes)
    assert settings.patch_size == tuple(config["patch_size"]) and settings.spacing == tuple(config["spacing"])
    assert settings.initial_patch_size == tuple(int(i) for i in initial)
    assert settings.ndim == len(config["patch_size"])
    # what nnU-Net decides for this plan: 48x192x192 at 3 mm is anisotropic (dummy 2D, 180 deg), 96x160x160 is not
    assert settings.dummy_2d == (configuration == "3d_fullres")
    assert math.isclose(settings.rotation_range[1], math.radians(30 if configuration == "3d_lowres" else 180))
    assert augment_settings_from_trainer(trainer, physical_rotation=False).spacing is None


# ---------------------------------------------------------------- entry point

@pytest.mark.parametrize("ndim,dummy_2d", [(3, False), (3, True), (2, False)])
def test_augment_batch_same_seed_same_output(ndim, dummy_2d):
    in_shape, out_shape = ((12, 28, 28), (12, 20, 20)) if ndim == 3 else ((40, 44), (32, 32))
    always = dict(p_rotation=1.0, p_scaling=1.0, p_noise=1.0, p_blur=1.0, p_brightness=1.0, p_contrast=1.0,
                  p_lowres=1.0, p_gamma_inverted=1.0, p_gamma=1.0)
    settings = AugmentSettings(ndim=ndim, rotation_range=(-0.5, 0.5), mirror_axes=tuple(range(ndim)),
                               dummy_2d=dummy_2d, spacing=(3.0,) + (1.0,) * (ndim - 1), patch_size=out_shape,
                               **always)
    torch.manual_seed(10)
    image = torch.randn(3, 2, *in_shape)
    labels = torch.randint(0, 4, (3, 1, *in_shape))
    image_before = image.clone()

    def run(seed):
        return augment_batch(image, labels, settings, torch.Generator().manual_seed(seed))

    a, b, c = run(11), run(11), run(12)
    assert a[0].shape == (3, 2, *out_shape) and a[1].shape == (3, 1, *out_shape)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert torch.isfinite(a[0]).all() and set(a[1].unique().tolist()) <= {0, 1, 2, 3}
    # the input is not modified
    assert torch.equal(image, image_before)


def test_deep_supervision_targets_equal_nnunet_transform():
    from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform
    from nnunet_sacl.method.augment import downsample_for_deep_supervision
    scales = [[1, 1, 1], [1, 0.5, 0.5], [0.5, 0.25, 0.25], [0.25, 0.125, 0.125]]
    seg = torch.randint(0, 5, (2, 1, 20, 48, 48), generator=torch.Generator().manual_seed(0)).to(torch.int16)
    ours = downsample_for_deep_supervision(seg, scales)
    for b in range(2):
        theirs = DownsampleSegForDSTransform(scales)(segmentation=seg[b])["segmentation"]
        for o, t in zip(ours, theirs):
            assert o.dtype == t.dtype and torch.equal(o[b], t)
