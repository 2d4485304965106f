"""NAFNet block (Chen et al., "Simple Baselines for Image Restoration", ECCV 2022), placed before each
attention block to add a convolutional inductive bias (paper 3.3.2 "Biased-inductive convolutions
before attention": it fixes the weak blur restoration of attention-only blocks).

Operates on the token grid reshaped to [B, d, h/p, w/p]. As in NAFNet: LayerNorm2d -> 1x1 conv
(expand) -> 3x3 depthwise conv -> SimpleGate -> simplified channel attention -> 1x1 conv, residual
scaled by β; then LayerNorm2d -> 1x1 conv (expand) -> SimpleGate -> 1x1 conv, residual scaled by γ.
β and γ start at zero, so the block starts as the identity.
"""

from __future__ import annotations

import torch
from torch import nn


class LayerNorm2d(nn.Module):
    """LayerNorm over channels of an NCHW tensor (NAFNet's LayerNorm2d)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = x.mean(1, keepdim=True)
        var = (x - mu).pow(2).mean(1, keepdim=True)
        x = (x - mu) / torch.sqrt(var + self.eps)
        return x * self.weight[:, None, None] + self.bias[:, None, None]


class SimpleGate(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return a * b


class NAFBlock(nn.Module):
    """``channel_attention=False`` drops the simplified channel attention (a global average pool), so the
    block mixes only a 3x3 neighbourhood: what a network run in strips needs (``model.fidelity``)."""

    def __init__(self, channels: int, expand: int = 2, channel_attention: bool = True):
        super().__init__()
        inner = channels * expand
        self.norm1 = LayerNorm2d(channels)
        self.conv1 = nn.Conv2d(channels, inner, 1)
        self.conv2 = nn.Conv2d(inner, inner, 3, padding=1, groups=inner)
        self.gate = SimpleGate()
        self.sca = (nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(inner // 2, inner // 2, 1))
                    if channel_attention else None)
        self.conv3 = nn.Conv2d(inner // 2, channels, 1)
        self.norm2 = LayerNorm2d(channels)
        self.conv4 = nn.Conv2d(channels, inner, 1)
        self.conv5 = nn.Conv2d(inner // 2, channels, 1)
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.gate(self.conv2(self.conv1(self.norm1(x))))
        y = self.conv3(y if self.sca is None else y * self.sca(y))
        x = x + y * self.beta
        y = self.conv5(self.gate(self.conv4(self.norm2(x))))
        return x + y * self.gamma

    def forward_tokens(self, tokens: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
        """Apply to row-major tokens [B, gh·gw, d]."""
        b, n, d = tokens.shape
        grid = tokens.transpose(1, 2).reshape(b, d, grid_h, grid_w)
        return self.forward(grid).reshape(b, d, n).transpose(1, 2)
