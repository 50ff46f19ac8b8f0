"""SupConLoss against a slow loop written straight from the formula in docs/method (L_out form)."""
import math

import pytest
import torch
from torch.nn import functional as F

from nnunet_sacl.heads import ProjectionHead
from nnunet_sacl.losses import SupConLoss


def reference_supcon(z, labels, t):
    z = z.double()
    n = len(labels)
    per_anchor = []
    for i in range(n):
        positives = [p for p in range(n) if p != i and labels[p] == labels[i]]
        if not positives:
            continue
        denominator = sum(math.exp(float(z[i] @ z[a]) / t) for a in range(n) if a != i)
        per_anchor.append(-sum(math.log(math.exp(float(z[i] @ z[p]) / t) / denominator) for p in positives)
                          / len(positives))
    return sum(per_anchor) / len(per_anchor) if per_anchor else 0.0


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
    loss = criterion(z, torch.tensor(labels, dtype=torch.long))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters())
    assert criterion.batches_without_positive.item() == 1
    criterion(F.normalize(torch.randn(2, 4), dim=1), torch.tensor([5, 5]))
    assert criterion.batches_without_positive.item() == 1  # a batch with positives is not counted


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
