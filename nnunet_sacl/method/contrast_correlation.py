"""Organ contrast correlation: the pair weights of intensity-weighted negatives (DCC, the SACL follow-up).

Lee et al. 2022 ("Adaptive Contrastive Learning with Dynamic Correlation for Multi-Phase Organ Segmentation",
arXiv 2210.08652; released code MASILab/DCC_CL) weight each pair of organ samples by how alike their mean
intensities are: ``w_ij = 1 - |m_i - m_j|``, with intensities scaled to a unit range. Two organs that look alike
(the same contrast) are pushed apart at full strength; organs already told apart by intensity less so. The
weighting is data-driven, so it needs no phase labels. See ``IntensityWeightedSupConLoss`` for where w enters.
"""
from typing import Mapping, Sequence, Tuple

import torch


def contrast_correlation(intensities: torch.Tensor, intensity_range: torch.Tensor) -> torch.Tensor:
    """``w_ij = clamp(1 - mean_c |m_ic - m_jc| / R_c, 0, 1)`` for organ mean intensities m ``[N, C]``.

    ``intensity_range`` R ``[C]`` is the width of each channel's (normalized) intensity range, so that w lies in
    [0, 1]: 1 for equal intensities, 0 for intensities at opposite ends of the range. The clamp only matters for
    intensities that augmentation pushed outside that range. Returns ``[N, N]`` float32, symmetric, 1 on the diagonal.
    """
    if intensities.ndim != 2 or intensity_range.shape != intensities.shape[1:]:
        raise ValueError(f"intensities must be [N, C] and intensity_range [C], got {tuple(intensities.shape)} "
                         f"and {tuple(intensity_range.shape)}")
    if not bool((intensity_range > 0).all()):
        raise ValueError(f"intensity_range must be > 0 in every channel, got {intensity_range.tolist()}")
    m = intensities.float() / intensity_range.float().to(intensities.device)
    difference = (m[:, None, :] - m[None, :, :]).abs().mean(-1)
    return (1 - difference).clamp(0, 1)


def normalized_ct_intensity_range(normalization_schemes: Sequence[str],
                                  intensity_properties: Mapping[str, Mapping[str, float]]) -> Tuple[float, ...]:
    """Width of each channel's intensity range after nnU-Net's CTNormalization: (p99.5 - p0.5) / std.

    CTNormalization clips to the foreground's 0.5 and 99.5 percentiles, then subtracts the mean and divides by
    the std (all from the plans), so every normalized voxel lies in a range of exactly this width. Other schemes
    (z-score per image, ...) have no fixed range: the weights would depend on each case's own statistics.
    """
    widths = []
    for channel, scheme in enumerate(normalization_schemes):
        if scheme != "CTNormalization":
            raise ValueError(
                f"intensity-weighted negatives need a fixed intensity range, but channel {channel} is normalized "
                f"with {scheme} (only CTNormalization has one). Set the trainer's intensity_range to the width of "
                f"each channel's normalized intensity range, or turn intensity_weighted_negatives off.")
        p = intensity_properties[str(channel)]
        widths.append((p["percentile_99_5"] - p["percentile_00_5"]) / max(p["std"], 1e-8))
    return tuple(widths)
