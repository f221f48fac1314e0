"""The types a training step passes around, and the helpers methods and add-ons share.

A leaf: it imports nothing of sharpshift, so methods, add-ons and the loop can all import it.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn


@dataclass
class StepContext:
    """What a step sees: the raw batch, its views, and where training stands."""

    images: torch.Tensor  # uint8 originals (N, C, H, W)
    labels: torch.Tensor  # int64, -1 where unknown
    indices: torch.Tensor  # dataset indices of the batch (SAF's buffer needs them)
    views: list[torch.Tensor]
    step: int
    epoch: int


@dataclass
class StepOutput:
    """One forward pass: the loss to backpropagate, its named parts, and the tensors add-ons reuse."""

    loss: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    feats: list[torch.Tensor] = field(default_factory=list)  # backbone features per view
    proj: list[torch.Tensor] = field(default_factory=list)  # projector outputs per view
    extra: dict = field(default_factory=dict)  # method-specific, e.g. MoCo's keys to enqueue

    def add(self, terms: dict[str, torch.Tensor]) -> None:
        """Add already-weighted terms to the loss."""
        for name, value in terms.items():
            self.terms[name] = value
            self.loss = self.loss + value


# (method, optimizer, closure) -> the closure's output; owns zero_grad, backward, clipping and the step
Stepper = Callable[[Any, torch.optim.Optimizer, Callable[[], StepOutput]], StepOutput]


def plain_step(module, opt, closure: Callable[[], StepOutput]) -> StepOutput:
    opt.zero_grad(set_to_none=True)
    out = closure()
    module.manual_backward(out.loss)
    clip_gradients(module, opt)
    opt.step()
    return out


def clip_gradients(module, opt) -> None:
    """optim.grad_clip on `opt`'s gradients (none where it is 0), keeping each step's norm before clipping: whether
    a clip binds always, sometimes or never decides what it does (train.json's `grad_clip`)."""
    if module.cfg.optim.grad_clip > 0:  # the norm the clip compares with its bound (kept as a tensor: no sync)
        module.grad_norms.append(torch.nn.utils.get_total_norm(
            [p.grad for group in opt.param_groups for p in group["params"] if p.grad is not None]).detach())
        module.clip_gradients(opt, gradient_clip_val=module.cfg.optim.grad_clip, gradient_clip_algorithm="norm")


def clip_summary(norms: list, max_norm: float) -> dict:
    """For train.json: how often the clip bound, and the gradient norms it saw (before clipping)."""
    norms = [float(n) for n in norms]
    q = torch.tensor(norms, dtype=torch.float64).quantile(torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64))
    return {"max_norm": max_norm, "steps": len(norms), "share_clipped": sum(n > max_norm for n in norms) / len(norms),
            "grad_norm_q05": q[0].item(), "grad_norm_q50": q[1].item(), "grad_norm_q95": q[2].item()}


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, decay: float) -> None:
    """target <- decay * target + (1 - decay) * online, for parameters; buffers are copied."""
    t_params = [p for p in target.parameters()]
    o_params = [p.detach() for p in online.parameters()]
    torch._foreach_lerp_(t_params, o_params, 1.0 - decay)
    for tb, ob in zip(target.buffers(), online.buffers()):
        tb.copy_(ob)


def frozen_copy(module: nn.Module) -> nn.Module:
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target
