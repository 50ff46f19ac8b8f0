"""Phase 1's validation score: leave-one-out nearest-neighbour organ classification, against a loop over pairs."""
import torch

from nnunet_sacl.method.neighbours import nearest_neighbour_counts


def reference_counts(z, labels, num_classes):
    """Each row's most similar other row (cosine, plain Python loops); per class 1..num_classes-1 tp, fp, fn."""
    n = len(labels)
    predicted = []
    for i in range(n):
        best = max((j for j in range(n) if j != i), key=lambda j: float(torch.dot(z[i], z[j])))
        predicted.append(labels[best])
    tp = [sum(p == t == c for p, t in zip(predicted, labels)) for c in range(1, num_classes)]
    fp = [sum(p == c != t for p, t in zip(predicted, labels)) for c in range(1, num_classes)]
    fn = [sum(t == c != p for p, t in zip(predicted, labels)) for c in range(1, num_classes)]
    return tp, fp, fn


def test_counts_equal_a_loop_over_pairs():
    g = torch.Generator().manual_seed(0)
    labels = [1, 1, 2, 2, 3, 3, 1, 2]
    # organs form loose clusters around their own direction, one embedding of organ 2 sits near organ 1's
    centres = torch.nn.functional.normalize(torch.randn(4, 16, generator=g), dim=1)
    z = torch.stack([centres[c] + 0.6 * torch.randn(16, generator=g) for c in labels])
    z[7] = centres[1] + 0.05 * torch.randn(16, generator=g)
    z = torch.nn.functional.normalize(z, dim=1)
    tp, fp, fn = nearest_neighbour_counts(z, torch.tensor(labels), num_classes=5)
    expected = reference_counts(z, labels, 5)
    assert (tp.tolist(), fp.tolist(), fn.tolist()) == expected
    assert sum(expected[0]) < len(labels) and sum(expected[0]) > 0      # neither all right nor all wrong
    assert tp[3] == fp[3] == fn[3] == 0                                  # organ 4 absent from the batch


def test_fewer_than_two_embeddings_classify_nothing():
    for n in (0, 1):
        counts = nearest_neighbour_counts(torch.ones(n, 4), torch.ones(n, dtype=torch.long), num_classes=3)
        assert [c.tolist() for c in counts] == [[0, 0]] * 3
