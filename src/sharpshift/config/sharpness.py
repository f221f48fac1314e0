"""Config groups of the sharpness add-ons: `sam` (SAM/ASAM stepper), `saf` and `mesa` (trajectory regularisers).

All are off by default. Values the papers do not fix for self-supervised learning are our choices and are
marked as such; docs/sharpness.md says why."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from sharpshift.errors import UserError

PERTURB_CHOICES = ("extractor", "all")
BUFFER_DTYPES = ("float32", "float16")
TRAJECTORY_FORMS = ("normalised", "logits")
DEFAULT_TEMPERATURE = {"normalised": 0.1, "logits": 5.0}


@dataclass
class SAMConfig:
    """SAM (Foret et al., 2021) or ASAM (Kwon et al., 2021) as a two-pass stepper.

    SSA-CLR's reading (default): perturb the feature extractor (the backbone) only."""

    enabled: bool = False
    adaptive: bool = False  # ASAM: eps = rho * T^2 g / ||T g||, T = |w| + eta for weights, 1 for biases
    rho: Optional[float] = None  # null: 0.05 (SAM's CIFAR default) or 0.5 (ASAM's CIFAR-10 default)
    eta: float = 0.01  # ASAM only
    perturb: str = "extractor"  # extractor (backbone only, SSA-CLR) or all (every trainable parameter)

    def resolved_rho(self) -> float:
        if self.rho is not None:
            return self.rho
        return 0.5 if self.adaptive else 0.05

    def check(self) -> None:
        if self.rho is not None and self.rho <= 0:
            raise UserError(f"sam.rho must be > 0 (or null for the default), got {self.rho}")
        if self.eta < 0:
            raise UserError(f"sam.eta must be >= 0, got {self.eta}")
        if self.perturb not in PERTURB_CHOICES:
            raise UserError(f"unknown sam.perturb {self.perturb!r}; use extractor or all")


def _check_trajectory(group: str, weight: float, temperature: float | None, start_epoch: int, form: str) -> None:
    if form not in TRAJECTORY_FORMS:
        raise UserError(f"unknown {group}.form {form!r}; use normalised (the default) or logits (the paper's form)")
    if weight < 0:
        raise UserError(f"{group}.weight must be >= 0, got {weight}")
    if temperature is not None and temperature <= 0:
        raise UserError(f"{group}.temperature must be > 0, got {temperature}")
    if start_epoch < -1:
        raise UserError(f"{group}.start_epoch must be -1 (30% of trainer.max_epochs) or >= 0, got {start_epoch}")


def resolved_temperature(cfg) -> float:
    return cfg.temperature if cfg.temperature is not None else DEFAULT_TEMPERATURE[cfg.form]


def auto_start_epoch(start_epoch: int, max_epochs: int) -> int:
    """-1 means 30% of training (the SAF README's advice for short runs), rounded down."""
    return int(0.3 * max_epochs) if start_epoch < 0 else start_epoch


@dataclass
class SAFConfig:
    """SAF (Du et al., NeurIPS 2022) for SSL, our form: the projector output is the logit vector, and each
    sample's output E epochs ago (a per-sample ring buffer) is the target of a KL term."""

    enabled: bool = False
    # normalised (ours, the default): softmax over the L2-normalised projector output / tau, so shrinking z cannot
    # lower the term; logits: softmax(z / tau) x tau^2 as the official code, which SSL escapes by shrinking z
    form: str = "normalised"
    weight: float = 0.3  # lambda (paper: 0.3)
    temperature: Optional[float] = None  # tau; null: 0.1 normalised, 5 logits (paper: 5, with the tau^2 scale)
    epochs_ago: int = 3  # E (paper: 3; the official run.sh uses 2). Needs > E epochs of training to act
    start_epoch: int = -1  # the term is on from this epoch (0-based); -1: 30% of trainer.max_epochs
    buffer_dtype: str = "float32"  # float32 (paper) or float16 (half the memory)

    def check(self) -> None:
        _check_trajectory("saf", self.weight, self.temperature, self.start_epoch, self.form)
        if self.epochs_ago < 1:
            raise UserError(f"saf.epochs_ago must be >= 1, got {self.epochs_ago}")
        if self.buffer_dtype not in BUFFER_DTYPES:
            raise UserError(f"unknown saf.buffer_dtype {self.buffer_dtype!r}; use float32 or float16")


@dataclass
class MESAConfig:
    """MESA (the SAF paper's memory-efficient variant) for SSL, our form: an EMA copy of backbone + projector,
    in eval mode, gives the target projector outputs on the same views."""

    enabled: bool = False
    # normalised (ours, the default): as SAF's, and the teacher starts at start_epoch as a copy of the student,
    # normalising with batch statistics like the student; logits: the official form (teacher from step 0, eval mode)
    form: str = "normalised"
    weight: float = 0.8  # lambda (paper: 0.8)
    temperature: Optional[float] = None  # tau; null: 0.1 normalised, 5 logits (paper: 5, with the tau^2 scale)
    decay: Optional[float] = None  # EMA decay; null: derived from horizon and the run's length
    horizon: float = 0.18  # null decay: 1 / (1 - decay) = horizon * total steps (0.9998 over ~28k steps)
    start_epoch: int = -1  # the term is on from this epoch (0-based); -1: 30% of trainer.max_epochs

    def resolved_decay(self, total_steps: int) -> float:
        if self.decay is not None:
            return self.decay
        return 1.0 - 1.0 / max(1.0, self.horizon * total_steps)

    def check(self) -> None:
        _check_trajectory("mesa", self.weight, self.temperature, self.start_epoch, self.form)
        if self.decay is not None and not 0 <= self.decay < 1:
            raise UserError(f"mesa.decay must be in [0, 1) (or null), got {self.decay}")
        if self.horizon <= 0:
            raise UserError(f"mesa.horizon must be > 0, got {self.horizon}")
