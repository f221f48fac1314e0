"""BYOL and SimSiam: predict a stop-gradient target with cosine similarity."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from sharpshift.losses.precision import fp32


@fp32
def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """2 - 2 cos(p, sg(z)), averaged over the batch (BYOL eq. 2)."""
    return (2 - 2 * F.cosine_similarity(p.float(), z.detach().float(), dim=1)).mean()


@fp32
def simsiam_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """-cos(p, sg(z)), averaged over the batch (SimSiam's D)."""
    return -F.cosine_similarity(p.float(), z.detach().float(), dim=1).mean()
