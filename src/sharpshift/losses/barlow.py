"""Barlow Twins: push the cross-correlation of the two views' standardised embeddings to identity."""
from __future__ import annotations

import torch

from sharpshift.losses.dist import gather
from sharpshift.losses.precision import fp32


@fp32
def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float, scale: float = 1.0) -> torch.Tensor:
    """scale * [sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2], C over the global batch.
    Every process computes the same global loss from gathered embeddings."""
    z1, z2 = gather(z1.float()), gather(z2.float())
    n = z1.shape[0]
    z1 = (z1 - z1.mean(0)) / z1.std(0, unbiased=False).clamp_min(1e-6)
    z2 = (z2 - z2.mean(0)) / z2.std(0, unbiased=False).clamp_min(1e-6)
    c = z1.T @ z2 / n
    diag = torch.diagonal(c)
    on = (1 - diag).pow(2).sum()
    off = c.pow(2).sum() - diag.pow(2).sum()
    return scale * (on + lambd * off)
