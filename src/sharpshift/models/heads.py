"""Projector and predictor MLPs: Linear-BN-ReLU blocks, a plain Linear last (optionally BN'd); several heads."""
from __future__ import annotations

import torch
from torch import nn


def mlp(in_dim: int, hidden_dim: int, out_dim: int, layers: int = 2, last_bn: bool = False) -> nn.Sequential:
    """`layers` Linear layers; BN+ReLU after every one but the last; BN (no affine) after the last if asked."""
    mods: list[nn.Module] = []
    dim = in_dim
    for _ in range(layers - 1):
        mods += [nn.Linear(dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
        dim = hidden_dim
    mods.append(nn.Linear(dim, out_dim, bias=not last_bn))
    if last_bn:
        mods.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*mods)


class MultiHead(nn.Module):
    """C heads of the same architecture with independent weights. Input (n, d): every head reads it;
    input (n, C, d): head c reads [:, c] (a per-head predictor after per-head projectors). Output (n, C, d')."""

    def __init__(self, heads: list[nn.Module]):
        super().__init__()
        self.heads = nn.ModuleList(heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 2:
            return torch.stack([head(x) for head in self.heads], dim=1)
        return torch.stack([head(x[:, c]) for c, head in enumerate(self.heads)], dim=1)
