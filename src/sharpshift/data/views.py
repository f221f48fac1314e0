"""Batched augmentation on the training device: every op acts on the whole batch at once.

No Python loop runs per image. Random parameters are drawn per sample from one torch.Generator
(seeded per process, so processes see different views), and "apply with probability p" is a mask.
Crop and flip share one affine grid_sample. Colour ops follow SimCLR/BYOL in a fixed order
(brightness, contrast, saturation, hue) rather than torchvision's random order: our choice.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sharpshift.config import ViewsConfig

# Per-view probabilities of the two standard recipes (SimCLR symmetric, BYOL asymmetric).
RECIPES = {
    "symmetric": {"blur_p": [0.5, 0.5], "solarize_p": [0.0, 0.0]},
    "asymmetric": {"blur_p": [1.0, 0.1], "solarize_p": [0.0, 0.2]},
}


@dataclass
class ViewParams:
    """Everything one view's pipeline needs; built from ViewsConfig for view number i."""

    crop_scale: tuple[float, float]
    crop_ratio: tuple[float, float]
    flip_p: float
    jitter_p: float
    brightness: float
    contrast: float
    saturation: float
    hue: float
    grayscale_p: float
    blur_p: float
    blur_sigma: tuple[float, float]
    solarize_p: float


def view_params(cfg: ViewsConfig, recipe: str, image_size: int) -> list[ViewParams]:
    """One ViewParams per view; per-view lists cycle when there are more views than entries."""
    name = cfg.recipe if cfg.recipe != "auto" else recipe
    blur = cfg.blur_p if cfg.blur_p is not None else RECIPES[name]["blur_p"]
    solar = cfg.solarize_p if cfg.solarize_p is not None else RECIPES[name]["solarize_p"]
    scale = image_size / 32.0  # blur sigmas are given at CIFAR size; scale them with the image
    sigma = (cfg.blur_sigma[0] * scale, cfg.blur_sigma[1] * scale)
    return [
        ViewParams(tuple(cfg.crop_scale), tuple(cfg.crop_ratio), cfg.flip_p, cfg.jitter_p, cfg.brightness,
                   cfg.contrast, cfg.saturation, cfg.hue, cfg.grayscale_p, blur[i % len(blur)], sigma,
                   solar[i % len(solar)])
        for i in range(cfg.num_views)
    ]


def _uniform(n: int, lo: float, hi: float, g: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device) * (hi - lo) + lo


def _coin(n: int, p: float, g: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device) < p


def gray(x: torch.Tensor) -> torch.Tensor:
    """Luma (ITU-R 601), shape (N, 1, H, W); identity for one-channel images."""
    if x.shape[1] == 1:
        return x
    w = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def resized_crop_flip(x: torch.Tensor, p: ViewParams, g: torch.Generator, out_size: int) -> torch.Tensor:
    """Random resized crop (area fraction and log-uniform aspect ratio) with a random flip, one grid_sample."""
    n, dev = x.shape[0], x.device
    area = _uniform(n, p.crop_scale[0], p.crop_scale[1], g, dev)
    log_r = _uniform(n, math.log(p.crop_ratio[0]), math.log(p.crop_ratio[1]), g, dev)
    ratio = torch.exp(log_r)
    w = torch.sqrt(area * ratio).clamp(max=1.0)  # fraction of the width
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (torch.rand(n, generator=g, device=dev) * 2 - 1) * (1 - w)  # centre, in [-1, 1] coordinates
    cy = (torch.rand(n, generator=g, device=dev) * 2 - 1) * (1 - h)
    flip = torch.where(_coin(n, p.flip_p, g, dev), -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=dev, dtype=x.dtype)
    theta[:, 0, 0] = w * flip
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta, [n, x.shape[1], out_size, out_size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def color_jitter(x: torch.Tensor, p: ViewParams, g: torch.Generator) -> torch.Tensor:
    n, dev = x.shape[0], x.device
    apply = _coin(n, p.jitter_p, g, dev).view(n, 1, 1, 1)
    y = x
    if p.brightness > 0:
        b = _uniform(n, max(0.0, 1 - p.brightness), 1 + p.brightness, g, dev).view(n, 1, 1, 1)
        y = (y * b).clamp(0, 1)
    if p.contrast > 0:
        c = _uniform(n, max(0.0, 1 - p.contrast), 1 + p.contrast, g, dev).view(n, 1, 1, 1)
        mean = gray(y).mean(dim=(1, 2, 3), keepdim=True)
        y = ((y - mean) * c + mean).clamp(0, 1)
    if x.shape[1] == 3 and p.saturation > 0:
        s = _uniform(n, max(0.0, 1 - p.saturation), 1 + p.saturation, g, dev).view(n, 1, 1, 1)
        lum = gray(y)
        y = ((y - lum) * s + lum).clamp(0, 1)
    if x.shape[1] == 3 and p.hue > 0:
        from kornia.enhance import adjust_hue

        hue = _uniform(n, -p.hue, p.hue, g, dev) * (2 * math.pi)  # kornia takes radians
        y = adjust_hue(y, hue).clamp(0, 1)
    return torch.where(apply, y, x)


def random_grayscale(x: torch.Tensor, p: ViewParams, g: torch.Generator) -> torch.Tensor:
    if x.shape[1] == 1 or p.grayscale_p <= 0:
        return x
    apply = _coin(x.shape[0], p.grayscale_p, g, x.device).view(-1, 1, 1, 1)
    return torch.where(apply, gray(x).expand_as(x), x)


def gaussian_blur(x: torch.Tensor, p: ViewParams, g: torch.Generator) -> torch.Tensor:
    """Per-sample sigma, separable, as one grouped convolution over the batch."""
    if p.blur_p <= 0:
        return x
    n, c, h, w = x.shape
    apply = _coin(n, p.blur_p, g, x.device)
    sigma = _uniform(n, p.blur_sigma[0], p.blur_sigma[1], g, x.device)
    radius = max(1, min(int(math.ceil(2 * p.blur_sigma[1])), (min(h, w) - 1) // 2))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-(t.view(1, -1) ** 2) / (2 * sigma.view(-1, 1) ** 2))
    k = k / k.sum(1, keepdim=True)  # (n, K)
    k = k.repeat_interleave(c, 0)  # one kernel per (sample, channel)
    y = F.pad(x.reshape(1, n * c, h, w), (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k.view(n * c, 1, 1, -1), groups=n * c)
    y = F.conv2d(y, k.view(n * c, 1, -1, 1), groups=n * c).view(n, c, h, w)
    return torch.where(apply.view(n, 1, 1, 1), y, x)


def solarize(x: torch.Tensor, p: ViewParams, g: torch.Generator) -> torch.Tensor:
    if p.solarize_p <= 0:
        return x
    apply = _coin(x.shape[0], p.solarize_p, g, x.device).view(-1, 1, 1, 1)
    return torch.where(apply & (x >= 0.5), 1 - x, x)


def augment(x: torch.Tensor, p: ViewParams, g: torch.Generator, out_size: int) -> torch.Tensor:
    """One view of a float batch in [0, 1]: crop+flip, jitter, grayscale, blur, solarize."""
    x = resized_crop_flip(x, p, g, out_size)
    if p.jitter_p > 0:
        x = color_jitter(x, p, g)
    x = random_grayscale(x, p, g)
    x = gaussian_blur(x, p, g)
    return solarize(x, p, g).clamp(0, 1)


class ViewGenerator(nn.Module):
    """uint8 batch (N, C, H, W) -> list of V normalised float views, generated on the batch's device.

    Subclass or wrap it to add views (Fourier mixing, weak/aggressive pairs): `augment_view(x, i)`
    returns view i in [0, 1] before normalisation.
    """

    def __init__(self, params: list[ViewParams], mean: list[float], std: list[float], out_size: int, seed: int = 0):
        super().__init__()
        self.params = params
        self.out_size = out_size
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        self.seed = seed
        self._gen: torch.Generator | None = None

    @property
    def generator(self) -> torch.Generator:
        dev = self.mean.device
        if self._gen is None or self._gen.device != dev:
            self._gen = torch.Generator(device=dev)
            self._gen.manual_seed(self.seed)
        return self._gen

    def to_unit(self, images: torch.Tensor) -> torch.Tensor:
        return images.float().div_(255.0)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)

    def augment_view(self, x: torch.Tensor, i: int) -> torch.Tensor:
        return augment(x, self.params[i], self.generator, self.out_size)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = self.to_unit(images)
        return [self.normalize(self.augment_view(x, i)) for i in range(len(self.params))]
