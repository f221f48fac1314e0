"""Config group `amcl`: Adaptive Multi-head Contrastive Learning (Wang et al., ECCV 2024), off by default."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from sharpshift.errors import UserError

DEFAULT_BETA = {"barlow": 1e-6}  # official form, every other method: 1e-4 (the official code's defaults)
FORMS = ("adaptive", "official")


@dataclass
class AMCLConfig:
    """C projection heads and one shared temperature network phi giving every pair its own temperature
    tau = tau_min + (tau_max - tau_min) * sigmoid(-phi(z_a) . phi(z_b)). Defaults: the official v2.0 code, but
    for `form`: the official losses drive every temperature to tau_min (docs/amcl.md), so the default is our
    working form, in which each temperature is fitted to its pair and has an interior optimum."""

    enabled: bool = False
    form: str = "adaptive"  # adaptive (ours, sharpshift.amcl.adaptive) or official (the v2.0 losses, bit for bit)
    heads: int = 3  # C independent projection heads (the base method's architecture), loss summed over heads
    tau_min: float = 1e-5
    tau_max: float = 2.0
    beta: Optional[float] = None  # weight of the temperature regulariser; null: official 1e-4 (1e-6 barlow), adaptive 1
    topk: int = 100  # official simclr, moco: mean over the k most similar negatives (adaptive: all, in a log-sum-exp)
    phi_hidden: int = 128  # hidden width of phi (d -> phi_hidden -> d; barlow: batch -> phi_hidden -> batch)
    phi_lr: Optional[float] = None  # null: the encoder's optimiser trains phi (official); a number: phi's own Adam
    kappa: float = 2.0  # adaptive: the fit's optimum is tau* = (1 - s + delta) / kappa (kappa 2: s = 0.6 -> 0.25)
    delta: Optional[float] = None  # adaptive: tau* >= delta / kappa when s -> 1; null: 0.1, barlow 1.0 (docs/amcl.md)

    def check(self) -> None:
        if self.form not in FORMS:
            raise UserError(f"unknown amcl.form {self.form!r}; use adaptive (ours, the default) or official")
        if self.kappa <= 0 or (self.delta is not None and self.delta <= 0):
            raise UserError(f"amcl.kappa and amcl.delta must be > 0, got {self.kappa} and {self.delta}")
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
        if self.phi_lr is not None and self.phi_lr <= 0:
            raise UserError(f"amcl.phi_lr must be > 0 (or null: the encoder's optimiser trains phi), got {self.phi_lr}")

    def resolved_delta(self, method: str) -> float:
        """Barlow Twins: 1.0, so its weights 1/tau stay within 3x of each other (with 0.1 they span 20x, which cost
        2.7 points of toy kNN accuracy; docs/amcl.md)."""
        if self.delta is not None:
            return self.delta
        return 1.0 if method == "barlow" else 0.1

    def resolved_beta(self, method: str) -> float:
        """Official: the weight of the regulariser (1e-4, 1e-6 for barlow). Adaptive: the weight of the fit, which
        only phi sees, so it scales phi's learning rate alone: 1."""
        if self.beta is not None:
            return self.beta
        return DEFAULT_BETA.get(method, 1e-4) if self.form == "official" else 1.0
