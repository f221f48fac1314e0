"""White-box L-infinity attacks (FGSM, PGD) on a frozen backbone plus its linear probe.

The attacked classifier is the whole evaluation pipeline made differentiable: pixels in [0, 1] ->
the backbone's input normalisation -> backbone (eval mode: BatchNorm uses running statistics) ->
the probe's feature standardisation -> linear layer. Perturbations live in pixel space, so an
epsilon of 8/255 means "each pixel moves by at most 8 grey levels", as in the robustness literature.
Adversarial images are kept as floats (not re-quantised to uint8), as usual.

FGSM (Goodfellow et al., 2015): x' = clip(x + eps * sign(grad_x CE), 0, 1).
PGD (Madry et al., 2018): from a uniform random start in the eps-ball, `steps` signed-gradient steps of
size ratio * eps / steps, each followed by projection onto the eps-ball and [0, 1].
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sharpshift.evaluation.linear import LinearProbe


class ProbedBackbone(nn.Module):
    """Pixels (N, C, H, W) in [0, 1] -> class logits, exactly as `extract_features` + `LinearProbe.logits`."""

    def __init__(self, backbone: nn.Module, probe: LinearProbe, pixel_mean=None, pixel_std=None):
        super().__init__()
        self.backbone = backbone
        arch = getattr(backbone, "arch", {})
        mean = pixel_mean if pixel_mean is not None else arch.get("mean", 0.5)
        std = pixel_std if pixel_std is not None else arch.get("std", 0.5)
        self.register_buffer("pixel_mean", torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("pixel_std", torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        for name in ("weight", "bias", "mean", "std"):
            self.register_buffer(f"probe_{name}", getattr(probe, name).detach().float().cpu())
        self.train(backbone.training)  # mirror the backbone: attacks must see eval-mode BatchNorm

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        feats = self.backbone((pixels - self.pixel_mean) / self.pixel_std).float()
        return ((feats - self.probe_mean) / self.probe_std) @ self.probe_weight.T + self.probe_bias


def _input_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """d(sum of cross-entropies)/dx; parameters get no .grad (only x is asked for)."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(x), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, [x])
    return grad


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """One signed-gradient step of size eps (pixels in [0, 1]). eps = 0 returns x unchanged."""
    if eps == 0:
        return x.clone()
    return (x + eps * _input_grad(model, x, y).sign()).clamp(0, 1).detach()


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int = 10,
        step_ratio: float = 2.5, random_start: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
    """Projected gradient ascent on the cross-entropy inside {x' : |x' - x|_inf <= eps, 0 <= x' <= 1}."""
    if eps == 0:
        return x.clone()
    step = step_ratio * eps / steps
    adv = x.clone()
    if random_start:
        noise = torch.rand(x.shape, generator=generator).to(x.device) * 2 - 1
        adv = (x + eps * noise).clamp(0, 1)
    for _ in range(steps):
        adv = adv + step * _input_grad(model, adv, y).sign()
        adv = torch.min(torch.max(adv, x - eps), x + eps).clamp(0, 1).detach()
    return adv


def attack_accuracy(model: nn.Module, images_uint8: torch.Tensor, labels: torch.Tensor,
                    epsilons: Sequence[float], steps: int = 10, step_ratio: float = 2.5,
                    random_start: bool = True, seed: int = 0, batch_size: int = 512,
                    device: str | torch.device = "cpu") -> dict:
    """Top-1 (fraction) under FGSM and PGD for each eps, given in units of 1/255, plus clean top-1."""
    model = model.to(device)
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    hits = {"clean": 0, "fgsm": [0] * len(epsilons), "pgd": [0] * len(epsilons)}
    try:
        for start in range(0, len(images_uint8), batch_size):
            x = images_uint8[start : start + batch_size].to(device).float() / 255
            y = labels[start : start + batch_size].to(device)
            with torch.no_grad():
                hits["clean"] += int((model(x).argmax(1) == y).sum())
            for i, e in enumerate(epsilons):
                eps = float(e) / 255
                adversarial = {"fgsm": fgsm(model, x, y, eps),
                               "pgd": pgd(model, x, y, eps, steps, step_ratio, random_start, gen)}
                with torch.no_grad():
                    for name, adv in adversarial.items():
                        hits[name][i] += int((model(adv).argmax(1) == y).sum())
    finally:
        model.train(was_training)
    n = max(len(images_uint8), 1)
    return {"epsilons_255": [float(e) for e in epsilons], "clean_top1": hits["clean"] / n,
            "fgsm_top1": [h / n for h in hits["fgsm"]], "pgd_top1": [h / n for h in hits["pgd"]],
            "pgd_steps": steps, "pgd_step_ratio": step_ratio, "pgd_random_start": random_start,
            "size": len(images_uint8), "seed": seed}
