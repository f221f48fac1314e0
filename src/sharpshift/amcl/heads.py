"""AMCL's two modules, registered with sharpshift.plugins: C independent projection heads (every head a method
builds through SSLMethod.head becomes a MultiHead), and the temperature network phi shared by all heads."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from sharpshift import plugins
from sharpshift.models.heads import MultiHead


class TemperatureNet(nn.Module):
    """phi: d -> hidden -> d with a ReLU, always in fp32. A pair's score is phi(a) . phi(b); the losses map it
    to tau = tau_min + (tau_max - tau_min) * sigmoid(-score) (amcl.losses.pair_temperature).

    With `lr` (amcl.phi_lr) phi has its own Adam, without weight decay and outside the encoder's gradient clip;
    without it the encoder's optimiser trains phi, as in the official code. Under LARS that erases phi: its
    gradient is far below weight decay x w, so the trust ratio turns every update into a shrink of
    lr x eta x ||w|| (docs/amcl.md, "phi under LARS")."""

    def __init__(self, dim: int, hidden: int, lr: float | None = None):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim))
        self.lr = lr

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.float())

    def build_optimizer(self) -> torch.optim.Optimizer | None:
        return torch.optim.Adam(self.parameters(), lr=self.lr) if self.lr else None


def projection_heads(cfg, make_head: Callable[[], nn.Module]) -> nn.Module:
    """C independent heads of the same architecture, in place of the method's one."""
    return MultiHead([make_head() for _ in range(cfg.amcl.heads)])


def temperature_net(cfg) -> dict[str, nn.Module]:
    """phi, carried by the method as `amcl_phi`. It reads d'-dim normalised embeddings, except for Barlow Twins,
    where it reads a channel's values over the (per-process) batch, so its width is data.batch_size (fixed: the
    last incomplete batch is dropped)."""
    dim = cfg.data.batch_size if cfg.method.name == "barlow" else cfg.method.proj_output_dim
    return {"amcl_phi": TemperatureNet(dim, cfg.amcl.phi_hidden, cfg.amcl.phi_lr)}


plugins.HEADS["amcl"] = projection_heads
plugins.MODULES["amcl"] = temperature_net
