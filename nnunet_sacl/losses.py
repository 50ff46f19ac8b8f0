"""Supervised contrastive loss over organ embeddings."""
import torch
from torch import nn

from nnunet_sacl.distributed import gather_embeddings, is_distributed


class SupConLoss(nn.Module):
    """Supervised contrastive loss, L_out form (Khosla et al. 2020), with organ identity as the label.

    For L2-normalised z_i with labels y_i (all organs of all patches, and of all ranks under DDP)::

        L = mean_{i: |P(i)| > 0}  -1/|P(i)| sum_{p in P(i)} log( exp(z_i.z_p / t) / sum_{a != i} exp(z_i.z_a / t) )

    with P(i) = {p != i : y_p = y_i}. Anchors without a positive are skipped; a batch in which no anchor has one
    gives a zero that keeps its graph (training goes on) and increments ``batches_without_positive``. Computed
    in float32 even under autocast (float16 overflows for small t). The counter is a device tensor, so the loss
    never synchronises with the host.
    """

    def __init__(self, temperature: float = 0.07, gather_distributed: bool = True):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.gather_distributed = gather_distributed
        self.register_buffer("batches_without_positive", torch.zeros((), dtype=torch.long), persistent=False)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.gather_distributed and is_distributed():
            embeddings, labels = gather_embeddings(embeddings, labels)
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            z = embeddings.float()
            n = z.shape[0]
            self_pair = torch.eye(n, dtype=torch.bool, device=z.device)
            # a large finite negative (not -inf) keeps rows without any other entry finite, gradients included
            logits = (z @ z.T / self.temperature).masked_fill(self_pair, -1e9)
            log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
            positive = (labels[:, None] == labels[None, :]) & ~self_pair
            num_positive = positive.sum(1)
            has_positive = num_positive > 0
            mean_log_prob_pos = log_prob.masked_fill(~positive, 0).sum(1) / num_positive.clamp_min(1)
            num_anchors = has_positive.sum()
            loss = (-mean_log_prob_pos * has_positive).sum() / num_anchors.clamp_min(1)
        self.batches_without_positive += (num_anchors == 0).to(self.batches_without_positive.device)
        return loss
