"""Frozen-backbone feature extraction from uint8 images."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sharpshift.errors import UserError


def _per_channel(value: float | Sequence[float] | torch.Tensor | None, channels: int, name: str) -> torch.Tensor:
    """A (1, C, 1, 1) float tensor from a scalar or a per-channel sequence (default 0.5)."""
    t = torch.as_tensor(0.5 if value is None else value, dtype=torch.float32).flatten()
    if t.numel() == 1:
        t = t.expand(channels)
    if t.numel() != channels:
        raise UserError(f"{name} has {t.numel()} values but the images have {channels} channels; give one value per channel")
    if name == "std" and bool((t <= 0).any()):
        raise UserError(f"std must be positive, got {t.tolist()}; fix the normalisation values")
    return t.view(1, channels, 1, 1)


def extract_features(
    backbone: nn.Module,
    images_uint8: torch.Tensor,
    batch_size: int = 1024,
    device: str | torch.device = "cpu",
    mean: float | Sequence[float] | torch.Tensor | None = None,
    std: float | Sequence[float] | torch.Tensor | None = None,
    bf16: bool = False,
) -> torch.Tensor:
    """Features (N, D) float32 on the CPU for uint8 images (N, C, H, W).

    Pixels go to [0, 1] and then to (x - mean) / std per channel (default 0.5 / 0.5, i.e. [-1, 1]).
    The backbone runs in eval mode (BatchNorm uses running statistics) under no_grad; it must
    already live on `device`. Its previous train/eval mode is restored afterwards, even on error.
    `bf16=True` runs under torch.autocast(bfloat16) on the device's type.
    """
    if images_uint8.dtype != torch.uint8 or images_uint8.dim() != 4:
        raise ValueError(f"images must be uint8 (N, C, H, W), got {images_uint8.dtype} {tuple(images_uint8.shape)}")
    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1, got {batch_size}; pass a positive batch size")
    device = torch.device(device)
    channels = images_uint8.shape[1]
    mean_t = _per_channel(mean, channels, "mean").to(device)
    std_t = _per_channel(std, channels, "std").to(device)

    was_training = backbone.training
    backbone.eval()
    out = []
    try:
        with torch.no_grad(), torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            for start in range(0, len(images_uint8), batch_size):
                x = images_uint8[start : start + batch_size].to(device, non_blocking=True)
                x = (x.float().div_(255.0) - mean_t) / std_t
                out.append(backbone(x).float().cpu())
    finally:
        backbone.train(was_training)
    if not out:
        return torch.empty(0, 0)
    return torch.cat(out)
