"""DenseFuse (Li & Wu, "DenseFuse: A Fusion Approach to Infrared and Visible Images", IEEE TIP 2019):
the classic pixel-space CNN fusion network, 74,193 parameters.

    encoder  C1 (3x3, 1->16) + DenseBlock of three 3x3 convs (16 each, dense concatenation) -> 64 ch
    fusion   addition of the two feature maps (the paper's "addition strategy"; L1-norm is the other)
    decoder  C2 64->64, C3 64->32, C4 32->16, C5 16->1, all 3x3

It fuses one channel: RGB pairs are fused on luma (Y of YCbCr) and the chroma of the two sources
is averaged, the usual way gray fusion networks are applied to colour images. ReLU after every conv
except the last, as in the paper. Weights are random: the benchmark measures cost only.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv(cin: int, cout: int, relu: bool = True) -> nn.Module:
    layers = [nn.Conv2d(cin, cout, 3, padding=1)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class DenseBlock(nn.Module):
    def __init__(self, channels: int = 16, growth: int = 16, layers: int = 3):
        super().__init__()
        self.convs = nn.ModuleList(_conv(channels + i * growth, growth) for i in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = torch.cat([x, conv(x)], dim=1)
        return x


class DenseFuse(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(_conv(1, 16), DenseBlock(16, 16, 3))
        self.decoder = nn.Sequential(_conv(64, 64), _conv(64, 32), _conv(32, 16), _conv(16, 1, relu=False))

    def forward(self, y_a: torch.Tensor, y_b: torch.Tensor) -> torch.Tensor:
        """Two one-channel images [B, 1, H, W] -> fused [B, 1, H, W] (addition fusion strategy)."""
        return self.decoder(self.encoder(y_a) + self.encoder(y_b))

    def fuse_rgb(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """RGB [B, 3, H, W] pair -> fused RGB: the network on BT.601 luma, chroma averaged."""
        ya, cba, cra = _ycbcr(a)
        yb, cbb, crb = _ycbcr(b)
        y = self.forward(ya, yb)
        return _rgb(y, 0.5 * (cba + cbb), 0.5 * (cra + crb))


def _ycbcr(x: torch.Tensor):
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    return y, 0.564 * (b - y), 0.713 * (r - y)


def _rgb(y: torch.Tensor, cb: torch.Tensor, cr: torch.Tensor) -> torch.Tensor:
    r = y + 1.403 * cr
    b = y + 1.773 * cb
    g = (y - 0.299 * r - 0.114 * b) / 0.587
    return torch.cat([r, g, b], dim=1)
