"""Our corruption functions against Hendrycks' reference code (the `imagecorruptions` package, ImageNet-C's
functions for any image size) at 32x32 RGB, where our pixel sizes are unscaled (sharpshift.evaluation.
corruptions scales them by H/32).

The reference's severities use ImageNet-C's parameters and ours CIFAR-10-C's, so each comparison feeds our
function the reference's own parameter for that severity (REFERENCE_LEVELS, copied from imagecorruptions/
corruptions.py 1.1.2): it checks the formula, not the choice of levels. Deterministic corruptions are compared
pixel by pixel; random ones by a statistic, since the draws cannot be matched (numpy's global generator
there, torch generators here). Used by tests/test_corruption_oracle.py and benchmarks/corruption_oracle.py.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from sharpshift.evaluation.corruptions import CORRUPTIONS

# the reference's parameter per severity, in the form our function takes it
REFERENCE_LEVELS = {
    "gaussian_noise": [.08, .12, 0.18, 0.26, 0.38],
    "shot_noise": [60, 25, 12, 5, 3],
    "impulse_noise": [.03, .06, .09, 0.17, 0.27],
    "speckle_noise": [.15, .2, 0.35, 0.45, 0.6],
    "contrast": [0.4, .3, .2, .1, .05],
    "brightness": [.1, .2, .3, .4, .5],
    "jpeg_compression": [25, 18, 15, 10, 7],
    "zoom_blur": [1.11, 1.16],  # severities 1-2 only: 3-5 step by 0.02 / 0.03, ours always by 0.01
    "motion_blur": [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)],
    "defocus_blur": [3, 4, 6, 8, 10],  # radius; the reference also blurs its disk (alias 0.1-0.5), ours supersamples
    "pixelate": [0.6, 0.5, 0.4, 0.3, 0.25],
}
EXACT = ("contrast", "brightness", "jpeg_compression", "zoom_blur")  # deterministic in both: pixel by pixel
NOISE = ("gaussian_noise", "shot_noise", "speckle_noise")  # residual std
# not compared, and why (docs/robustness.md)
NOT_COMPARED = {
    "gaussian_blur": "the reference raises on scikit-image >= 0.19 (gaussian(multichannel=...)); ours is checked "
                     "against SciPy's gaussian_filter instead",
    "fog": "the reference raises on NumPy 2 (np.float_); ours replaces its plasma fractal (ours (2))",
    "frost": "the reference blends photographs of frost that we do not ship; ours is synthetic (ours (3))",
    "elastic_transform": "the parameters differ in kind (ours (4)): no severity of one is a setting of the other",
}


def sample_images(n: int = 32, seed: int = 0) -> np.ndarray:
    """(n, 32, 32, 3) uint8: smooth colour fields with edges, kept inside [24, 231] so that the noise
    statistics are not cut by clipping."""
    g = torch.Generator().manual_seed(seed)
    low = F.interpolate(torch.rand(n, 3, 4, 4, generator=g), size=(32, 32), mode="bicubic", align_corners=False)
    edges = (torch.rand(n, 1, 32, 32, generator=g) > 0.5).float()
    edges = F.interpolate(F.avg_pool2d(edges, 8), size=(32, 32), mode="nearest")
    x = (0.6 * low.clamp(0, 1) + 0.4 * edges).clamp(0, 1)
    return (24 + x * 207).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def reference(images: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    from imagecorruptions import corrupt

    np.random.seed(seed)
    return np.stack([corrupt(im, corruption_name=name, severity=severity) for im in images])


def ours(images: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """Our function with the reference's parameter, on the same uint8 images; uint8 as the reference returns."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    gen = torch.Generator().manual_seed(seed)
    out = CORRUPTIONS[name].fn(x, REFERENCE_LEVELS[name][severity - 1], gen).clamp(0, 1)
    return (out * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def compare(name: str, severity: int, images: np.ndarray | None = None) -> dict:
    """The figure each kind is compared by: max and mean |ours - reference| in grey levels (deterministic),
    the ratio of the residual's std (noise), of the share of values set to 0 or 255 (impulse), or of the mean
    absolute change from the clean image (the blurs and pixelate, whose draws or kernels differ)."""
    images = sample_images() if images is None else images
    a, b = ours(images, name, severity).astype(np.float64), reference(images, name, severity).astype(np.float64)
    clean = images.astype(np.float64)
    if name in EXACT:
        diff = np.abs(a - b)
        return {"kind": "pixel by pixel", "max_abs": float(diff.max()), "mean_abs": float(diff.mean())}
    if name in NOISE:
        return {"kind": "residual std ratio", "ratio": float((a - clean).std() / (b - clean).std())}
    if name == "impulse_noise":
        hit = lambda y: float(((y == 0) | (y == 255)).mean())  # noqa: E731  (the clean images have neither)
        return {"kind": "share set to 0 or 255, ratio", "ratio": hit(a) / hit(b)}
    return {"kind": "mean abs change ratio", "ratio": float(np.abs(a - clean).mean() / np.abs(b - clean).mean())}
