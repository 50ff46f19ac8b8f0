"""The semantic-aware projection head."""
import torch
from torch import nn
from torch.nn import functional as F


class ProjectionHead(nn.Module):
    """MLP from pooled organ features to the unit sphere: ``z = normalize(W2 relu(W1 e + b1) + b2)``.

    As in SupCon and the SACL paper (Linear-ReLU-Linear, then L2 normalisation). Used only during
    pretraining and discarded afterwards: only the encoder is handed on.
    """

    def __init__(self, in_channels: int, hidden_channels: int = 512, out_channels: int = 128):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_channels, hidden_channels), nn.ReLU(inplace=True),
                                 nn.Linear(hidden_channels, out_channels))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(embeddings), dim=1)
