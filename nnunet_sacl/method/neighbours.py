"""How well organ embeddings cluster: leave-one-out nearest-neighbour organ classification within a batch."""
import torch


def nearest_neighbour_counts(z: torch.Tensor, labels: torch.Tensor, num_classes: int):
    """Each embedding (rows of ``z``, unit vectors) is given the organ of its most similar other embedding (cosine);
    returns per-class true positives, false positives and false negatives of that classification for classes
    ``1 .. num_classes - 1`` (index 0 is class 1: the background never has an embedding).

    ``2 tp / (2 tp + fp + fn)`` is then the F1 score of the classification per organ, which nnU-Net computes from
    these counts as its pseudo Dice. With fewer than two embeddings nothing is classified (all counts 0)."""
    zeros = torch.zeros(num_classes - 1, dtype=torch.long, device=z.device)
    if z.shape[0] < 2:
        return zeros, zeros.clone(), zeros.clone()
    similarity = z.float() @ z.float().T
    similarity.fill_diagonal_(float("-inf"))
    predicted = labels[similarity.argmax(1)]
    classes = torch.arange(1, num_classes, device=z.device)[:, None]
    is_true, is_predicted = labels[None] == classes, predicted[None] == classes
    tp = (is_true & is_predicted).sum(1)
    return tp, (is_predicted & ~is_true).sum(1), (is_true & ~is_predicted).sum(1)
