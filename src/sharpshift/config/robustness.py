"""Config group `robustness`: what `sharpshift evaluate RUN --robustness` measures.

Kept free of torch so that config validation stays cheap. Nothing here changes training; the values
are saved with the run's config and can be overridden on the evaluate command line
(`sharpshift evaluate RUN --robustness robustness.pgd_steps=20`)."""
from __future__ import annotations

from dataclasses import dataclass, field

from sharpshift.errors import UserError

# The corruption types of sharpshift.evaluation.corruptions (a test checks they agree), CIFAR-10-C's
# names where it has the type. All of them make sense for both 1- and 3-channel images.
CORRUPTION_NAMES = (
    "gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise",
    "gaussian_blur", "defocus_blur", "motion_blur", "zoom_blur",
    "contrast", "brightness", "fog", "frost",
    "elastic_transform", "pixelate", "jpeg_compression",
)


@dataclass
class RobustnessConfig:
    corruptions: list[str] = field(default_factory=list)  # empty: all of CORRUPTION_NAMES
    severities: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    test_subset: int = 0  # corrupt this many test images (0: the run's whole test split)
    probe_train_subset: int = 0  # fit the probe on this many train images (0: all, as `sharpshift evaluate`)
    seed: int = 0  # corruption noise and the PGD random start
    epsilons: list[float] = field(default_factory=lambda: [1.0, 2.0, 4.0, 8.0])  # L-inf radii in units of 1/255
    adversarial_subset: int = 1000  # attack this many test images (0: all; attacks cost ~pgd_steps backward passes)
    pgd_steps: int = 10
    pgd_step_ratio: float = 2.5  # PGD step = ratio * eps / steps (Madry et al.'s choice)
    pgd_random_start: bool = True
    batch_size: int = 512  # feature extraction and attacks (speed and memory only for the corruptions)

    def names(self) -> list[str]:
        return list(self.corruptions) or list(CORRUPTION_NAMES)

    def check(self) -> None:
        unknown = [c for c in self.corruptions if c not in CORRUPTION_NAMES]
        if unknown:
            raise UserError(f"unknown robustness.corruptions {unknown}; use names from {', '.join(CORRUPTION_NAMES)}")
        if not self.severities or any(s not in (1, 2, 3, 4, 5) for s in self.severities):
            raise UserError(f"robustness.severities must be a non-empty list drawn from 1..5, got {self.severities}")
        if any(e < 0 for e in self.epsilons):
            raise UserError(f"robustness.epsilons must be >= 0 (units of 1/255), got {self.epsilons}")
        if min(self.test_subset, self.adversarial_subset, self.probe_train_subset) < 0:
            raise UserError("robustness.test_subset, adversarial_subset and probe_train_subset must be >= 0 (0 = all)")
        if self.pgd_steps < 1 or self.pgd_step_ratio <= 0:
            raise UserError(f"robustness.pgd_steps must be >= 1 and pgd_step_ratio > 0, got {self.pgd_steps}, "
                            f"{self.pgd_step_ratio}")
        if self.batch_size < 1:
            raise UserError(f"robustness.batch_size must be >= 1, got {self.batch_size}")
