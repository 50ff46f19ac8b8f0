"""mask_pool and organ_masked_inputs against slow, obviously-correct loops."""
import pytest
import torch
from torch.nn import functional as F

from nnunet_sacl.method.pooling import _cell_of_each_voxel, mask_pool, organ_masked_inputs, organ_mean_intensity
from tests.helpers import reference_mask_pool


def random_seg(shape, num_classes, absent=(), ignore_label=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    seg = torch.randint(0, num_classes, shape, generator=g)
    for b, k in absent:
        seg[b][seg[b] == k] = 0
    if ignore_label is not None:
        seg[torch.rand(shape, generator=g) < 0.15] = ignore_label
    return seg


CASES = [  # features spatial, label spatial
    ((4, 6, 6), (8, 24, 24)),      # 3D, integer ratios, anisotropic (2 x 4 x 4)
    ((3, 4, 4), (3, 16, 16)),      # 3D, ratio 1 along the first axis
    ((5, 7, 3), (12, 20, 9)),      # 3D, non-integer ratios
    ((8, 8, 8), (4, 4, 4)),        # labels coarser than the features
    ((6, 6), (24, 24)),            # 2D
    ((5, 9), (13, 30)),            # 2D, non-integer
]


@pytest.mark.parametrize("feature_shape,label_shape", CASES)
@pytest.mark.parametrize("ignore_label", [None, 6])
def test_mask_pool_equals_loop_reference(feature_shape, label_shape, ignore_label):
    B, C, K = 3, 5, 6
    features = torch.randn(B, C, *feature_shape, generator=torch.Generator().manual_seed(1))
    seg = random_seg((B, 1, *label_shape), K, absent=[(0, 2), (1, 5), (2, 1), (2, 3)], ignore_label=ignore_label)
    emb, labels, samples = mask_pool(features, seg, K, ignore_label=ignore_label)
    ref_emb, ref_labels, ref_samples = reference_mask_pool(features, seg, K, ignore_label)
    assert labels.tolist() == ref_labels.tolist() and samples.tolist() == ref_samples.tolist()
    assert (0, 2) not in list(zip(samples.tolist(), labels.tolist()))  # absent organ gives no row
    torch.testing.assert_close(emb.double(), ref_emb, rtol=1e-5, atol=1e-6)


def test_cell_rule_is_nearest_exact_for_every_size_pair_up_to_64():
    """Every (label size S, feature size F) up to 64: the cell of each label voxel is the source index that torch's
    'nearest-exact' upsampling reads, and the rule floor((i + 0.5) * F / S) in exact rational arithmetic (a voxel
    centre on a cell border, e.g. S=11, F=30, i=5, belongs to the upper cell)."""
    from fractions import Fraction
    wrong = []
    for s in range(1, 65):
        for f in range(1, 65):
            cells = _cell_of_each_voxel((s,), (f,), "cpu").tolist()
            source = torch.arange(f, dtype=torch.float64).view(1, 1, f)
            nearest_exact = F.interpolate(source, size=s, mode="nearest-exact").view(-1).long().tolist()
            rational = [min(int((i + Fraction(1, 2)) * f / s), f - 1) for i in range(s)]
            if cells != nearest_exact or cells != rational:
                wrong.append((s, f))
    assert not wrong, f"{len(wrong)} (S, F) pairs differ, first: {wrong[:5]}"
    assert _cell_of_each_voxel((11,), (30,), "cpu")[5] == 15


def test_min_voxels_drops_small_organs():
    features = torch.randn(1, 3, 2, 2, 2)
    seg = torch.zeros(1, 1, 4, 4, 4, dtype=torch.long)
    seg[0, 0, :2, :2, :2] = 1          # 8 voxels
    seg[0, 0, 3, 3, 3] = 2             # 1 voxel
    assert mask_pool(features, seg, 3, min_voxels=2)[1].tolist() == [1]
    assert mask_pool(features, seg, 3, min_voxels=1)[1].tolist() == [1, 2]
    ref = reference_mask_pool(features, seg, 3, min_voxels=2)[0]
    torch.testing.assert_close(mask_pool(features, seg, 3, min_voxels=2)[0].double(), ref)


def test_no_organ_at_all_gives_empty_rows_with_graph():
    features = torch.randn(2, 4, 2, 2, requires_grad=True)
    emb, labels, samples = mask_pool(features, torch.zeros(2, 1, 8, 8, dtype=torch.long), 3)
    assert emb.shape == (0, 4) and labels.numel() == 0 and emb.requires_grad


def test_gradient_flows_only_through_the_organ_cells():
    features = torch.zeros(1, 1, 2, 2, requires_grad=True)
    seg = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    seg[0, 0, :2, :2] = 1              # exactly the top-left feature cell
    mask_pool(features, seg, 2)[0].sum().backward()
    assert features.grad[0, 0].tolist() == [[1.0, 0.0], [0.0, 0.0]]


def test_labels_out_of_range_are_refused():
    seg = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    seg[0, 0, 0, 0] = 7
    with pytest.raises(ValueError, match=r"labels \[7\] outside 0..2"):
        mask_pool(torch.randn(1, 2, 2, 2), seg, 3)


def test_organ_masked_inputs_equals_loop_reference():
    images = torch.randn(2, 2, 6, 8, 8)
    seg = random_seg((2, 1, 6, 8, 8), 4, absent=[(1, 2)], ignore_label=9)
    inputs, labels, samples = organ_masked_inputs(images, seg, 4, ignore_label=9)
    expected = [(b, k) for b in range(2) for k in range(1, 4) if (seg[b] == k).any()]
    assert list(zip(samples.tolist(), labels.tolist())) == expected
    for row, (b, k) in enumerate(expected):
        torch.testing.assert_close(inputs[row], images[b] * (seg[b] == k))


@pytest.mark.parametrize("spatial", [(6, 8, 8), (9, 7)])
def test_organ_mean_intensity_equals_loop_reference(spatial):
    g = torch.Generator().manual_seed(3)
    images = torch.randn(3, 2, *spatial, generator=g) * 50 + 10
    seg = random_seg((3, 1, *spatial), 5, absent=[(0, 4), (2, 1)], ignore_label=7)
    means = organ_mean_intensity(images, seg, 5, ignore_label=7)
    assert means.shape == (3, 5, 2) and means.dtype == torch.float32
    for b in range(3):
        for k in range(5):
            mask = seg[b, 0] == k
            expected = images[b][:, mask].double().mean(1) if mask.any() else torch.zeros(2, dtype=torch.float64)
            torch.testing.assert_close(means[b, k].double(), expected, rtol=1e-5, atol=1e-4)
