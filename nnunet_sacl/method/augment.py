"""Batched nnU-Net data augmentation in pure torch, for running on the GPU next to an encoder-only training step.

nnU-Net (``nnUNetTrainer.get_training_transforms``) augments one sample at a time on CPU workers with
batchgeneratorsv2. Here the CPU workers only crop nnU-Net's larger initial patch and the whole batch is transformed
on the device: one ``affine_grid`` + ``grid_sample`` per batch for rotation, scaling, mirroring and the centre crop,
then the intensity transforms, each vectorised over samples and channels. Same transforms, probabilities and ranges
as nnU-Net; see docs/augmentation.md for every parameter, its source line and what differs.

Randomness comes only from the ``torch.Generator`` passed in (or torch's global RNG when it is None), and every
call draws the same amount of it whatever the outcomes, so a seed fixes the whole result.

Nothing here imports nnU-Net; ``nnunet_sacl.nnunet.augment_settings`` reads the settings from a trainer's own
transforms.
"""
import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

Range = Tuple[float, float]


# ----------------------------------------------------------------------------------------------------------------
# settings
# ----------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AugmentSettings:
    """nnU-Net's augmentation probabilities and ranges.

    For a trainer, ``nnunet_sacl.nnunet.augment_settings.augment_settings_from_trainer`` sets every field from the
    transforms its ``get_training_transforms`` returns (absent transform: probability 0). The defaults here are the
    values of stock ``nnUNetTrainer.get_training_transforms`` in nnU-Net 2.8.1
    (nnunetv2/training/nnUNetTrainer/nnUNetTrainer.py, lines 759-836); each field names its transform. "p_x" is the
    probability that a sample gets transform x (``RandomTransform``'s apply_probability, or SpatialTransform's
    p_rotation / p_scaling); "p_x_per_channel" is the probability per channel once the sample got it.
    """
    ndim: int                                   # spatial dimensions of the batch: 2 or 3
    rotation_range: Range                       # radians, per rotation axis (SpatialTransform's rotation)
    mirror_axes: Tuple[int, ...] = ()           # spatial axes that may be flipped (MirrorTransform)
    dummy_2d: bool = False                      # 3D data rotated/scaled in the plane of axes (1, 2) only
    spacing: Optional[Tuple[float, ...]] = None  # voxel spacing (mm) per axis; rotations are done in mm. None: voxels
    patch_size: Optional[Tuple[int, ...]] = None          # final patch (the output), default out_shape
    initial_patch_size: Optional[Tuple[int, ...]] = None  # what the CPU loader should crop (informational)
    # SpatialTransform(p_rotation=0.2, rotation=rotation_for_DA, p_scaling=0.2, scaling=(0.7, 1.4),
    #                  p_synchronize_scaling_across_axes=1, p_rot_per_axis=1 (default))
    p_rotation: float = 0.2
    p_scaling: float = 0.2
    scale_range: Range = (0.7, 1.4)             # > 1 samples a larger region: objects get smaller
    p_synchronize_scaling_across_axes: float = 1.0
    # MirrorTransform(allowed_axes=mirror_axes): each allowed axis flipped with probability 0.5, every sample
    p_mirror_per_axis: float = 0.5
    # RandomTransform(GaussianNoiseTransform(noise_variance=(0, 0.1), synchronize_channels=True), 0.1);
    # batchgeneratorsv2 uses the sampled "variance" as the standard deviation of the noise, and so do we
    p_noise: float = 0.1
    noise_std_range: Range = (0.0, 0.1)
    # RandomTransform(GaussianBlurTransform(blur_sigma=(0.5, 1.), synchronize_axes=False, p_per_channel=0.5), 0.2)
    p_blur: float = 0.2
    p_blur_per_channel: float = 0.5
    blur_sigma_range: Range = (0.5, 1.0)        # voxels, sampled per sample, channel and axis
    # RandomTransform(MultiplicativeBrightnessTransform(BGContrast((0.75, 1.25)), p_per_channel=1), 0.15)
    p_brightness: float = 0.15
    brightness_range: Range = (0.75, 1.25)
    # RandomTransform(ContrastTransform(BGContrast((0.75, 1.25)), preserve_range=True, p_per_channel=1), 0.15)
    p_contrast: float = 0.15
    contrast_range: Range = (0.75, 1.25)
    # RandomTransform(SimulateLowResolutionTransform(scale=(0.5, 1), synchronize_axes=True,
    #                 ignore_axes=(0,) if dummy 2D, p_per_channel=0.5), 0.25)
    p_lowres: float = 0.25
    p_lowres_per_channel: float = 0.5
    lowres_scale_range: Range = (0.5, 1.0)
    # RandomTransform(GammaTransform(BGContrast((0.7, 1.5)), p_invert_image=1, p_retain_stats=1), 0.1), then
    # RandomTransform(GammaTransform(BGContrast((0.7, 1.5)), p_invert_image=0, p_retain_stats=1), 0.3)
    p_gamma_inverted: float = 0.1
    gamma_inverted_range: Range = (0.7, 1.5)
    p_gamma: float = 0.3
    gamma_range: Range = (0.7, 1.5)
    # RemoveLabelTansform(-1, 0): the loader pads labels with -1 outside the image; nnU-Net turns them into 0
    seg_label_outside: Optional[int] = -1
    seg_label_outside_becomes: int = 0

    def __post_init__(self):
        if self.ndim not in (2, 3):
            raise ValueError(f"ndim must be 2 or 3, got {self.ndim}")
        if self.dummy_2d and self.ndim != 3:
            raise ValueError("dummy_2d is for 3D data only")
        if any(a < 0 or a >= self.ndim for a in self.mirror_axes):
            raise ValueError(f"mirror_axes {self.mirror_axes} outside the {self.ndim} spatial axes")
        if self.spacing is not None and len(self.spacing) != self.ndim:
            raise ValueError(f"spacing {self.spacing} does not have {self.ndim} entries")


# ----------------------------------------------------------------------------------------------------------------
# random numbers
# ----------------------------------------------------------------------------------------------------------------

def _rand(shape, generator: Optional[torch.Generator], device) -> torch.Tensor:
    """U[0, 1) float64 drawn from the generator on its own device, then moved to ``device``."""
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device, dtype=torch.float64).to(device)


def _uniform(shape, low: float, high: float, generator, device) -> torch.Tensor:
    return low + (high - low) * _rand(shape, generator, device)


def _bernoulli(shape, p: float, generator, device) -> torch.Tensor:
    return _rand(shape, generator, device) < p


def _bg_contrast(shape, value_range: Range, generator, device) -> torch.Tensor:
    """batchgeneratorsv2's BGContrast: with probability 1/2 (if low < 1) uniform in [low, 1), else uniform in
    [max(low, 1), high) - as often darker as brighter although the range is asymmetric around 1."""
    low, high = value_range
    below = _bernoulli(shape, 0.5, generator, device) & (low < 1)
    under_one = _uniform(shape, low, 1.0, generator, device)
    over_one = _uniform(shape, max(low, 1.0), high, generator, device)
    return torch.where(below, under_one, over_one)


# ----------------------------------------------------------------------------------------------------------------
# spatial: rotation, scaling, mirroring and centre crop in one grid_sample
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class SpatialParams:
    """Per-sample spatial parameters, all float64/bool on one device.

    angles: (B, 3) in 3D, rotations in the planes of axes (1, 2), (0, 2), (0, 1) (nnU-Net's x, y, z angles);
    (B, 1) in 2D. scales: (B, ndim). flips: (B, ndim) bool. spacing: (ndim,) mm, ones for voxel units.
    rotated/scaled: (B,) whether the sample drew a rotation/scaling (angles/scales are 0/1 where not)."""
    angles: torch.Tensor
    scales: torch.Tensor
    flips: torch.Tensor
    spacing: torch.Tensor
    rotated: torch.Tensor
    scaled: torch.Tensor

    @property
    def ndim(self) -> int:
        return self.scales.shape[1]


def spatial_params(angles, scales, flips=None, spacing=None) -> SpatialParams:
    """Known parameters (for tests and for reproducing a draw): tensors or nested sequences, batch first."""
    angles = torch.as_tensor(angles, dtype=torch.float64)
    scales = torch.as_tensor(scales, dtype=torch.float64)
    batch, ndim = scales.shape
    flips = torch.zeros(batch, ndim, dtype=torch.bool) if flips is None else torch.as_tensor(flips, dtype=torch.bool)
    spacing = torch.ones(ndim, dtype=torch.float64) if spacing is None else torch.as_tensor(spacing, dtype=torch.float64)
    return SpatialParams(angles, scales, flips, spacing, rotated=(angles != 0).any(1), scaled=(scales != 1).any(1))


def sample_spatial_params(batch_size: int, settings: AugmentSettings, generator: Optional[torch.Generator] = None,
                          device=None) -> SpatialParams:
    """Draws nnU-Net's SpatialTransform and MirrorTransform parameters for each sample.

    rotation with p_rotation: every rotation angle uniform in rotation_range (p_rot_per_axis = 1); in 2D and dummy
    2D one in-plane angle. scaling with p_scaling: one factor uniform in scale_range for all axes with
    p_synchronize_scaling_across_axes, else one per axis; dummy 2D never scales axis 0. Mirroring: each allowed
    axis with p_mirror_per_axis."""
    device = torch.device(device) if device is not None else (generator.device if generator is not None else
                                                                torch.device("cpu"))
    b, ndim = batch_size, settings.ndim
    rotated = _bernoulli(b, settings.p_rotation, generator, device)
    scaled = _bernoulli(b, settings.p_scaling, generator, device)

    n_angles = 3 if ndim == 3 else 1
    angles = _uniform((b, n_angles), *settings.rotation_range, generator, device)
    if settings.dummy_2d:
        angles[:, 1:] = 0  # in-plane rotation of axes (1, 2) only, as nnU-Net's 2D SpatialTransform does
    angles = torch.where(rotated[:, None], angles, torch.zeros_like(angles))

    synchronized = _bernoulli((b, 1), settings.p_synchronize_scaling_across_axes, generator, device)
    one_scale = _uniform((b, 1), *settings.scale_range, generator, device)
    axis_scales = _uniform((b, ndim), *settings.scale_range, generator, device)
    scales = torch.where(synchronized, one_scale.expand(b, ndim), axis_scales)
    if settings.dummy_2d:
        scales[:, 0] = 1
    scales = torch.where(scaled[:, None], scales, torch.ones_like(scales))

    allowed = torch.zeros(ndim, dtype=torch.bool, device=device)
    allowed[list(settings.mirror_axes)] = True
    flips = _bernoulli((b, ndim), settings.p_mirror_per_axis, generator, device) & allowed

    spacing = torch.ones(ndim, dtype=torch.float64) if settings.spacing is None else \
        torch.tensor(settings.spacing, dtype=torch.float64)
    return SpatialParams(angles, scales, flips, spacing.to(device), rotated, scaled)


def rotation_matrices(angles: torch.Tensor) -> torch.Tensor:
    """(B, n_angles) -> (B, d, d) in array-axis order. 3D: Rz @ Ry @ Rx as in batchgeneratorsv2's
    create_affine_matrix_3d (Rx rotates axes (1, 2), Ry axes (0, 2), Rz axes (0, 1)); 2D: [[c, -s], [s, c]]."""
    c, s = torch.cos(angles), torch.sin(angles)
    one, zero = torch.ones_like(c[:, 0]), torch.zeros_like(c[:, 0])

    def mat(rows):
        return torch.stack([torch.stack(r, -1) for r in rows], -2)

    if angles.shape[1] == 1:
        return mat([[c[:, 0], -s[:, 0]], [s[:, 0], c[:, 0]]])
    rx = mat([[one, zero, zero], [zero, c[:, 0], -s[:, 0]], [zero, s[:, 0], c[:, 0]]])
    ry = mat([[c[:, 1], zero, s[:, 1]], [zero, one, zero], [-s[:, 1], zero, c[:, 1]]])
    rz = mat([[c[:, 2], -s[:, 2], zero], [s[:, 2], c[:, 2], zero], [zero, zero, one]])
    return rz @ ry @ rx


def voxel_matrix(params: SpatialParams) -> torch.Tensor:
    """(B, d, d) map from output to input voxel offsets (both relative to the rotation centre).

    nnU-Net's affine A = R @ S acts on the sampling position: input = A @ output. Done in mm, with D = diag(spacing):
    input_mm = A @ output_mm, so input_vox = D^-1 A D output_vox. Mirroring flips the output axis about its centre,
    i.e. multiplies output offsets by diag(+-1) first: M = D^-1 R S D diag(flip)."""
    a = rotation_matrices(params.angles) @ torch.diag_embed(params.scales)
    d = params.spacing.to(a.device)
    flip = 1 - 2 * params.flips.to(a.dtype)
    return a * d[None, None, :] / d[None, :, None] * flip[:, None, :]


def crop_offset(in_shape: Sequence[int], out_shape: Sequence[int]) -> Tuple[int, ...]:
    """First input voxel of the centre crop, as batchgeneratorsv2's crop_tensor takes it: S // 2 - s // 2.
    An integer, so the untransformed crop copies voxels without interpolation."""
    return tuple(s_in // 2 - s_out // 2 for s_in, s_out in zip(in_shape, out_shape))


def affine_theta(matrix: torch.Tensor, in_shape: Sequence[int], out_shape: Sequence[int]) -> torch.Tensor:
    """``affine_grid`` theta (B, d, d + 1) for input_vox = M (output_vox - c_out) + c_out + offset, with
    c_out = (s - 1) / 2 the output centre and offset = crop_offset.

    With align_corners=False, voxel i of an axis of length n sits at u = (2 i + 1) / n - 1, so i - (n - 1) / 2 =
    u n / 2. Hence u_in = diag(2 / S) M diag(s / 2) u_out + 2 t / S with t = (s - 1) / 2 + offset - (S - 1) / 2.
    affine_grid orders coordinates x, y(, z) = last axis first, so rows and columns are reversed at the end."""
    dtype, device = matrix.dtype, matrix.device
    big = torch.tensor(in_shape, dtype=dtype, device=device)
    small = torch.tensor(out_shape, dtype=dtype, device=device)
    offset = torch.tensor(crop_offset(in_shape, out_shape), dtype=dtype, device=device)
    linear = (2 / big)[None, :, None] * matrix * (small / 2)[None, None, :]
    translation = 2 * ((small - 1) / 2 + offset - (big - 1) / 2) / big
    theta = torch.cat([linear, translation[None, :, None].expand(matrix.shape[0], -1, 1)], dim=2)
    reverse = list(range(len(in_shape)))[::-1]
    return theta[:, reverse][:, :, reverse + [len(in_shape)]]


def sampling_grid(params: SpatialParams, in_shape: Sequence[int], out_shape: Sequence[int]) -> torch.Tensor:
    """float32 grid for grid_sample; composed in float64 so 200-voxel patches stay exact to ~1e-6 voxels."""
    theta = affine_theta(voxel_matrix(params), in_shape, out_shape)
    batch = theta.shape[0]
    return F.affine_grid(theta, [batch, 1, *out_shape], align_corners=False).float()


def input_patch_size(settings: AugmentSettings, patch_size: Sequence[int], max_scale: float = 1.0,
                     angle_steps: int = 13) -> Tuple[int, ...]:
    """Smallest input patch that holds every sample point of a ``patch_size`` output for all rotations in
    settings.rotation_range (in mm when settings.spacing is set) at scales up to ``max_scale``: the bounding box of
    the output corners (+-s/2 voxels) mapped by the voxel matrix, maximised over a grid of angle_steps values per
    angle.

    An alternative to nnU-Net's initial_patch_size, which under-approximates on purpose (get_patch_size rotates
    one corner vector about one axis at a time, in voxel units, and divides by 0.85), so nnU-Net's rotated and
    zoomed-out patches have zero-padded corners; in mm, anisotropic data reaches a little more padding along the
    coarse axis (docs/augmentation.md has numbers)."""
    ndim = settings.ndim
    steps = torch.linspace(*settings.rotation_range, angle_steps, dtype=torch.float64)
    n_angles = 3 if ndim == 3 else 1
    angles = torch.cartesian_prod(*[steps] * n_angles).reshape(-1, n_angles)
    if settings.dummy_2d:
        angles = torch.stack([steps, torch.zeros_like(steps), torch.zeros_like(steps)], 1)
    scales = torch.full((len(angles), ndim), float(max_scale), dtype=torch.float64)
    if settings.dummy_2d:
        scales[:, 0] = 1
    matrix = voxel_matrix(spatial_params(angles, scales, spacing=settings.spacing))
    corners = torch.cartesian_prod(*[torch.tensor([-s / 2, s / 2], dtype=torch.float64) for s in patch_size])
    extent = (matrix[:, None] @ corners.reshape(-1, ndim, 1)[None]).abs().amax(dim=(0, 1))[:, 0]
    return tuple(max(int(s), math.ceil(2 * e - 1e-9)) for s, e in zip(patch_size, extent.tolist()))


def apply_spatial(images: torch.Tensor, seg: Optional[torch.Tensor], params: SpatialParams,
                  out_shape: Sequence[int]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Rotates, scales, mirrors and centre-crops (B, C, *in_shape) to (B, C, *out_shape) with one grid_sample:
    linear for images, nearest for labels (so labels stay values of the input), zeros outside the input for both
    (nnU-Net pads labels with -1 and turns -1 into 0 later; see augment_batch)."""
    in_shape, out_shape = tuple(images.shape[2:]), tuple(int(s) for s in out_shape)
    if len(in_shape) != params.ndim or len(out_shape) != params.ndim:
        raise ValueError(f"params are {params.ndim}D, images {tuple(images.shape)}, out_shape {out_shape}")
    if seg is not None and (seg.ndim != images.ndim or seg.shape[0] != images.shape[0]
                            or tuple(seg.shape[2:]) != in_shape):
        raise ValueError(f"seg {tuple(seg.shape)} must be (B, Cs, *{in_shape}) for images {tuple(images.shape)}")
    params = _on_device(params, images.device)
    grid = sampling_grid(params, in_shape, out_shape)
    out_images = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="zeros",
                               align_corners=False).to(images.dtype)
    out_seg = None
    if seg is not None:
        out_seg = F.grid_sample(seg.float(), grid, mode="nearest", padding_mode="zeros",
                                align_corners=False).round().to(seg.dtype)
    return out_images, out_seg


def _on_device(params, device):
    """A SpatialParams or IntensityParams with every tensor on ``device``."""
    return type(params)(**{k: v.to(device) for k, v in vars(params).items()})


# ----------------------------------------------------------------------------------------------------------------
# intensity
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class IntensityParams:
    """Per-sample (B,) / per-channel (B, C) parameters of nnU-Net's intensity transforms, in the order nnU-Net
    applies them. *_on: whether the transform applies (per sample, or per sample and channel)."""
    noise_on: torch.Tensor          # (B,)
    noise_std: torch.Tensor         # (B,) shared by all channels (synchronize_channels=True)
    blur_on: torch.Tensor           # (B, C)
    blur_sigma: torch.Tensor        # (B, C, ndim) voxels
    brightness_on: torch.Tensor     # (B,)
    brightness: torch.Tensor        # (B, C)
    contrast_on: torch.Tensor       # (B,)
    contrast: torch.Tensor          # (B, C)
    lowres_on: torch.Tensor         # (B, C)
    lowres_scale: torch.Tensor      # (B, C) one factor for all axes (synchronize_axes=True)
    gamma_inverted_on: torch.Tensor  # (B,)
    gamma_inverted: torch.Tensor    # (B, C)
    gamma_on: torch.Tensor          # (B,)
    gamma: torch.Tensor             # (B, C)


def sample_intensity_params(batch_size: int, channels: int, settings: AugmentSettings,
                            generator: Optional[torch.Generator] = None, device=None) -> IntensityParams:
    """Draws every intensity parameter for every sample and channel (used or not, so the draw count is fixed)."""
    device = torch.device(device) if device is not None else (generator.device if generator is not None else
                                                                torch.device("cpu"))
    b, c, s = batch_size, channels, settings
    args = (generator, device)
    return IntensityParams(
        noise_on=_bernoulli(b, s.p_noise, *args),
        noise_std=_uniform(b, *s.noise_std_range, *args),
        blur_on=_bernoulli((b, 1), s.p_blur, *args) & _bernoulli((b, c), s.p_blur_per_channel, *args),
        blur_sigma=_uniform((b, c, s.ndim), *s.blur_sigma_range, *args),
        brightness_on=_bernoulli(b, s.p_brightness, *args),
        brightness=_bg_contrast((b, c), s.brightness_range, *args),
        contrast_on=_bernoulli(b, s.p_contrast, *args),
        contrast=_bg_contrast((b, c), s.contrast_range, *args),
        lowres_on=_bernoulli((b, 1), s.p_lowres, *args) & _bernoulli((b, c), s.p_lowres_per_channel, *args),
        lowres_scale=_uniform((b, c), *s.lowres_scale_range, *args),
        gamma_inverted_on=_bernoulli(b, s.p_gamma_inverted, *args),
        gamma_inverted=_bg_contrast((b, c), s.gamma_inverted_range, *args),
        gamma_on=_bernoulli(b, s.p_gamma, *args),
        gamma=_bg_contrast((b, c), s.gamma_range, *args),
    )


def _per_sample(mask: torch.Tensor, ndim_total: int) -> torch.Tensor:
    """(B,) or (B, C) -> broadcastable against (B, C, *spatial)."""
    return mask.reshape(*mask.shape, *([1] * (ndim_total - mask.ndim)))


def _spatial_dims(x: torch.Tensor) -> Tuple[int, ...]:
    return tuple(range(2, x.ndim))


def add_gaussian_noise(x: torch.Tensor, std: torch.Tensor, on: torch.Tensor, generator) -> torch.Tensor:
    """x + on * std * N(0, 1): one standard deviation per sample, fresh noise per voxel and channel."""
    noise = torch.randn(x.shape, generator=generator, device=generator.device if generator is not None else x.device,
                        dtype=x.dtype).to(x.device)
    scale = (std * on).to(x.dtype)
    return x + _per_sample(scale, x.ndim) * noise


def kernel_radius(sigma: torch.Tensor) -> torch.Tensor:
    """batchgeneratorsv2's kernel half-width: kernel size = round_to_odd(6 sigma + 0.5), i.e. round half to even,
    then an even result moves one towards 6 sigma + 0.5 (sigma 0.5 -> 5 taps, 0.8 -> 5, 1.0 -> 7)."""
    n = 6 * sigma + 0.5
    r = torch.round(n)
    size = torch.where(r % 2 == 1, r, torch.where(n - r >= 0, r + 1, r - 1))
    return (size - 1) / 2


def gaussian_kernels(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """(N,) sigmas -> (N, 2 radius + 1) kernels exp(-x^2 / 2 sigma^2) on x = -radius..radius, cut to each sigma's
    own kernel_radius (zero taps beyond) and normalised to sum 1."""
    x = torch.arange(-radius, radius + 1, dtype=sigma.dtype, device=sigma.device)
    k = torch.exp(-0.5 * (x[None, :] / sigma[:, None]) ** 2)
    k = k * (x[None, :].abs() <= kernel_radius(sigma)[:, None])
    return k / k.sum(1, keepdim=True)


def blur_axis(x: torch.Tensor, sigma: torch.Tensor, axis: int, radius: int) -> torch.Tensor:
    """Separable Gaussian along spatial ``axis`` with a sigma per (sample, channel): one grouped convolution with
    reflect padding (batchgeneratorsv2's blur_dimension, batched)."""
    b, c, *spatial = x.shape
    nd = len(spatial)
    kernel_shape = [1] * nd
    kernel_shape[axis] = 2 * radius + 1
    weight = gaussian_kernels(sigma.reshape(-1), radius).to(x.dtype).reshape(b * c, 1, *kernel_shape)
    pad = [0] * (2 * nd)
    pad[2 * (nd - 1 - axis)] = pad[2 * (nd - 1 - axis) + 1] = radius  # F.pad lists the last axis first
    xp = F.pad(x.reshape(1, b * c, *spatial), pad, mode="reflect")
    conv = (F.conv2d, F.conv3d)[nd - 2]
    return conv(xp, weight, groups=b * c).reshape(b, c, *spatial)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, on: torch.Tensor, radius: int) -> torch.Tensor:
    """Blurs the (sample, channel) pairs with on set, sigma (B, C, ndim) per axis."""
    blurred = x
    for axis in range(x.ndim - 2):
        blurred = blur_axis(blurred, sigma[..., axis], axis, radius)
    return torch.where(_per_sample(on, x.ndim), blurred, x)


def blur_radius(settings: AugmentSettings) -> int:
    """Common kernel half-width of a batch: that of the largest sigma (3 at sigma 1); smaller sigmas zero the
    outer taps (see gaussian_kernels)."""
    return int(kernel_radius(torch.tensor([float(settings.blur_sigma_range[1])])).item())


def multiply_brightness(x: torch.Tensor, factor: torch.Tensor, on: torch.Tensor) -> torch.Tensor:
    """x * factor per (sample, channel) where on."""
    return torch.where(_per_sample(on, x.ndim), x * _per_sample(factor.to(x.dtype), x.ndim), x)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor, on: torch.Tensor) -> torch.Tensor:
    """(x - mean) * factor + mean, clipped to the channel's original [min, max] (preserve_range=True)."""
    dims = _spatial_dims(x)
    mean = x.mean(dims, keepdim=True)
    low, high = x.amin(dims, keepdim=True), x.amax(dims, keepdim=True)
    y = ((x - mean) * _per_sample(factor.to(x.dtype), x.ndim) + mean).clamp(low, high)
    return torch.where(_per_sample(on, x.ndim), y, x)


def lowres_matrices(size: int, scale: torch.Tensor) -> torch.Tensor:
    """(N,) scales -> (N, size, size) W with W @ v = interpolate(interpolate(v, n, 'nearest-exact'), size,
    'linear', align_corners=False) for n = round(size * scale) - nnU-Net's SimulateLowResolution along one axis.

    Linear upsampling n -> size reads low-res position u = max((j + 1/2) n / size - 1/2, 0) between samples
    floor(u) and floor(u) + 1 (clamped to n - 1); nearest-exact downsampling made low-res sample i from input voxel
    min(floor((i + 1/2) size / n), size - 1). Scale 1 gives the identity."""
    n = torch.round(size * scale.to(torch.float64)).clamp(min=1)[:, None]
    j = torch.arange(size, dtype=torch.float64, device=scale.device)[None, :]
    u = ((j + 0.5) * n / size - 0.5).clamp(min=0)
    i0 = torch.minimum(torch.floor(u), n - 1)
    i1 = torch.minimum(i0 + 1, n - 1)
    lam = u - i0

    def source_voxel(i):
        return torch.floor((i + 0.5) * size / n).clamp(max=size - 1).long()

    w = torch.zeros(scale.shape[0], size, size, dtype=torch.float64, device=scale.device)
    w.scatter_add_(2, source_voxel(i0)[..., None], (1 - lam)[..., None])
    w.scatter_add_(2, source_voxel(i1)[..., None], lam[..., None])
    return w


def apply_along_axis(x: torch.Tensor, w: torch.Tensor, axis: int) -> torch.Tensor:
    """y[..., j, ...] = sum_i w[bc, j, i] x[..., i, ...] along spatial ``axis``, one matrix per (sample, channel)."""
    b, c = x.shape[:2]
    moved = x.movedim(axis + 2, -1)
    shape = moved.shape
    out = torch.bmm(moved.reshape(b * c, -1, shape[-1]), w.transpose(1, 2).to(x.dtype))
    return out.reshape(shape).movedim(-1, axis + 2)


def simulate_low_resolution(x: torch.Tensor, scale: torch.Tensor, on: torch.Tensor,
                            ignore_axes: Sequence[int] = ()) -> torch.Tensor:
    """Nearest-exact downsampling by ``scale`` (B, C) on all axes but ignore_axes, then linear upsampling back."""
    y = x
    for axis in range(x.ndim - 2):
        if axis not in ignore_axes:
            y = apply_along_axis(y, lowres_matrices(x.shape[axis + 2], scale.reshape(-1)), axis)
    return torch.where(_per_sample(on, x.ndim), y, x)


def gamma_correction(x: torch.Tensor, gamma: torch.Tensor, on: torch.Tensor, invert: bool,
                     eps: float = 1e-7) -> torch.Tensor:
    """GammaTransform with p_retain_stats=1: y = ((x - min) / range) ** gamma * range + min, then y is shifted and
    scaled back to x's mean and std; with invert the same is done to -x (brightens instead of darkens)."""
    dims = _spatial_dims(x)
    v = -x if invert else x
    mean, std = v.mean(dims, keepdim=True), v.std(dims, keepdim=True)
    low, high = v.amin(dims, keepdim=True), v.amax(dims, keepdim=True)
    span = high - low
    y = ((v - low) / span.clamp(min=eps)).pow(_per_sample(gamma.to(x.dtype), x.ndim)) * span + low
    y = (y - y.mean(dims, keepdim=True)) * (std / y.std(dims, keepdim=True).clamp(min=eps)) + mean
    y = -y if invert else y
    return torch.where(_per_sample(on, x.ndim), y, x)


def apply_intensity(images: torch.Tensor, params: IntensityParams, settings: AugmentSettings,
                    generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """nnU-Net's intensity transforms in its order: noise, blur, brightness, contrast, low resolution, inverted
    gamma, gamma. Computed in float32."""
    p = _on_device(params, images.device)
    x = images.float()
    x = add_gaussian_noise(x, p.noise_std, p.noise_on, generator)
    x = gaussian_blur(x, p.blur_sigma, p.blur_on, blur_radius(settings))
    x = multiply_brightness(x, p.brightness, p.brightness_on)
    x = adjust_contrast(x, p.contrast, p.contrast_on)
    x = simulate_low_resolution(x, p.lowres_scale, p.lowres_on, ignore_axes=(0,) if settings.dummy_2d else ())
    x = gamma_correction(x, p.gamma_inverted, p.gamma_inverted_on, invert=True)
    x = gamma_correction(x, p.gamma, p.gamma_on, invert=False)
    return x.to(images.dtype)


# ----------------------------------------------------------------------------------------------------------------
# entry point
# ----------------------------------------------------------------------------------------------------------------

def replace_outside_label(seg: torch.Tensor, settings: AugmentSettings) -> torch.Tensor:
    """RemoveLabelTansform(-1, 0): the label the loader padded with becomes background."""
    if settings.seg_label_outside is None:
        return seg
    return seg.masked_fill(seg == settings.seg_label_outside, settings.seg_label_outside_becomes)


def augment_batch(images: torch.Tensor, seg: Optional[torch.Tensor], settings: AugmentSettings,
                  generator: Optional[torch.Generator] = None, out_shape: Optional[Sequence[int]] = None
                  ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """nnU-Net's training augmentation for a whole batch on images' device.

    images (B, C, *in_shape) float, seg (B, Cs, *in_shape) integer labels or None; in_shape is normally nnU-Net's
    initial patch size. Returns images (B, C, *out_shape) and seg (B, Cs, *out_shape); out_shape defaults to
    settings.patch_size. For speed, pass a generator on images' device (a CPU generator works, but then the noise
    volume is drawn on the CPU and copied)."""
    if images.ndim != settings.ndim + 2:
        raise ValueError(f"expected (B, C, {settings.ndim} spatial axes), got {tuple(images.shape)}")
    out_shape = tuple(out_shape) if out_shape is not None else settings.patch_size
    if out_shape is None:
        raise ValueError("out_shape is needed when settings.patch_size is None")
    batch, channels = images.shape[:2]
    spatial = sample_spatial_params(batch, settings, generator, device=images.device)
    intensity = sample_intensity_params(batch, channels, settings, generator, device=images.device)
    images, seg = apply_spatial(images, seg, spatial, out_shape)
    images = apply_intensity(images, intensity, settings, generator)
    if seg is not None:
        seg = replace_outside_label(seg, settings)
    return images, seg


def downsample_for_deep_supervision(seg: torch.Tensor, scales) -> list:
    """Targets for nnU-Net's deep supervision, as its DownsampleSegForDSTransform makes them: for each scale s,
    seg resized to round(shape * s) with 'nearest-exact' (scale 1 keeps seg). seg: (B, C, *spatial)."""
    targets = []
    for s in scales:
        s = list(s) if isinstance(s, (tuple, list)) else [s] * (seg.ndim - 2)
        if all(i == 1 for i in s):
            targets.append(seg)
        else:
            shape = [round(i * j) for i, j in zip(seg.shape[2:], s)]
            targets.append(torch.nn.functional.interpolate(seg.float(), shape, mode="nearest-exact").to(seg.dtype))
    return targets
