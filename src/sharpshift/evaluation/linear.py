"""Linear probe on frozen features: one fixed, documented protocol.

Protocol (the same for every method, so numbers are comparable):
  1. Standardise each feature dimension with the *train* mean and std (std + 1e-6).
  2. Multinomial logistic regression, nn.Linear(D, C), weights drawn N(0, 0.01^2) from the seed,
     bias zero.
  3. Objective: mean cross-entropy + weight_decay * ||W||_F^2 (bias not decayed),
     weight_decay = 1e-4 by default. The objective is strictly convex in W, so the result
     barely depends on the seed or the start.
  4. Full-batch L-BFGS (torch.optim.LBFGS, lr 1, history 20, strong-Wolfe line search),
     at most `iterations` steps (eval.linear_max_iter, 100 in every run's evaluation; 200 when this function
     is called without it), stopping early when the gradient or step falls under 1e-7 / 1e-9.
  5. Report top-1 accuracy (a fraction in [0, 1]) on train and test.
On 60k x 256 features with 10 classes this takes a few seconds on a CPU.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sharpshift.errors import UserError

EPS = 1e-6


@dataclass
class LinearProbe:
    """A trained probe: standardisation (mean, std) plus the linear classifier."""

    weight: torch.Tensor  # (C, D)
    bias: torch.Tensor  # (C,)
    mean: torch.Tensor  # (D,)
    std: torch.Tensor  # (D,), already includes EPS
    top1: float
    train_top1: float

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        x = (features.to(self.weight.device, torch.float32) - self.mean) / self.std
        return x @ self.weight.T + self.bias

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """Predicted class index (N,) for raw (unstandardised) features (N, D)."""
        return self.logits(features).argmax(1)

    def metrics(self) -> dict[str, float]:
        return {"top1": self.top1, "train_top1": self.train_top1}


def _check(x: torch.Tensor, y: torch.Tensor, name: str) -> None:
    if x.dim() != 2 or y.dim() != 1 or len(x) != len(y):
        raise ValueError(f"{name}: features must be (N, D) and labels (N,), got {tuple(x.shape)} and {tuple(y.shape)}")


def linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor | None = None,
    test_y: torch.Tensor | None = None,
    *,
    iterations: int = 200,
    weight_decay: float = 1e-4,
    num_classes: int | None = None,
    seed: int = 0,
) -> LinearProbe:
    """Fit the protocol above on (train_x, train_y); evaluate on (test_x, test_y) if given (else top1 = nan)."""
    _check(train_x, train_y, "train")
    if len(train_x) == 0:
        raise UserError("linear probe got an empty training set; check the labelled data split")
    if iterations < 1:
        raise UserError(f"linear probe iterations must be >= 1, got {iterations}")
    has_test = test_x is not None and test_y is not None
    if has_test:
        _check(test_x, test_y, "test")
        if test_x.shape[1] != train_x.shape[1]:
            raise ValueError(f"train features have {train_x.shape[1]} dims but test features {test_x.shape[1]}")

    device = train_x.device
    x = train_x.to(torch.float32)
    y = train_y.to(device, torch.long)
    top_label = max(int(y.max()), int(test_y.max()) if has_test and len(test_y) else 0)
    if num_classes is None:
        num_classes = top_label + 1
    if int(y.min()) < 0 or top_label >= num_classes:
        raise UserError(f"labels must lie in [0, {num_classes}); drop unlabelled (-1) samples or raise num_classes")

    mean = x.mean(0)
    std = x.std(0, unbiased=False) + EPS
    x = (x - mean) / std

    gen = torch.Generator().manual_seed(seed)
    weight = (torch.randn(num_classes, x.shape[1], generator=gen) * 0.01).to(device).requires_grad_()
    bias = torch.zeros(num_classes, device=device, requires_grad=True)
    opt = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=iterations, history_size=20,
        tolerance_grad=1e-7, tolerance_change=1e-9, line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ weight.T + bias, y) + weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    # One .step() runs up to max_iter L-BFGS iterations on the full batch.
    with torch.enable_grad():
        opt.step(closure)

    probe = LinearProbe(weight.detach(), bias.detach(), mean, std, float("nan"), float("nan"))
    with torch.no_grad():
        probe.train_top1 = (probe.predict(train_x) == y).float().mean().item()
        if has_test and len(test_x):
            probe.top1 = (probe.predict(test_x) == test_y.to(device)).float().mean().item()
    return probe
