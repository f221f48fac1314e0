"""Config groups of the shift-aware views: `fourier` (SSA-CLR's augmentation, our reading) and `rsa`."""
from __future__ import annotations

from dataclasses import dataclass, field

from sharpshift.errors import UserError

FOURIER_VARIANTS = ("mix", "swap", "scale")


@dataclass
class FourierConfig:
    """Fourier amplitude augmentation on the [0, 1] views, after the usual augmentations, before normalising.

    SSA-CLR does not publish its recipe; this is our reading (FACT's amplitude mix, APR's swap)."""

    enabled: bool = False
    variant: str = "mix"  # mix: lam ~ U(0, alpha); swap: lam = 1 (APR); scale: amplitude x U(1-alpha, 1+alpha)
    alpha: float = 1.0  # strength, in [0, 1]
    p: float = 0.5  # probability per image and view
    views: list[int] = field(default_factory=lambda: [0, 1])  # view indices it applies to (with rsa: 0, 1 = aggressive)

    def check(self) -> None:
        if self.variant not in FOURIER_VARIANTS:
            raise UserError(f"unknown fourier.variant {self.variant!r}; use one of {', '.join(FOURIER_VARIANTS)}")
        if not 0 <= self.alpha <= 1:
            raise UserError(f"fourier.alpha must be in [0, 1], got {self.alpha}")
        if not 0 <= self.p <= 1:
            raise UserError(f"fourier.p must be a probability in [0, 1], got {self.p}")
        if any(i < 0 for i in self.views):
            raise UserError(f"fourier.views must hold view indices >= 0, got {list(self.views)}")


@dataclass
class RSAConfig:
    """RSA (Bai et al., NeurIPS 2022): weak views to the target, aggressive views to the online network, and a
    decaying weight beta_k on the aggressive-aggressive pairs. BYOL as in the paper; SimCLR and MoCo are our
    generalisation (docs/shift.md)."""

    enabled: bool = False
    beta_base: float = 0.3  # paper: 0.3 CIFAR-10/100, 0.4 STL-10 / Tiny-ImageNet / ImageNet
    schedule: str = "cosine"  # cosine: beta_base * (1 + cos(pi k / K)) / 2 per step (Eq. 6); constant: beta_base
    # one-channel images only (ours): the aggressive stage's stand-ins for saturation, hue and grayscale
    gray_gamma: float = 0.6  # gamma curve x^k, log k ~ U(+-log(1 + gray_gamma)), with views.jitter_p
    gray_solarize_p: float = 0.2  # solarisation probability

    def check(self) -> None:
        if not 0 <= self.beta_base <= 1:
            raise UserError(f"rsa.beta_base must be in [0, 1], got {self.beta_base}")
        if self.gray_gamma < 0 or not 0 <= self.gray_solarize_p <= 1:
            raise UserError(f"rsa.gray_gamma must be >= 0 and rsa.gray_solarize_p in [0, 1], got {self.gray_gamma} "
                            f"and {self.gray_solarize_p}")
        if self.schedule not in ("cosine", "constant"):
            raise UserError(f"unknown rsa.schedule {self.schedule!r}; use cosine or constant")
