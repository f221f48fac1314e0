"""Fourier amplitude augmentation, batched with torch.fft: any number of channels, any size.

An image's Fourier phase carries most of its semantics and its amplitude most of its "style" (contrast,
texture, low-level statistics). SSA-CLR relieves the shift between ideal and practical positive pairs with
"a Fourier-based augmentation" whose recipe it does not publish; our reading (docs/shift.md) is FACT's
amplitude mix (Xu et al., CVPR 2021), keeping the image's own phase:

    x' = IFFT( ((1 - lam) |F(x)| + lam |F(x_partner)|) * exp(i angle(F(x))) ),   lam ~ U(0, alpha)

with the partner another image of the same batch. Variants: amplitude swap (lam = 1, APR, Chen et al.,
ICCV 2021) and random amplitude scaling (each frequency's amplitude times U(1-alpha, 1+alpha), the mean
brightness kept). The pure transforms below do not clip; `fourier_augment` applies them with probability p
and clips to [0, 1] (clipping is the only step that can move the phase).
"""
from __future__ import annotations

import torch

from sharpshift.config.shift import FourierConfig


def _spectrum(x: torch.Tensor) -> torch.Tensor:
    return torch.fft.rfft2(x.float())  # over (H, W), per channel; half the spectrum, 2x faster than fft2


def _image(amplitude: torch.Tensor, phase: torch.Tensor, size) -> torch.Tensor:
    # A real image's amplitude is symmetric (|F(-k)| = |F(k)|) and its phase antisymmetric; every amplitude
    # we build keeps that symmetry, so the half spectrum determines a real image exactly.
    return torch.fft.irfft2(torch.polar(amplitude, phase), s=size)


def amplitude_mix(x: torch.Tensor, partner: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """x, partner (N, C, H, W); lam (N,) -> x with amplitude (1-lam)|F(x)| + lam|F(partner)| and x's phase."""
    fx, fp = _spectrum(x), _spectrum(partner)
    lam = lam.to(fx.real.dtype).view(-1, 1, 1, 1)
    amplitude = (1 - lam) * fx.abs() + lam * fp.abs()
    return _image(amplitude, fx.angle(), x.shape[-2:]).to(x.dtype)


def amplitude_scale(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Multiply the amplitude spectrum by factor (N, 1 or C, H, W), keeping the phase.
    The factor is symmetrised (so the output stays real) and the DC term left alone (so the mean stays)."""
    f = symmetrise(factor.float())[..., : x.shape[-1] // 2 + 1].clone()  # the columns rfft2 keeps
    f[..., 0, 0] = 1.0
    fx = _spectrum(x)
    return _image(fx.abs() * f, fx.angle(), x.shape[-2:]).to(x.dtype)


def symmetrise(a: torch.Tensor) -> torch.Tensor:
    """(a(k) + a(-k)) / 2 over the last two dims, indices taken modulo the size (the DFT's symmetry)."""
    h, w = a.shape[-2:]
    rows = (-torch.arange(h, device=a.device)) % h
    cols = (-torch.arange(w, device=a.device)) % w
    return (a + a[..., rows, :][..., cols]) / 2


def random_partner(n: int, g: torch.Generator, device) -> torch.Tensor:
    """Partner index for every image: one random cycle through the batch, so no image is its own partner."""
    perm = torch.randperm(n, generator=g, device=device)
    partner = torch.empty_like(perm)
    partner[perm] = perm.roll(-1)
    return partner


def fourier_augment(x: torch.Tensor, cfg: FourierConfig, g: torch.Generator) -> torch.Tensor:
    """One view (N, C, H, W) in [0, 1] -> the configured Fourier variant applied to each image with
    probability cfg.p, clipped to [0, 1]. Random numbers come from g only (deterministic under a seed), and
    the same numbers are drawn whatever p is."""
    n, dev = x.shape[0], x.device
    apply = (torch.rand(n, generator=g, device=dev) < cfg.p).view(n, 1, 1, 1)
    with torch.autocast(dev.type, enabled=False):  # FFTs in fp32 even under a bf16 step
        if cfg.variant == "scale":
            u = torch.rand(n, 1, *x.shape[-2:], generator=g, device=dev)
            y = amplitude_scale(x, 1 + cfg.alpha * (2 * u - 1))
        else:
            partner = x[random_partner(n, g, dev)]
            lam = torch.rand(n, generator=g, device=dev) * cfg.alpha
            if cfg.variant == "swap":
                lam = torch.ones_like(lam)
            y = amplitude_mix(x, partner, lam)
    return torch.where(apply, y, x).clamp(0, 1)
