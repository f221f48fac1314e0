"""Corrupted copies of test images in the style of CIFAR-10-C / ImageNet-C (Hendrycks & Dietterich, 2019).

`corrupt(images, name, severity, seed)` takes a batch (N, C, H, W), 1 or 3 channels, uint8 or float in
[0, 1], and returns a batch of the same shape, dtype and range. Severity 0 is the identity, 1..5 get
stronger. The result depends only on (images, name, severity, seed): every random draw comes from a
generator seeded from those, so a corrupted test set can be regenerated on the fly instead of stored.

Parameters follow CIFAR-10-C where it has them (noise levels, Gaussian blur, contrast, brightness, fog,
JPEG quality, zoom factors, motion-blur sigma). Sizes in pixels are CIFAR-10-C's 32-px values scaled
by H/32, so a 28-px Fashion-MNIST image gets proportionally the same blur. Our own choices, where
CIFAR-10-C's values are not monotone in how much they change the image or need image files we do not
have (defocus radii, elastic, pixelate, frost weights, the synthetic fog and frost textures), are marked
"ours" below and in docs/robustness.md. Everything is batched torch except JPEG, which is a Pillow round trip per image.
"""
from __future__ import annotations

import io
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sharpshift.config.robustness import CORRUPTION_NAMES

SEVERITIES = (1, 2, 3, 4, 5)
REFERENCE_SIZE = 32  # pixel-sized parameters below are given for 32-px images (CIFAR-10-C)


# ---------------------------------------------------------------- helpers


def _rand(gen: torch.Generator, shape, like: torch.Tensor) -> torch.Tensor:
    return torch.rand(shape, generator=gen).to(like.device)


def _randn(gen: torch.Generator, shape, like: torch.Tensor) -> torch.Tensor:
    return torch.randn(shape, generator=gen).to(like.device)


def _px(x: torch.Tensor, value: float) -> float:
    """A length given in pixels of a 32-px image, scaled to this image's height."""
    return value * x.shape[-2] / REFERENCE_SIZE


def _depthwise(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Same-size convolution of every channel with one 2-D kernel (odd sides), edges replicated."""
    kh, kw = kernel.shape
    c = x.shape[1]
    xp = F.pad(x, (kw // 2, kw // 2, kh // 2, kh // 2), mode="replicate")
    return F.conv2d(xp, kernel.to(x).expand(c, 1, kh, kw), groups=c)


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    if sigma <= 0:
        return x
    r = max(1, math.ceil(3 * sigma))
    k = torch.exp(-torch.arange(-r, r + 1, dtype=torch.float32) ** 2 / (2 * sigma**2))
    k = k / k.sum()
    return _depthwise(_depthwise(x, k.view(1, -1)), k.view(-1, 1))


def _base_grid(x: torch.Tensor) -> torch.Tensor:
    """(N, H, W, 2) sampling grid of the pixel centres, grid_sample's (x, y) in [-1, 1]."""
    n, _, h, w = x.shape
    ys = (torch.arange(h, device=x.device, dtype=x.dtype) + 0.5) * 2 / h - 1
    xs = (torch.arange(w, device=x.device, dtype=x.dtype) + 0.5) * 2 / w - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], -1).expand(n, h, w, 2)


def _sample(x: torch.Tensor, grid: torch.Tensor, padding: str = "border") -> torch.Tensor:
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=False)


def _fractal(x: torch.Tensor, decay: float, gen: torch.Generator) -> torch.Tensor:
    """Per-image fractal noise (N, 1, H, W) in [0, 1]: octaves of 2, 4, 8 ... cells, each 1/decay as strong.

    Plays the role of ImageNet-C's diamond-square plasma fractal (same decay parameter)."""
    n, _, h, w = x.shape
    total = torch.zeros(n, 1, h, w, device=x.device)
    cells, amp = 2, 1.0
    while True:
        noise = _rand(gen, (n, 1, cells, cells), x) * 2 - 1
        total += amp * F.interpolate(noise, size=(h, w), mode="bicubic", align_corners=False)
        if cells >= max(h, w):
            break
        cells, amp = cells * 2, amp / decay
    lo = total.amin((2, 3), keepdim=True)
    hi = total.amax((2, 3), keepdim=True)
    return (total - lo) / (hi - lo).clamp_min(1e-8)


# ---------------------------------------------------------------- noise


def gaussian_noise(x, c, gen):
    return x + _randn(gen, x.shape, x) * c


def shot_noise(x, c, gen):
    """Poisson photon noise: c photons at full intensity."""
    return torch.poisson((x * c).cpu(), generator=gen).to(x.device) / c


def impulse_noise(x, amount, gen):
    """Salt and pepper on a fraction `amount` of the values (per channel, as skimage's s&p)."""
    u = _rand(gen, x.shape, x)
    x = torch.where(u < amount / 2, torch.ones_like(x), x)
    return torch.where((u >= amount / 2) & (u < amount), torch.zeros_like(x), x)


def speckle_noise(x, c, gen):
    return x + x * _randn(gen, x.shape, x) * c


# ---------------------------------------------------------------- blur


def gaussian_blur(x, sigma, gen):
    return _gaussian_blur(x, _px(x, sigma))


def _disk(radius: float, sub: int = 8) -> torch.Tensor:
    """Anti-aliased disk: the share of each pixel inside a circle of `radius` pixels (8x8 supersampling)."""
    r = max(1, math.ceil(radius))
    offsets = (torch.arange(sub) + 0.5) / sub - 0.5
    fine = (torch.arange(-r, r + 1).view(-1, 1) + offsets.view(1, -1)).flatten()
    inside = (fine.view(-1, 1) ** 2 + fine.view(1, -1) ** 2) <= radius**2
    k = inside.view(2 * r + 1, sub, 2 * r + 1, sub).float().mean((1, 3))
    if k.sum() == 0:
        k[r, r] = 1.0
    return k / k.sum()


def defocus_blur(x, radius, gen):
    # ours: CIFAR-10-C's (radius, alias) pairs blur less at severity 4 than at 3 once scaled below 32 px
    return _depthwise(x, _disk(_px(x, radius)))


def motion_blur(x, c, gen):
    """One-sided Gaussian streak (ImageNet-C's kernel: length `radius`, `sigma`) at a random angle in +-45 deg."""
    radius, sigma = _px(x, c[0]), _px(x, c[1])
    n, _, h, w = x.shape
    angle = (_rand(gen, (n,), x) * 90 - 45) * math.pi / 180
    step = torch.stack([torch.cos(angle) * 2 / w, torch.sin(angle) * 2 / h], -1).view(n, 1, 1, 2)
    reach = max(1, min(math.ceil(radius), math.ceil(3 * sigma)))
    weights = torch.exp(-torch.arange(reach + 1, dtype=torch.float32) ** 2 / (2 * sigma**2))
    weights = weights / weights.sum()
    base = _base_grid(x)
    out = torch.zeros_like(x)
    for k, wk in enumerate(weights.tolist()):
        out += wk * _sample(x, base - k * step)
    return out


def zoom_blur(x, max_zoom, gen):
    """Mean of the image and its centre zooms by 1.00, 1.01, ... up to max_zoom (CIFAR-10-C)."""
    zooms = np.arange(1, max_zoom, 0.01)
    base = _base_grid(x)
    out = x.clone()
    for z in zooms:
        out += _sample(x, base / float(z))
    return out / (len(zooms) + 1)


# ---------------------------------------------------------------- weather and digital


def contrast(x, c, gen):
    mean = x.mean((2, 3), keepdim=True)
    return (x - mean) * c + mean


def brightness(x, c, gen):
    """Add c to HSV value, keeping hue and saturation: RGB scales by V'/V (grey images: plain x + c)."""
    v = x.amax(1, keepdim=True)
    v_new = (v + c).clamp(0, 1)
    return torch.where(v > 0, x * v_new / v.clamp_min(1e-8), v_new.expand_as(x))


def fog(x, c, gen):
    """Fractal haze added, then rescaled so the brightest pixel keeps its value (CIFAR-10-C's recipe)."""
    strength, decay = c
    top = x.amax((1, 2, 3), keepdim=True)
    x = x + strength * _fractal(x, decay, gen)
    return x * top / (top + strength)


def frost(x, c, gen):
    """ours: CIFAR-10-C blends photos of frost; we blend a synthetic ridged fractal (thin bright veins),
    with blend weights that grow with the severity (CIFAR-10-C's do not, from severity 3 to 4)."""
    keep, strength = c
    veins = (1 - (2 * _fractal(x, 1.6, gen) - 1).abs()) ** 3
    veins = veins / veins.amax((2, 3), keepdim=True).clamp_min(1e-8)
    return keep * x + strength * veins


def elastic_transform(x, c, gen):
    """ours: a random affine jitter plus a smooth displacement field of RMS `alpha` (fractions of the size).

    CIFAR-10-C's (alpha, sigma, affine) triples trade affine for elastic strength and are not monotone."""
    alpha, sigma, affine = c
    n, _, h, w = x.shape
    field = _gaussian_blur(_rand(gen, (n, 2, h, w), x) * 2 - 1, sigma * h)
    field = field / field.pow(2).mean((1, 2, 3), keepdim=True).sqrt().clamp_min(1e-8)
    jitter = (_rand(gen, (n, 2, 2), x) * 2 - 1) * affine
    shift = (_rand(gen, (n, 1, 1, 2), x) * 2 - 1) * affine
    base = _base_grid(x)
    grid = base + torch.einsum("nhwi,nji->nhwj", base, jitter) + shift
    grid = grid + field.permute(0, 2, 3, 1) * (2 * alpha)  # 2 * alpha: fraction of the size in grid units
    return _sample(x, grid, padding="reflection")


def pixelate(x, c, gen):
    """ours: shrink to a fraction c (anti-aliased), blow back up with centre-aligned nearest neighbours.

    CIFAR-10-C's factors (0.95 ... 0.65) with box resampling alias so much below 32 px that severity 4
    changes the image less than severity 1; these factors (ImageNet-C's range, 0.6 ... 0.25) and
    resamplers change 28- to 96-px images monotonically more."""
    h, w = x.shape[-2:]
    small = F.interpolate(x, size=(max(1, int(h * c)), max(1, int(w * c))), mode="bilinear", antialias=True)
    return F.interpolate(small, size=(h, w), mode="nearest-exact")


def jpeg_compression(x, quality, gen):
    """Pillow JPEG round trip per image (the only non-torch corruption)."""
    from PIL import Image

    pixels = (x.clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    out = torch.empty_like(pixels)
    for i, img in enumerate(pixels):
        arr = img[0].numpy() if img.shape[0] == 1 else img.permute(1, 2, 0).numpy()
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=int(quality))
        dec = torch.from_numpy(np.array(Image.open(buf)))
        out[i] = dec.unsqueeze(0) if dec.dim() == 2 else dec.permute(2, 0, 1)
    return out.to(x.device, x.dtype) / 255


# ---------------------------------------------------------------- registry


@dataclass(frozen=True)
class Corruption:
    name: str
    family: str  # noise, blur, weather, digital (CIFAR-10-C's grouping)
    levels: tuple  # the parameter of severities 1..5
    fn: Callable[[torch.Tensor, Any, torch.Generator], torch.Tensor]


CORRUPTIONS: dict[str, Corruption] = {c.name: c for c in [
    Corruption("gaussian_noise", "noise", (0.04, 0.06, 0.08, 0.09, 0.10), gaussian_noise),
    Corruption("shot_noise", "noise", (500, 250, 100, 75, 50), shot_noise),
    Corruption("impulse_noise", "noise", (0.01, 0.02, 0.03, 0.05, 0.07), impulse_noise),
    Corruption("speckle_noise", "noise", (0.06, 0.10, 0.12, 0.16, 0.20), speckle_noise),
    Corruption("gaussian_blur", "blur", (0.4, 0.6, 0.7, 0.8, 1.0), gaussian_blur),
    Corruption("defocus_blur", "blur", (0.75, 1.0, 1.5, 2.0, 2.5), defocus_blur),
    Corruption("motion_blur", "blur", ((10, 1.0), (10, 1.5), (10, 2.0), (10, 2.5), (12, 3.0)), motion_blur),
    Corruption("zoom_blur", "blur", (1.06, 1.11, 1.16, 1.21, 1.26), zoom_blur),
    Corruption("contrast", "weather", (0.75, 0.5, 0.4, 0.3, 0.15), contrast),
    Corruption("brightness", "weather", (0.05, 0.1, 0.15, 0.2, 0.3), brightness),
    Corruption("fog", "weather", ((0.2, 3.0), (0.5, 3.0), (0.75, 2.5), (1.0, 2.0), (1.5, 1.75)), fog),
    Corruption("frost", "weather", ((1.0, 0.2), (0.95, 0.3), (0.9, 0.4), (0.85, 0.5), (0.8, 0.6)), frost),
    Corruption("elastic_transform", "digital",
               ((0.015, 0.08, 0.02), (0.02, 0.08, 0.025), (0.03, 0.07, 0.03), (0.04, 0.06, 0.035), (0.05, 0.05, 0.04)),
               elastic_transform),
    Corruption("pixelate", "digital", (0.8, 0.65, 0.5, 0.4, 0.3), pixelate),
    Corruption("jpeg_compression", "digital", (80, 65, 58, 50, 40), jpeg_compression),
]}
assert tuple(CORRUPTIONS) == CORRUPTION_NAMES, "keep robustness_config.CORRUPTION_NAMES in step"


def corruption_seed(name: str, severity: int, seed: int, offset: int = 0) -> int:
    """A stable 32-bit seed per (corruption, severity, seed, first image index); unlike hash(), no salt."""
    return zlib.crc32(f"{name}:{severity}:{seed}:{offset}".encode())


def corrupt(images: torch.Tensor, name: str, severity: int, seed: int = 0, offset: int = 0) -> torch.Tensor:
    """`images` (N, C, H, W), C in {1, 3}, uint8 or float in [0, 1] -> corrupted copy, same dtype and shape.

    `offset` (the batch's first index in a larger set) enters the seed, so chunks of one test set get
    different noise yet the whole set is reproducible for a fixed chunking."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, C, H, W) with 1 or 3 channels, got {tuple(images.shape)}")
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; choose from {', '.join(CORRUPTIONS)}")
    if severity not in (0, *SEVERITIES):
        raise ValueError(f"severity must be 0..5, got {severity}")
    if severity == 0 or len(images) == 0:
        return images.clone()
    is_uint8 = images.dtype == torch.uint8
    x = images.float() / 255 if is_uint8 else images.float()
    spec = CORRUPTIONS[name]
    gen = torch.Generator().manual_seed(corruption_seed(name, severity, seed, offset))
    out = spec.fn(x, spec.levels[severity - 1], gen).clamp(0, 1)
    if is_uint8:
        return (out * 255).round().to(torch.uint8)
    return out.to(images.dtype)
