"""The small ConvNet for CPU work: four conv-BN-ReLU blocks, max-pool between them, global average pool."""
from __future__ import annotations

from torch import nn


class ConvNet(nn.Module):
    def __init__(self, in_channels: int = 1, width: int = 32, blocks: int = 4):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for i in range(blocks):
            c_out = width * 2**i
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            if i < blocks - 1:
                layers.append(nn.MaxPool2d(2))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feat_dim = c_in
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return self.pool(self.features(x)).flatten(1)
