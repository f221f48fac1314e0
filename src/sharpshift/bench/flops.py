"""FLOPs of a step and the machine's peak: what `sharpshift bench speed` sets the step's achieved rate against."""
from __future__ import annotations

import time

import torch
from torch import nn

from sharpshift.config import Config
from sharpshift.train import build_module

PEAK_N = 2048  # matmul size for the peak: large enough to run at the BLAS kernel's best rate
FLOPS_HOW = ("multiply-adds of every Conv2d and Linear layer of backbone + projector, counted by forward hooks "
             "on one forward of the step's views (2 FLOPs per multiply-add; bias, BatchNorm, activations, loss, "
             "views and optimizer not counted); forward + backward = 3 x forward")


def count_flops(model: nn.Module, *inputs: torch.Tensor) -> int:
    """Forward FLOPs of the Conv2d and Linear layers on these inputs: 2 x multiply-adds, by forward hooks."""
    macs = 0

    def hook(layer, args, out) -> None:
        nonlocal macs
        if isinstance(layer, nn.Conv2d):  # each output element: in_channels/groups x kernel multiply-adds
            macs += out.numel() * (layer.in_channels // layer.groups) * layer.kernel_size[0] * layer.kernel_size[1]
        else:
            macs += out.numel() * layer.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return 2 * macs


def simclr_step_flops(cfg: Config, train) -> dict:
    module = build_module(cfg, train).eval()  # eval: counting must not move BatchNorm statistics
    views = module.views(train.images[: cfg.data.batch_size])
    forward = count_flops(nn.Sequential(module.backbone, module.projector), torch.cat(views))
    return {"forward_per_image": forward // cfg.data.batch_size, "step": 3 * forward, "how": FLOPS_HOW}


def compute_dtype(precision: str) -> torch.dtype:
    return {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision, torch.float32)


def peak_matmul_flops(dtype: torch.dtype, n: int = PEAK_N, reps: int = 4) -> float:
    """FLOP/s of the fastest of a few n x n matmuls (after one warm-up): the machine's practical peak."""
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=g).to(dtype) for _ in range(2))
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best
