"""Supervised contrastive loss over organ embeddings, optionally with intensity-weighted negatives (DCC)."""
from typing import Optional, Sequence

import torch
from torch import nn

from nnunet_sacl.method.contrast_correlation import contrast_correlation
from nnunet_sacl.method.distributed import gather_embeddings, is_distributed


class SupConLoss(nn.Module):
    """Supervised contrastive loss, L_out form (Khosla et al. 2020), with organ identity as the label.

    For L2-normalised z_i with labels y_i (all organs of all patches, and of all ranks under DDP)::

        L = mean_{i: |P(i)| > 0}  -1/|P(i)| sum_{p in P(i)} log( exp(z_i.z_p / t) / sum_{a != i} exp(z_i.z_a / t) )

    with P(i) = {p != i : y_p = y_i}. Anchors without a positive are skipped; a batch in which no anchor has one
    gives a zero that keeps its graph (training goes on). Computed in float32 even under autocast (float16
    overflows for small t). The loss keeps no state: ``with_statistics=True`` also returns the batch's statistics,
    ``{"anchors": rows with a positive, "rows": rows}`` (of the gathered batch under DDP), as device tensors, so
    that the loss never synchronises with the host; a batch without a positive pair has 0 anchors.
    """

    def __init__(self, temperature: float = 0.07, gather_distributed: bool = True):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.gather_distributed = gather_distributed

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, with_statistics: bool = False):
        if self.gather_distributed and is_distributed():
            embeddings, labels = gather_embeddings(embeddings, labels)
        return self.loss(embeddings, labels, with_statistics=with_statistics)

    def loss(self, embeddings: torch.Tensor, labels: torch.Tensor, negative_weights: Optional[torch.Tensor] = None,
             with_statistics: bool = False):
        """The loss of already gathered rows (and, ``with_statistics``, the batch's statistics);
        ``negative_weights`` [N, N] scales the logits of negative pairs in the denominator
        (``IntensityWeightedSupConLoss``)."""
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            z = embeddings.float()
            n = z.shape[0]
            self_pair = torch.eye(n, dtype=torch.bool, device=z.device)
            positive = (labels[:, None] == labels[None, :]) & ~self_pair
            logits = z @ z.T / self.temperature
            denominator_logits = logits if negative_weights is None else \
                torch.where(positive | self_pair, logits, logits * negative_weights)
            # a large finite negative (not -inf) keeps rows without any other entry finite, gradients included
            denominator_logits = denominator_logits.masked_fill(self_pair, -1e9)
            log_prob = logits - torch.logsumexp(denominator_logits, dim=1, keepdim=True)
            num_positive = positive.sum(1)
            has_positive = num_positive > 0
            mean_log_prob_pos = log_prob.masked_fill(~positive, 0).sum(1) / num_positive.clamp_min(1)
            num_anchors = has_positive.sum()
            loss = (-mean_log_prob_pos * has_positive).sum() / num_anchors.clamp_min(1)
        if with_statistics:
            return loss, {"anchors": num_anchors, "rows": torch.tensor(n, device=z.device)}
        return loss


class IntensityWeightedSupConLoss(SupConLoss):
    """SupCon with intensity-weighted negatives (DCC; Lee et al. 2022, the SACL authors' follow-up).

    Each negative pair's logit in the denominator is scaled by the organs' contrast correlation
    ``w_ia = 1 - |m_i - m_a| / R`` (``contrast_correlation``; m: the organ's mean input intensity in the patch)::

        L_i = -1/|P(i)| sum_{p in P(i)} log( exp(z_i.z_p / t) /
                  ( sum_{p' in P(i)} exp(z_i.z_p' / t) + sum_{a in N(i)} exp(w_ia * z_i.z_a / t) ) )

    so a negative pair has the temperature t / w_ia: organs of alike intensity (w = 1) repel as in SupCon, organs
    that intensity already separates (w -> 0) hardly at all. All w = 1 is exactly ``SupConLoss``.
    The authors' code scales every pair of the denominator, but its only positive is the other view of the same
    organ patch (w = 1 up to augmentation); with organ labels, positives come from other patients and phases, so
    only negatives are weighted here and SupCon's positives stay as they are.
    """

    def __init__(self, intensity_range: Sequence[float], temperature: float = 0.07, gather_distributed: bool = True):
        super().__init__(temperature, gather_distributed)
        self.register_buffer("intensity_range", torch.as_tensor(intensity_range, dtype=torch.float32).reshape(-1),
                             persistent=False)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, intensities: torch.Tensor,
                with_statistics: bool = False):
        """intensities: ``[N, C]`` mean input intensity of each row's organ (``pooling.organ_mean_intensity``)."""
        if self.gather_distributed and is_distributed():
            embeddings, labels, intensities = gather_embeddings(embeddings, labels, intensities)
        return self.loss(embeddings, labels, contrast_correlation(intensities, self.intensity_range),
                         with_statistics=with_statistics)
