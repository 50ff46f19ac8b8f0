"""Organ embeddings from encoder features: mask pooling (one encoder pass) and the paper-style masked inputs.

Label convention (nnU-Net's): 0 is background, organs are 1..num_classes-1, and an optional ignore label marks
voxels without annotation. Neither background nor ignored voxels ever give an embedding.
"""
from math import prod
from typing import Optional, Tuple

import torch


def _class_buckets(seg: torch.Tensor, num_classes: int, ignore_label: Optional[int]) -> torch.Tensor:
    """Labels as int64 in [0, num_classes], where num_classes is the bucket of ignored voxels; refuses others."""
    seg = seg.long()
    if ignore_label is not None:
        seg = torch.where(seg == ignore_label, torch.full_like(seg, num_classes), seg)
    highest = num_classes if ignore_label is not None else num_classes - 1
    bad = (seg < 0) | (seg > highest)
    if bool(bad.any()):
        values = torch.unique(seg[bad]).tolist()[:10]
        raise ValueError(f"segmentation holds labels {values} outside 0..{num_classes - 1}"
                         f"{'' if ignore_label is None else f' and the ignore label {ignore_label}'}")
    return seg


def _sample_class_keys(seg: torch.Tensor, num_classes: int, ignore_label: Optional[int]) -> torch.Tensor:
    """Per voxel of ``seg`` [B, 1, *spatial]: sample * (num_classes + 1) + class bucket, shape [B, *spatial]."""
    b = seg.shape[0]
    cls = _class_buckets(seg[:, 0], num_classes, ignore_label)
    return torch.arange(b, device=seg.device).view(b, *[1] * (seg.ndim - 2)) * (num_classes + 1) + cls


def _cell_of_each_voxel(label_shape, feature_shape, device) -> torch.Tensor:
    """Flat index of the feature cell that holds each label voxel's centre (the 'nearest-exact' rule).

    Along each axis, label voxel i (of S) lies in feature cell floor((i + 0.5) * F / S) = ((2i + 1) * F) // (2S),
    which is at most F - 1. Integer arithmetic: in floating point, a centre lying exactly on a cell border
    (S=11, F=30, i=5: 165/11 = 15) can round down into the lower cell. For integer ratios S / F this is plain block
    pooling; it also covers non-integer ratios and labels coarser than the features. Returns an int64 tensor of
    ``label_shape``.
    """
    cell = torch.zeros((), dtype=torch.long, device=device)
    for axis, (s, f) in enumerate(zip(label_shape, feature_shape)):
        idx = ((2 * torch.arange(s, device=device, dtype=torch.long) + 1) * f) // (2 * s)
        view = [1] * len(label_shape)
        view[axis] = s
        cell = cell * f + idx.view(view)
    return cell


def organ_voxel_counts(seg: torch.Tensor, num_classes: int, ignore_label: Optional[int] = None,
                       feature_shape=None) -> torch.Tensor:
    """Voxel counts per (sample, class[, feature cell]), computed with one scatter-add and no Python loop.

    seg: ``[B, 1, *spatial]`` integer labels. Returns ``[B, num_classes]`` or, with ``feature_shape``,
    ``[B, num_classes, prod(feature_shape)]`` float32 counts (ignored voxels dropped).
    """
    if seg.ndim < 3 or seg.shape[1] != 1:
        raise ValueError(f"seg must be [B, 1, *spatial], got shape {tuple(seg.shape)}")
    b, spatial = seg.shape[0], tuple(seg.shape[2:])
    cells = 1 if feature_shape is None else prod(feature_shape)
    key = _sample_class_keys(seg, num_classes, ignore_label)
    if feature_shape is not None:
        key = key * cells + _cell_of_each_voxel(spatial, feature_shape, seg.device)
    counts = torch.zeros(b * (num_classes + 1) * cells, dtype=torch.float32, device=seg.device)
    counts.index_add_(0, key.reshape(-1), torch.ones(key.numel(), dtype=torch.float32, device=seg.device))
    counts = counts.view(b, num_classes + 1, cells)[:, :num_classes]
    return counts if feature_shape is not None else counts[..., 0]


def _present_organs(totals: torch.Tensor, min_voxels: int) -> Tuple[torch.Tensor, torch.Tensor]:
    present = totals >= max(min_voxels, 1)
    present[:, 0] = False  # background
    sample_index, organ_labels = present.nonzero(as_tuple=True)
    return sample_index, organ_labels


def mask_pool(features: torch.Tensor, seg: torch.Tensor, num_classes: int, ignore_label: Optional[int] = None,
              min_voxels: int = 1) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One embedding per (sample, organ present): the organ's mean feature under its label mask.

    For sample b and organ k with label voxels V_bk (at the label's own resolution)::

        e_bk = 1/|V_bk| * sum_{v in V_bk} F_b[cell(v)]

    where cell(v) is the feature cell holding v's centre (see ``_cell_of_each_voxel``). This equals upsampling the
    features to the label grid with 'nearest-exact' and averaging under the mask, but costs one scatter-add over
    the labels and one ``[K, cells] x [cells, C]`` matmul per sample. An organ is present when
    ``|V_bk| >= min_voxels``; background (0) and the ignore label never give a row.

    features: ``[B, C, *spatial]``; seg: ``[B, 1, *spatial']`` integer labels, any resolution.
    Returns ``(embeddings [N, C], organ_labels [N], sample_index [N])``, rows ordered by sample, then organ.
    """
    if features.ndim != seg.ndim or features.shape[0] != seg.shape[0]:
        raise ValueError(f"features {tuple(features.shape)} and seg {tuple(seg.shape)} must both be "
                         f"[B, C, *spatial] with the same B and number of spatial axes")
    feature_shape = tuple(features.shape[2:])
    counts = organ_voxel_counts(seg, num_classes, ignore_label, feature_shape)     # [B, K, cells]
    totals = counts.sum(-1)                                                         # [B, K]
    weights = (counts / totals.clamp_min(1)[..., None]).to(features.dtype)          # rows sum to 1
    pooled = torch.bmm(weights, features.flatten(2).transpose(1, 2))                # [B, K, C]
    sample_index, organ_labels = _present_organs(totals, min_voxels)
    return pooled[sample_index, organ_labels], organ_labels, sample_index


def organ_masked_inputs(images: torch.Tensor, seg: torch.Tensor, num_classes: int,
                        ignore_label: Optional[int] = None, min_voxels: int = 1
                        ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Paper-style inputs: one copy of the image per (sample, organ present), zero outside that organ.

    ``x_bk = images_b * [seg_b == k]``; the encoder then runs once per row and its features are averaged
    globally. Costs one encoder pass per organ (the comparison variant; ``mask_pool`` needs one per patch).
    images: ``[B, C, *spatial]``; seg: ``[B, 1, *spatial]`` at the same resolution.
    Returns ``(inputs [N, C, *spatial], organ_labels [N], sample_index [N])`` in ``mask_pool``'s row order.
    """
    if images.shape[2:] != seg.shape[2:] or images.shape[0] != seg.shape[0]:
        raise ValueError(f"images {tuple(images.shape)} and seg {tuple(seg.shape)} must share batch and spatial shape")
    totals = organ_voxel_counts(seg, num_classes, ignore_label)
    sample_index, organ_labels = _present_organs(totals, min_voxels)
    spatial_ones = [1] * (seg.ndim - 2)
    masks = seg[sample_index].long() == organ_labels.view(-1, 1, *spatial_ones)
    return images[sample_index] * masks.to(images.dtype), organ_labels, sample_index


def organ_mean_intensity(images: torch.Tensor, seg: torch.Tensor, num_classes: int,
                         ignore_label: Optional[int] = None) -> torch.Tensor:
    """Mean input intensity of every (sample, class) under its label mask, per channel, in float32.

    ``m_bkc = 1/|V_bk| * sum_{v in V_bk} images[b, c, v]`` with one index-add over the voxels (``mask_pool`` at the
    input's own resolution would build a [cells x classes] matrix per sample). A class absent from a sample gets 0.
    images: ``[B, C, *spatial]``; seg: ``[B, 1, *spatial]``. Returns ``[B, num_classes, C]``; index it with
    ``mask_pool``'s ``(sample_index, organ_labels)`` to get one row per embedding.
    """
    if images.shape[2:] != seg.shape[2:] or images.shape[0] != seg.shape[0]:
        raise ValueError(f"images {tuple(images.shape)} and seg {tuple(seg.shape)} must share batch and spatial shape")
    b, c = images.shape[:2]
    key = _sample_class_keys(seg, num_classes, ignore_label).reshape(-1)
    values = images.float().movedim(1, -1).reshape(-1, c)                             # [B * voxels, C]
    sums = torch.zeros(b * (num_classes + 1), c, dtype=torch.float32, device=images.device).index_add_(0, key, values)
    counts = torch.zeros(b * (num_classes + 1), dtype=torch.float32, device=images.device).index_add_(
        0, key, torch.ones_like(key, dtype=torch.float32))
    means = sums / counts.clamp_min(1)[:, None]
    return means.view(b, num_classes + 1, c)[:, :num_classes]
