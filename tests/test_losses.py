"""SupConLoss (L_out form) and its intensity-weighted (DCC) form against slow loops written straight from the formulas."""

import pytest
import torch
from torch.nn import functional as F

from nnunet_sacl.method.heads import ProjectionHead
from nnunet_sacl.method.contrast_correlation import contrast_correlation, normalized_ct_intensity_range
from nnunet_sacl.method.losses import IntensityWeightedSupConLoss, SupConLoss
from tests.helpers import reference_intensity_weighted, reference_supcon


@pytest.mark.parametrize("seed,n,t", [(0, 6, 0.07), (1, 13, 0.07), (2, 20, 0.5), (3, 9, 1.0)])
def test_supcon_equals_loop_reference(seed, n, t):
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(n, 16, generator=g), dim=1)
    labels = torch.randint(1, 5, (n,), generator=g)
    labels[0] = 99  # one anchor without any positive: skipped
    loss = SupConLoss(t)(z, labels)
    assert loss.dtype == torch.float32
    assert abs(loss.item() - reference_supcon(z, labels.tolist(), t)) < 1e-5


def test_supcon_gradient_matches_autograd_of_reference_formula():
    z = F.normalize(torch.randn(8, 4, dtype=torch.float64), dim=1).requires_grad_()
    labels = torch.tensor([1, 1, 2, 2, 3, 3, 3, 4])
    t = 0.1
    loss = SupConLoss(t)(z, labels)
    (grad,) = torch.autograd.grad(loss, z)
    # the same formula with plain tensor ops, for the gradient
    sim = z @ z.T / t
    terms = []
    for i in range(8):
        others = [a for a in range(8) if a != i]
        pos = [p for p in others if labels[p] == labels[i]]
        if pos:
            log_den = torch.logsumexp(sim[i, others], 0)
            terms.append(-(sim[i, pos] - log_den).mean())
    (ref_grad,) = torch.autograd.grad(torch.stack(terms).mean(), z)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("labels", [[3], [1, 2, 3], []], ids=["one organ", "no positive pair", "no organ"])
def test_no_positive_pair_is_a_zero_with_graph_and_counted(labels):
    head = ProjectionHead(8, 16, 4)
    z = head(torch.randn(len(labels), 8))
    criterion = SupConLoss()
    loss, statistics = criterion(z, torch.tensor(labels, dtype=torch.long), with_statistics=True)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters())
    assert (statistics["anchors"].item(), statistics["rows"].item()) == (0, len(labels))
    _, statistics = criterion(F.normalize(torch.randn(3, 4), dim=1), torch.tensor([5, 5, 1]), with_statistics=True)
    assert (statistics["anchors"].item(), statistics["rows"].item()) == (2, 3)   # the two 5s have a positive
    assert not list(criterion.buffers())                                          # no state kept between calls


def test_one_organ_in_every_patch_is_finite():
    z = F.normalize(torch.randn(4, 8), dim=1).requires_grad_()
    loss = SupConLoss()(z, torch.tensor([2, 2, 2, 2]))  # all positives, no negatives
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()
    assert abs(loss.item() - reference_supcon(z.detach(), [2, 2, 2, 2], 0.07)) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_autocast_is_computed_in_float32(dtype):
    g = torch.Generator().manual_seed(4)
    z32 = F.normalize(torch.randn(12, 32, generator=g), dim=1)
    labels = torch.randint(1, 4, (12,), generator=g)
    z = z32.to(dtype).requires_grad_()
    with torch.autocast("cpu", dtype=dtype):
        loss = SupConLoss(0.05)(z, labels)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and torch.isfinite(z.grad).all()
    assert abs(loss.item() - reference_supcon(z.detach().float(), labels.tolist(), 0.05)) < 1e-4


def test_projection_head_outputs_unit_vectors():
    out = ProjectionHead(10, 32, 7)(torch.randn(5, 10) * 100)
    assert out.shape == (5, 7)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(5))


def test_temperature_must_be_positive():
    with pytest.raises(ValueError, match="temperature"):
        SupConLoss(0.0)


# ---------------------------------------------------------------- intensity-weighted negatives (DCC)
@pytest.mark.parametrize("seed,n,channels,t", [(0, 7, 1, 0.07), (1, 15, 1, 0.2), (2, 11, 2, 0.07)])
def test_intensity_weighted_equals_loop_reference(seed, n, channels, t):
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(n, 16, generator=g), dim=1)
    labels = torch.randint(1, 5, (n,), generator=g)
    intensity_range = [4.0, 2.5][:channels]
    intensities = torch.rand(n, channels, generator=g) * 5 - 2      # some pairs differ by more than R: w = 0
    loss = IntensityWeightedSupConLoss(intensity_range, t)(z, labels, intensities)
    reference = reference_intensity_weighted(z, labels.tolist(), intensities.tolist(), intensity_range, t)
    assert abs(loss.item() - reference) < 1e-5
    assert abs(reference - reference_supcon(z, labels.tolist(), t)) > 1e-3   # the weights do change the loss


def test_equal_intensities_give_plain_supcon():
    g = torch.Generator().manual_seed(5)
    z = F.normalize(torch.randn(10, 8, generator=g), dim=1)
    labels = torch.randint(1, 4, (10,), generator=g)
    weighted = IntensityWeightedSupConLoss([3.0], 0.1)(z, labels, torch.full((10, 1), 0.7))
    assert abs(weighted.item() - SupConLoss(0.1)(z, labels).item()) < 1e-6


def test_a_negative_at_the_far_end_of_the_range_is_not_pushed():
    """w = 0: the pair's term in the denominator is exp(0), so the negative gets no gradient from that anchor."""
    z = F.normalize(torch.randn(3, 4, dtype=torch.float64), dim=1).requires_grad_()
    labels = torch.tensor([1, 1, 2])
    intensities = torch.tensor([[0.0], [0.0], [2.0]])                # organ 2 lies 2 = R away: w = 0
    loss = IntensityWeightedSupConLoss([2.0], 0.1)(z, labels, intensities)
    (grad,) = torch.autograd.grad(loss, z)
    assert grad[2].abs().max().item() == 0.0 and grad[0].abs().max().item() > 0
    intensities[2] = 0.0                                               # same intensity: pushed as in SupCon
    (grad,) = torch.autograd.grad(IntensityWeightedSupConLoss([2.0], 0.1)(z, labels, intensities), z)
    assert grad[2].abs().max().item() > 0


def test_intensity_weighted_gradient_matches_autograd_of_reference_formula():
    g = torch.Generator().manual_seed(6)
    z = F.normalize(torch.randn(9, 5, generator=g, dtype=torch.float64), dim=1).requires_grad_()
    labels = torch.tensor([1, 1, 2, 2, 3, 3, 3, 4, 4])
    m = torch.rand(9, 1, generator=g, dtype=torch.float64) * 3
    t, R = 0.1, 3.0
    (grad,) = torch.autograd.grad(IntensityWeightedSupConLoss([R], t)(z, labels, m), z)
    sim = z @ z.T / t
    terms = []
    for i in range(9):
        others = [a for a in range(9) if a != i]
        scale = torch.tensor([1.0 if labels[a] == labels[i] else max(0.0, 1 - abs(float(m[i] - m[a])) / R)
                              for a in others], dtype=torch.float64)
        pos = [p for p in others if labels[p] == labels[i]]
        terms.append(-(sim[i, pos] - torch.logsumexp(sim[i, others] * scale, 0)).mean())
    (ref_grad,) = torch.autograd.grad(torch.stack(terms).mean(), z)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-4, atol=1e-6)


def test_contrast_correlation_by_hand():
    m = torch.tensor([[0.0, 1.0], [1.0, 1.0], [4.0, -3.0]])
    w = contrast_correlation(m, torch.tensor([2.0, 4.0]))
    # pairs: (0,1): mean(|0-1|/2, 0) = 0.25 -> 0.75; (0,2): mean(2, 1) -> clamp(-0.5) = 0; (1,2): mean(1.5, 1) -> 0
    torch.testing.assert_close(w, torch.tensor([[1.0, 0.75, 0.0], [0.75, 1.0, 0.0], [0.0, 0.0, 1.0]]))
    with pytest.raises(ValueError, match="intensity_range must be > 0"):
        contrast_correlation(m, torch.tensor([2.0, 0.0]))
    with pytest.raises(ValueError, match=r"intensities must be \[N, C\]"):
        contrast_correlation(m, torch.tensor([2.0]))


def test_ct_intensity_range_from_plans_and_refusal_of_other_normalizations():
    props = {"0": {"percentile_00_5": -1000.0, "percentile_99_5": 1400.0, "std": 300.0, "mean": 50.0},
             "1": {"percentile_00_5": 0.0, "percentile_99_5": 10.0, "std": 2.0, "mean": 5.0}}
    assert normalized_ct_intensity_range(["CTNormalization"], props) == (8.0,)
    with pytest.raises(ValueError, match="channel 1 is normalized with ZScoreNormalization"):
        normalized_ct_intensity_range(["CTNormalization", "ZScoreNormalization"], props)
