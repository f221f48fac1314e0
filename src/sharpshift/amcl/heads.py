"""AMCL's two modules: C independent projection heads, and the temperature network phi shared by all heads."""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

if TYPE_CHECKING:
    from sharpshift.config import Config


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


class TemperatureNet(nn.Module):
    """phi: d -> hidden -> d with a ReLU, always in fp32. A pair's score is phi(a) . phi(b); the losses map it
    to tau = tau_min + (tau_max - tau_min) * sigmoid(-score) (amcl.losses.pair_temperature)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.float())


def projection_heads(cfg: "Config", make_head: Callable[[], nn.Module]) -> nn.Module:
    """The base method's head, or, with amcl on, C independent heads of the same architecture."""
    if not cfg.amcl.enabled:
        return make_head()
    return MultiHead([make_head() for _ in range(cfg.amcl.heads)])


def temperature_net(cfg: "Config") -> TemperatureNet | None:
    """phi, or None with amcl off. It reads d'-dim normalised embeddings, except for Barlow Twins, where it reads
    a channel's values over the (per-process) batch, so its width is data.batch_size (fixed: the last
    incomplete batch is dropped)."""
    if not cfg.amcl.enabled:
        return None
    dim = cfg.data.batch_size if cfg.method.name == "barlow" else cfg.method.proj_output_dim
    return TemperatureNet(dim, cfg.amcl.phi_hidden)
