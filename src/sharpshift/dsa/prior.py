"""The frozen prior network of DSA, which supplies the outlier scores and the target relations M_pro.

The paper uses an ImageNet-pretrained ResNet-18, which cannot be had offline. Three choices (dsa.prior):
- checkpoint: the backbone of an earlier sharpshift run (sharpshift.load_backbone), e.g. a short SimCLR
  run; inputs are re-normalised with that run's own mean/std. The documented default.
- ema: the method's momentum encoder (`target_backbone` of BYOL, MoCo); it moves with training.
- random: a frozen randomly initialised copy of the backbone architecture (its own seed).
The prior always runs in eval mode (running BatchNorm statistics) under no_grad: a fixed function of
one image, which is what lets the features of the un-augmented originals be cached per dataset index.
(The official code ran its prior in train mode, with batch statistics.)
"""
from __future__ import annotations

import torch
from torch import nn

from sharpshift.errors import UserError
from sharpshift.models import build_backbone


def _freeze(net: nn.Module) -> nn.Module:
    """Eval mode, no gradients, and BatchNorm folded into the preceding convolutions where torch.fx can
    trace the net (same outputs to float rounding, one pass over the activations fewer per layer)."""
    for p in net.parameters():
        p.requires_grad_(False)
    net.eval()
    try:
        from torch.fx.experimental.optimization import fuse

        net = fuse(net)
    except Exception:  # an untraceable backbone runs unfused
        pass
    return net.to(memory_format=torch.channels_last)


class PriorNetwork(nn.Module):
    """prior(method, x_unit) -> features (N, D), for images x in [0, 1]."""

    def __init__(self, kind: str, backbone: nn.Module | None, mean: list[float], std: list[float]):
        super().__init__()
        self.kind = kind
        self.net = _freeze(backbone) if backbone is not None else None  # None: the method's target_backbone
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    @property
    def frozen(self) -> bool:
        return self.kind != "ema"

    def train(self, mode: bool = True):  # the frozen net stays in eval mode whatever the module does
        super().train(mode)
        if self.net is not None:
            self.net.eval()
        return self

    @torch.no_grad()
    def forward(self, method: nn.Module, x_unit: torch.Tensor) -> torch.Tensor:
        net = self.net if self.net is not None else method.target_backbone
        x = ((x_unit - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        was_training = net.training
        net.eval()
        try:
            return net(x).float()
        finally:
            net.train(was_training)


def build_prior(kind: str, method: nn.Module, path: str | None = None, seed: int = 0) -> PriorNetwork:
    views = method.views
    mean, std = views.mean.flatten().tolist(), views.std.flatten().tolist()
    channels = len(mean)
    if kind == "checkpoint":
        from sharpshift.export import load_backbone

        net = load_backbone(path)
        arch = net.arch
        if arch.get("in_channels") != channels:
            raise UserError(f"dsa.prior_path {path} holds a {arch.get('in_channels')}-channel backbone but the data "
                            f"has {channels} channels; pretrain the prior on the same kind of images")
        return PriorNetwork(kind, net, arch.get("mean", mean), arch.get("std", std))
    if kind == "ema":
        if not hasattr(method, "target_backbone"):
            raise UserError(f"method {method.name!r} has no momentum encoder for dsa.prior=ema; "
                            "use dsa.prior=checkpoint (with dsa.prior_path) or dsa.prior=random")
        return PriorNetwork(kind, None, mean, std)
    if kind == "random":
        m = method.cfg.model
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = build_backbone(m.backbone, channels, m.width, m.cifar_stem)
        return PriorNetwork(kind, net, mean, std)
    raise UserError(f"unknown dsa.prior {kind!r}; use checkpoint, ema or random")
