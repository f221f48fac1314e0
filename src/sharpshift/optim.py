"""Optimizers (SGD, LARS, AdamW) and the per-step warm-up + cosine schedule."""
from __future__ import annotations

import math

import torch
from torch import nn

from sharpshift.config import OptimConfig


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise trust ratio eta * ||w|| / ||g + wd w|| (You et al., 2017).
    Groups with `lars_exclude=True` (biases, norm layers) get plain SGD, as in BYOL/Barlow Twins."""

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 0.02):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta,
                                      lars_exclude=False))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad.add(p, alpha=group["weight_decay"]) if group["weight_decay"] else p.grad.clone()
                if not group["lars_exclude"]:
                    w_norm, d_norm = torch.norm(p), torch.norm(d)
                    trust = torch.where((w_norm > 0) & (d_norm > 0), group["eta"] * w_norm / d_norm, 1.0)
                    d.mul_(trust)
                buf = self.state[p].get("momentum_buffer")
                if buf is None:
                    buf = self.state[p]["momentum_buffer"] = d
                else:
                    buf.mul_(group["momentum"]).add_(d)
                p.add_(buf, alpha=-group["lr"])
        return loss


def param_groups(modules: list[nn.Module], cfg: OptimConfig, skip: set[int] = frozenset()) -> list[dict]:
    """Weights get weight decay; biases and norm-layer parameters (ndim < 2) get none, if configured.
    Parameters whose id is in `skip` belong to another optimizer."""
    decay, no_decay = [], []
    for m in modules:
        for p in m.parameters():
            if not p.requires_grad or id(p) in skip:
                continue
            (no_decay if cfg.exclude_bias_norm and p.ndim < 2 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "lars_exclude": True})
    return groups


def build_optimizer(modules: list[nn.Module], cfg: OptimConfig, skip: set[int] = frozenset()) -> torch.optim.Optimizer:
    groups = param_groups(modules, cfg, skip)
    if cfg.name == "sgd":
        for g in groups:
            g.pop("lars_exclude", None)
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    if cfg.name == "lars":
        return LARS(groups, lr=cfg.lr, momentum=cfg.momentum, eta=cfg.lars_eta)
    for g in groups:
        g.pop("lars_exclude", None)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    """LR multiplier: linear from 1/warmup to 1 over the warm-up, then cosine down to min_ratio."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def cosine_momentum(step: int, total_steps: int, base: float, final: float) -> float:
    """BYOL's EMA schedule: tau = final - (final - base) * (cos(pi k / K) + 1) / 2."""
    progress = min(1.0, step / max(1, total_steps))
    return final - (final - base) * (math.cos(math.pi * progress) + 1) / 2
