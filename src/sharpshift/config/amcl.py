"""Config group `amcl`: Adaptive Multi-head Contrastive Learning (Wang et al., ECCV 2024), off by default."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from sharpshift.errors import UserError

DEFAULT_BETA = {"barlow": 1e-6}  # every other method: 1e-4 (the official code's defaults)


@dataclass
class AMCLConfig:
    """C projection heads and one shared temperature network phi giving every pair its own temperature
    tau = tau_min + (tau_max - tau_min) * sigmoid(-phi(z_a) . phi(z_b)). Defaults: the official v2.0 code."""

    enabled: bool = False
    heads: int = 3  # C independent projection heads (the base method's architecture), loss summed over heads
    tau_min: float = 1e-5
    tau_max: float = 2.0
    beta: Optional[float] = None  # weight of the temperature regulariser; null = 1e-4 (1e-6 for barlow)
    topk: int = 100  # simclr, moco: mean over the k most similar negatives (all when fewer)
    phi_hidden: int = 128  # hidden width of phi (d -> phi_hidden -> d; barlow: batch -> phi_hidden -> batch)

    def check(self) -> None:
        if self.heads < 1:
            raise UserError(f"amcl.heads must be >= 1, got {self.heads}")
        if not 0 < self.tau_min < self.tau_max:
            raise UserError(f"amcl needs 0 < tau_min < tau_max, got tau_min={self.tau_min}, tau_max={self.tau_max}")
        if self.beta is not None and self.beta < 0:
            raise UserError(f"amcl.beta must be >= 0 (or null for the method default), got {self.beta}")
        if self.topk < 1:
            raise UserError(f"amcl.topk must be >= 1, got {self.topk}")
        if self.phi_hidden < 1:
            raise UserError(f"amcl.phi_hidden must be >= 1, got {self.phi_hidden}")

    def resolved_beta(self, method: str) -> float:
        return self.beta if self.beta is not None else DEFAULT_BETA.get(method, 1e-4)
