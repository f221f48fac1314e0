"""Backbones and heads. build_backbone(model_cfg, in_channels) -> module with .feat_dim."""
from __future__ import annotations

from torch import nn

from sharpshift.models.convnet import ConvNet


def build_backbone(name: str, in_channels: int, width: int = 32, cifar_stem: bool = True) -> nn.Module:
    if name == "convnet":
        return ConvNet(in_channels, width)
    if name.startswith("resnet"):
        from sharpshift.models.resnet import ResNet

        return ResNet(int(name[len("resnet"):]), in_channels=in_channels, cifar_stem=cifar_stem)
    raise ValueError(f"unknown backbone {name!r}")


def backbone_arch(name: str, in_channels: int, width: int, cifar_stem: bool) -> dict:
    """The small JSON that, with the weights, rebuilds a backbone (see sharpshift.load_backbone)."""
    return {"backbone": name, "in_channels": in_channels, "width": width, "cifar_stem": cifar_stem}
