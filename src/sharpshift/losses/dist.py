"""The one place that knows about multiple processes: gather with gradient, rank and world size.

Losses compute their local rows against gathered columns (SimCLR, MoCo) or the full global statistic
(Barlow Twins). The backward of `gather` sums the incoming gradients over processes (all-reduce) and
keeps this process's slice; together with DDP's gradient averaging this gives exactly the gradient of
the loss on the concatenated batch (see lightly #1528 and #1977 for what goes wrong otherwise).
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor):  # type: ignore[override]
        out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):  # type: ignore[override]
        stacked = torch.stack(grads)
        dist.all_reduce(stacked)
        return stacked[dist.get_rank()]


def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate x from every process along dim 0, differentiably. Identity in one process."""
    if not is_distributed():
        return x
    return torch.cat(_GatherWithGrad.apply(x), 0)


@torch.no_grad()
def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    if not is_distributed():
        return x
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out, 0)


def all_true(flag: torch.Tensor) -> bool:
    """True when a boolean flag is true in every process (one tiny all-reduce), so all take the same branch."""
    if not is_distributed():
        return bool(flag)
    agreed = flag.detach().to(torch.int32).reshape(1).clone()
    dist.all_reduce(agreed, op=dist.ReduceOp.MIN)
    return bool(agreed.item())


@torch.no_grad()
def average_gradients(params) -> None:
    """Mean of each gradient over processes, for parameters that DDP does not manage (the online probe)."""
    if not is_distributed():
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= dist.get_world_size()
